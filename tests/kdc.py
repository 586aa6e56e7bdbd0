"""A self-contained MIT Kerberos lab for the tests: real KDCs on loopback, nothing mocked.

``start_lab(directory)`` does by hand what ``k5test.K5Realm`` does (kdb5_util, kadmin.local,
krb5kdc, kinit), but with a free loopback port instead of a fixed one, several realms, and
one KDC whose clock runs two hours behind (``krb5kdc -T``) so that expired tickets and clock
skew are real failures of real tickets, without sleeping:

* ``KRBTEST.COM`` (``lab.main``): users alice and bob (passwords), services ``documents``,
  ``storage`` and ``archive`` on host ``localhost`` with keytabs. ``ccache("alice")`` is a
  forwardable TGT (kinit -f).
* ``OTHER.TEST`` (``lab.other``, served by the same KDC process): user carol and its own
  ``storage/localhost`` -- tickets from here must be refused by KRBTEST.COM's services.
* ``PAST.TEST`` (``lab.past``, a KDC two hours behind): users dave, whose tickets live at most
  an hour (so every ticket he gets has already expired by the real clock), and erin (normal
  tickets, which a client synchronised to the KDC presents with a two-hour clock skew), and
  ``storage/localhost``.

libkrb5 reads its configuration from ``KRB5_CONFIG`` only, so the lab points that variable at
its krb5.conf for the whole process (and restores it in ``stop()``). Everything else --
keytabs, credential caches, replay caches -- is passed per credential through the GSS
credential store, so tests may use several realms and services side by side.

Other engineers' tests use the session fixtures in ``tests/conftest.py``::

    def test_something(kerberos_realm):
        client = kerberos_realm.client_credentials("alice")       # OUTBOUND, forwardable TGT
        server = kerberos_realm.server_credentials("storage")     # INBOUND, keytab + rcache
        target = kerberos_realm.hostbased("storage")              # "storage@localhost"

Without the Debian packages (krb5-kdc krb5-admin-server krb5-user libkrb5-dev) or python-gssapi
the fixtures skip; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "INSTALL_HINT",
    "KerberosLab",
    "KerberosRealm",
    "kerberos_unavailable_reason",
    "require_kerberos",
    "start_lab",
]

INSTALL_HINT = (
    "apt-get install krb5-kdc krb5-admin-server krb5-user libkrb5-dev "
    "and pip install gssapi (the 'kerberos' extra)"
)
HOST = "localhost"
PAST_OFFSET = -7200  # seconds the PAST.TEST KDC's clock is behind
_TOOLS = {
    "krb5kdc": "/usr/sbin/krb5kdc",
    "kdb5_util": "/usr/sbin/kdb5_util",
    "kadmin.local": "/usr/sbin/kadmin.local",
    "kinit": "/usr/bin/kinit",
}
_PLUGIN_DIRS = (
    "/usr/lib/x86_64-linux-gnu/krb5/plugins",
    "/usr/lib/krb5/plugins",
    "/usr/lib64/krb5/plugins",
)


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    default = _TOOLS[name]
    return default if os.access(default, os.X_OK) else None


def kerberos_unavailable_reason() -> str | None:
    """Why a real KDC cannot run here, or None when it can."""
    missing = [name for name in _TOOLS if _tool(name) is None]
    if missing:
        return f"MIT Kerberos tools missing ({', '.join(missing)})"
    try:
        import gssapi  # noqa: F401
    except ImportError as exc:
        return f"python-gssapi is not importable ({exc})"
    return None


def require_kerberos() -> None:
    """Skip the calling test (fail it when CI=true) unless a real KDC can run here."""
    import pytest

    reason = kerberos_unavailable_reason()
    if reason is None:
        return
    message = f"{reason}: {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Kerberos tests must run in CI: {message}")
    pytest.skip(message)


def _free_port() -> int:
    """A loopback port free for both TCP and UDP right now (the KDC listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free loopback port for the KDC")


@dataclass(frozen=True)
class _RealmSpec:
    name: str
    users: tuple[str, ...]
    services: tuple[str, ...]
    kdc: str  # which KDC process serves it: "main" or "past"
    short_lived: tuple[str, ...] = ()  # users whose tickets live at most an hour


_SPECS = (
    _RealmSpec("KRBTEST.COM", ("alice", "bob"), ("documents", "storage", "archive"), "main"),
    _RealmSpec("OTHER.TEST", ("carol",), ("storage",), "main"),
    _RealmSpec("PAST.TEST", ("dave", "erin"), ("storage",), "past", short_lived=("dave",)),
)


class KerberosRealm:
    """One realm of the lab: principal names, passwords, keytabs, credential caches.

    A plain class, not a dataclass, so that no printer (pytest's, hypothesis') shows the
    passwords it holds."""

    def __init__(self, name: str, lab: KerberosLab) -> None:
        self.name = name
        self.lab = lab
        self._passwords: dict[str, str] = {}
        self._ccaches: dict[tuple[Any, ...], str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<KerberosRealm {self.name}>"

    # names --------------------------------------------------------------------------------

    def principal(self, user: str) -> str:
        """``alice`` -> ``alice@KRBTEST.COM``."""
        return f"{user}@{self.name}"

    def service_principal(self, service: str) -> str:
        """``storage`` -> ``storage/localhost@KRBTEST.COM``."""
        return f"{service}/{HOST}@{self.name}"

    def hostbased(self, service: str) -> str:
        """``storage`` -> ``storage@localhost`` (GSS hostbased form, default realm only)."""
        return f"{service}@{HOST}"

    def password(self, user: str) -> str:
        return self._passwords[user]

    # files --------------------------------------------------------------------------------

    def keytab(self, service: str) -> str:
        return str(self.lab.directory / f"{self.name}-{service}.keytab")

    def rcache(self, service: str) -> str:
        """A replay cache of this service's own (``file2:`` type, MIT krb5 1.18+)."""
        return f"file2:{self.lab.directory / f'{self.name}-{service}.rcache2'}"

    def ccache(
        self,
        user: str,
        *,
        forwardable: bool = True,
        lifetime: str | None = None,
        sync_clock: bool = True,
    ) -> str:
        """A FILE credential cache holding a fresh TGT for ``user`` (kinit, made once).

        ``forwardable`` is ``kinit -f`` (else ``-F``); ``lifetime`` is ``kinit -l``;
        ``sync_clock=False`` keeps kinit from recording the KDC's clock offset in the cache
        (``kdc_timesync = 0``), which matters only for PAST.TEST.
        """
        key = (user, forwardable, lifetime, sync_clock)
        with self._lock:
            existing = self._ccaches.get(key)
            if existing is not None:
                return existing
            suffix = "-".join(
                [user, "fwd" if forwardable else "nofwd", lifetime or "default"]
                + ([] if sync_clock else ["nosync"])
            )
            path = self.lab.directory / f"{self.name}-{suffix}.ccache"
            args = [_tool("kinit") or "kinit", "-f" if forwardable else "-F", "-c", str(path)]
            if lifetime:
                args += ["-l", lifetime]
            args.append(self.principal(user))
            env = dict(self.lab.env)
            if not sync_clock:
                env["KRB5_CONFIG"] = f"{self.lab.nosync_conf}:{self.lab.krb5_conf}"
            self.lab.run(args, input_text=self.password(user) + "\n", env=env)
            self._ccaches[key] = f"FILE:{path}"
            return self._ccaches[key]

    # administration -------------------------------------------------------------------------

    def add_user(self, user: str, password: str | None = None) -> str:
        """Create another user principal; returns its name."""
        password = password or secrets.token_urlsafe(12)
        self._passwords[user] = password
        self.lab.kadmin(self.name, [f"addprinc -pw {password} {user}"])
        return self.principal(user)

    def add_service(self, service: str) -> str:
        """Create ``service/localhost`` with a keytab; returns the keytab path."""
        principal = self.service_principal(service)
        keytab = self.keytab(service)
        self.lab.kadmin(
            self.name, [f"addprinc -randkey {principal}", f"ktadd -k {keytab} {principal}"]
        )
        return keytab

    def rekey_service(self, service: str, keytab: str) -> None:
        """Give ``service`` a new random key written only to ``keytab`` (makes older keytabs
        stale: the "wrong keytab" case)."""
        self.lab.kadmin(self.name, [f"ktadd -k {keytab} {self.service_principal(service)}"])

    # rpcsec credentials ---------------------------------------------------------------------

    def client_credentials(
        self, user: str, *, package: str = "kerberos", **ccache_options: Any
    ) -> Any:
        """OUTBOUND rpcsec credentials for ``user`` from a fresh ccache (forwardable default)."""
        from rpcsec.sspi import CredentialUse, acquire_credentials_handle

        return acquire_credentials_handle(
            package,
            self.principal(user),
            CredentialUse.OUTBOUND,
            ccache=self.ccache(user, **ccache_options),
        )

    def server_credentials(self, service: str, *, package: str = "kerberos", **options: Any) -> Any:
        """INBOUND rpcsec credentials for ``service`` (its keytab and its own replay cache)."""
        from rpcsec.sspi import CredentialUse, acquire_credentials_handle

        return acquire_credentials_handle(
            package,
            self.service_principal(service),
            CredentialUse.INBOUND,
            keytab=self.keytab(service),
            rcache=self.rcache(service),
            **options,
        )


class KerberosLab:
    """The temp directory, krb5.conf/kdc.conf, the realms and the KDC processes."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.krb5_conf = self.directory / "krb5.conf"
        self.kdc_conf = self.directory / "kdc.conf"
        self.nosync_conf = self.directory / "krb5-nosync.conf"
        self.ports = {"main": _free_port(), "past": _free_port()}
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "KRB5_CONFIG": str(self.krb5_conf),
            "KRB5_KDC_PROFILE": str(self.kdc_conf),
            "KRB5CCNAME": f"FILE:{self.directory / 'default.ccache'}",
            "KRB5_KTNAME": str(self.directory / "default.keytab"),
            "KRB5RCACHEDIR": str(self.directory),
        }
        self.realms = {spec.name: KerberosRealm(spec.name, self) for spec in _SPECS}
        self._processes: list[subprocess.Popen[bytes]] = []
        self._saved_config: str | None = None
        self._configured = False

    @property
    def main(self) -> KerberosRealm:
        return self.realms["KRBTEST.COM"]

    @property
    def other(self) -> KerberosRealm:
        return self.realms["OTHER.TEST"]

    @property
    def past(self) -> KerberosRealm:
        return self.realms["PAST.TEST"]

    # commands -----------------------------------------------------------------------------

    def run(
        self, args: list[str], *, input_text: str | None = None, env: dict[str, str] | None = None
    ) -> str:
        proc = subprocess.run(
            args,
            input=(input_text or "").encode(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env or self.env,
            timeout=60,
            check=False,
        )
        output = proc.stdout.decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {output.strip()}")
        return output

    def kadmin(self, realm: str, queries: list[str]) -> None:
        """Run kadmin.local queries for ``realm`` in one process (they are read from stdin)."""
        tool = _tool("kadmin.local") or "kadmin.local"
        self.run([tool, "-r", realm], input_text="\n".join(queries) + "\nquit\n")

    # setup --------------------------------------------------------------------------------

    def _write_configs(self) -> None:
        lines = [
            "[libdefaults]",
            "\tdefault_realm = KRBTEST.COM",
            "\tdns_lookup_kdc = false",
            "\tdns_lookup_realm = false",
            "\trdns = false",
            "\tdns_canonicalize_hostname = false",
            '\tqualify_shortname = ""',
            "\tudp_preference_limit = 1",
            "\tforwardable = false",
            "\tkdc_timesync = 1",
            "[realms]",
        ]
        for spec in _SPECS:
            lines += [f"\t{spec.name} = {{", f"\t\tkdc = 127.0.0.1:{self.ports[spec.kdc]}", "\t}"]
        lines += ["[domain_realm]", f"\t{HOST} = KRBTEST.COM"]
        self.krb5_conf.write_text("\n".join(lines) + "\n")
        self.nosync_conf.write_text("[libdefaults]\n\tkdc_timesync = 0\n\tclockskew = 100000\n")
        kdc = ["[realms]"]
        for spec in _SPECS:
            port = self.ports[spec.kdc]
            kdc += [
                f"\t{spec.name} = {{",
                f"\t\tdatabase_name = {self.directory / ('db-' + spec.name)}",
                f"\t\tkey_stash_file = {self.directory / ('stash-' + spec.name)}",
                f"\t\tkdc_listen = 127.0.0.1:{port}",
                f"\t\tkdc_tcp_listen = 127.0.0.1:{port}",
                "\t\tmax_life = 10h",
                "\t\tmax_renewable_life = 1d",
                "\t}",
            ]
        plugin_dir = next((d for d in _PLUGIN_DIRS if os.path.isdir(d)), None)
        if plugin_dir:
            kdc += ["[dbmodules]", f"\tdb_module_dir = {plugin_dir}/kdb"]
        kdc += [
            "[logging]",
            f"\tkdc = FILE:{self.directory / 'kdc.log'}",
            f"\tdefault = FILE:{self.directory / 'krb5-other.log'}",
        ]
        self.kdc_conf.write_text("\n".join(kdc) + "\n")

    def _create_realms(self) -> None:
        util = _tool("kdb5_util") or "kdb5_util"
        for spec in _SPECS:
            self.run([util, "-r", spec.name, "create", "-s", "-W", "-P", secrets.token_hex(16)])
            realm = self.realms[spec.name]
            queries = []
            for user in spec.users:
                realm._passwords[user] = secrets.token_urlsafe(12)
                limit = '-maxlife "1 hour" ' if user in spec.short_lived else ""
                queries.append(f"addprinc {limit}-pw {realm._passwords[user]} {user}")
            for service in spec.services:
                principal = realm.service_principal(service)
                queries += [
                    f"addprinc -randkey {principal}",
                    f"ktadd -k {realm.keytab(service)} {principal}",
                ]
            self.kadmin(spec.name, queries)

    def _start_kdc(self, realms: list[str], offset: int = 0) -> None:
        args = [_tool("krb5kdc") or "krb5kdc", "-n"]
        for name in realms:
            args += ["-r", name]
        if offset:
            args += ["-T", str(offset)]
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        self._processes.append(proc)
        assert proc.stdout is not None
        output = []
        while True:  # krb5kdc prints "starting..." once its sockets are bound (as k5test waits)
            line = proc.stdout.readline().decode(errors="replace")
            if not line:
                proc.wait(timeout=10)
                raise RuntimeError(
                    f"krb5kdc failed to start ({proc.returncode}): {''.join(output)}"
                )
            output.append(line)
            if "starting..." in line:
                break
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining

    def start(self) -> KerberosLab:
        self._write_configs()
        self._create_realms()
        self._start_kdc(["KRBTEST.COM", "OTHER.TEST"])
        self._start_kdc(["PAST.TEST"], offset=PAST_OFFSET)
        self._saved_config = os.environ.get("KRB5_CONFIG")
        os.environ["KRB5_CONFIG"] = str(self.krb5_conf)
        self._configured = True
        return self

    def stop(self) -> None:
        for proc in self._processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._processes.clear()
        if self._configured:
            if self._saved_config is None:
                os.environ.pop("KRB5_CONFIG", None)
            else:
                os.environ["KRB5_CONFIG"] = self._saved_config
            self._configured = False

    def __repr__(self) -> str:
        return f"<KerberosLab {self.directory} ports={self.ports}>"


def start_lab(directory: Path) -> KerberosLab:
    """Create and start the lab in ``directory`` (about 0.2 s); call ``stop()`` when done.

    Ports are picked free just before the KDCs bind them; if another process wins that race,
    the lab is rebuilt once or twice with new ports."""
    directory = Path(directory)
    for attempt in range(3):
        lab = KerberosLab(directory if attempt == 0 else directory / f"retry-{attempt}")
        lab.directory.mkdir(parents=True, exist_ok=True)
        try:
            return lab.start()
        except RuntimeError:
            lab.stop()
            if attempt == 2:
                raise
        except BaseException:
            lab.stop()
            raise
    raise AssertionError("unreachable")  # pragma: no cover
