"""The configurations the suite compares, all served on 127.0.0.1 by one server process.

* ``plain``: gRPC over an insecure channel -- the floor.
* ``grpc_tls``: gRPC's own mutual TLS (``ssl_channel_credentials`` / ``ssl_server_credentials``)
  with certificates from the same rpcsec authority (ECDSA P-256 leaves, see ``_pki``).
* ``x509_integrity`` / ``x509_privacy`` / ``ntlm_integrity`` (and ``kerberos_integrity`` /
  ``kerberos_privacy`` when a real KDC can be started): rpcsec ``secure_channel`` over an
  insecure gRPC channel to ``secure_server()`` serving the same handlers.

What users pick instead (mTLS + a per-call JWT, Envoy sidecars) and three replicas behind
Envoy are in ``_alternatives``: the same ``Config``, measured in the same rounds, reported apart.

The clients run in the suite's process; the servers in a child process of their own
(``_server``), so the two ends do not share a GIL. Two servers there, same handler functions,
same thread pool size: one carries the plain port and the TLS port, the other is rpcsec's
``secure_server()`` (one credentials handle per package, as a real multi-package server would
have). The decomposition's rows (``_decomposition``) are measured in the same rounds too.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from rpcsec.grpc import secure_channel
from rpcsec.sspi import ContextReq, Credentials, CredentialUse, ProtectionLevel

from ._pki import BenchPki, make_pki
from ._server import ServerProcess

__all__ = ["BASELINES", "Config", "Lab", "server_spec", "start_lab"]

BASELINES = ("plain", "grpc_tls")
FRESH = [("grpc.use_local_subchannel_pool", 1)]
"""gRPC shares connections between channels with the same target; a channel made to measure a
*new* connection (and its handshake) must not find the one already open."""
MAX_WORKERS = 16
NTLM_USER = "RPCSEC\\alice"
NTLM_PASSWORD = "Alice-Pa55!"
NTLM_REQUIREMENTS = ContextReq.REPLAY_DETECT | ContextReq.INTEGRITY | ContextReq.CONNECTION
"""NTLM cannot prove the server (no MUTUAL_AUTH), so its channels do not require it."""


@dataclass
class PackageIdentity:
    """How a client and the server of one rpcsec package get credentials (also handed to the
    memory probe's subprocess on its stdin, so only strings). The options may hold a password:
    they stay out of the repr."""

    package: str
    client_principal: str | None
    client_options: dict[str, str] = field(repr=False)
    server_principal: str | None
    server_options: dict[str, str] = field(repr=False)
    target: str | None
    requirements: int

    def client(self) -> Credentials:
        from rpcsec.sspi import acquire_credentials_handle

        return acquire_credentials_handle(
            self.package, self.client_principal, CredentialUse.OUTBOUND, **self.client_options
        )

    def server(self) -> Credentials:
        from rpcsec.sspi import acquire_credentials_handle

        return acquire_credentials_handle(
            self.package, self.server_principal, CredentialUse.INBOUND, **self.server_options
        )

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> PackageIdentity:
        return cls(**json.loads(text))


@dataclass
class Config:
    """One way to call the echo service: how to make a channel, and the CPU seconds its
    server's thread pool has spent so far (``server_cpu``, read from the server process)."""

    name: str
    label: str
    fresh_channel: Callable[[], grpc.Channel]
    server_cpu: Callable[[], float]
    identity: PackageIdentity | None = None
    protection: ProtectionLevel | None = None
    alternative: bool = False
    """Measured in the same rounds, reported apart (``_alternatives``): not held to targets."""
    same_topology: str | None = None
    """The plain configuration through the same proxy and replicas, for a second ratio."""
    decomposition: bool = False
    """A row of ``_decomposition``: measured in the same rounds, reported in its own section."""
    remote: Any = None
    """A ``_remote_client.RemoteClient`` when the client runs in a process of its own."""
    workloads: frozenset[str] | None = None
    """The workload keys this configuration runs (None: all)."""
    _channel: grpc.Channel | None = None

    @property
    def rpcsec(self) -> bool:
        return self.identity is not None

    @property
    def channel(self) -> grpc.Channel:
        """The long-lived channel the call workloads share (connected and bound once)."""
        if self._channel is None:
            self._channel = self.fresh_channel()
        return self._channel

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


@dataclass
class Lab:
    """Everything the suite started: the server process, configurations, the KDC when there
    is one."""

    configs: list[Config]
    servers: ServerProcess
    notes: list[str]
    identities: dict[str, PackageIdentity]
    kerberos: Any = None
    alternatives: Any = None
    decomposition: Any = None
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    """Set-up failures of optional parts (the decomposition), reported with the results."""

    def stop(self) -> None:
        for config in self.configs:
            config.close()
        try:
            for part in (self.decomposition, self.alternatives):
                if part is not None:
                    part.stop()
        finally:
            try:
                self.servers.stop()
            finally:
                if self.kerberos is not None:
                    self.kerberos.stop()


def _ntlm_identity(directory: pathlib.Path) -> PackageIdentity:
    users = directory / "ntlm-users"
    users.write_text(f"RPCSEC:alice:{NTLM_PASSWORD}\n")
    return PackageIdentity(
        package="ntlm",
        client_principal=NTLM_USER,
        client_options={"password": NTLM_PASSWORD},
        server_principal=None,
        server_options={"user_file": str(users)},
        target="host@echo",
        requirements=int(NTLM_REQUIREMENTS),
    )


def _x509_identity(pki: BenchPki) -> PackageIdentity:
    directory = str(pki.authority.directory)
    return PackageIdentity(
        package="x509",
        client_principal=None,
        client_options={"authority_dir": directory, "name": "alice"},
        server_principal=None,
        server_options={"authority_dir": directory, "name": "echo"},
        target=pki.target,
        requirements=int(ContextReq.default()),
    )


def _kerberos(directory: pathlib.Path, notes: list[str]) -> tuple[Any, PackageIdentity | None]:
    """Start the tests' real-KDC lab if this machine can run one."""
    tests = pathlib.Path(__file__).resolve().parent.parent / "tests"
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    try:
        import kdc
    except ImportError as exc:  # pragma: no cover - tests/ not shipped
        notes.append(f"kerberos: not measured (tests/kdc.py not importable: {exc})")
        return None, None
    reason = kdc.kerberos_unavailable_reason()
    if reason is not None:
        notes.append(f"kerberos: not measured ({reason}; {kdc.INSTALL_HINT})")
        return None, None
    (directory / "krb5").mkdir()
    lab = kdc.start_lab(directory / "krb5")
    realm = lab.main
    client_ccache = realm.ccache("alice")
    notes.append("kerberos: measured against a real MIT KDC on loopback (tests/kdc.py lab)")
    return lab, PackageIdentity(
        package="kerberos",
        client_principal=realm.principal("alice"),
        client_options={"ccache": client_ccache},
        server_principal=realm.service_principal("storage"),
        server_options={"keytab": realm.keytab("storage"), "rcache": realm.rcache("storage")},
        target=realm.hostbased("storage"),
        requirements=int(ContextReq.default()),
    )


def _rpcsec_config(
    name: str,
    label: str,
    address: str,
    identity: PackageIdentity,
    protection: ProtectionLevel,
    server_cpu: Callable[[], float],
) -> Config:
    credentials = identity.client()

    def fresh() -> grpc.Channel:
        return secure_channel(
            address,
            credentials,
            target_name=identity.target,
            requirements=ContextReq(identity.requirements),
            protection=protection,
            options=FRESH,
        )

    return Config(
        name=name,
        label=label,
        fresh_channel=fresh,
        server_cpu=server_cpu,
        identity=identity,
        protection=protection,
    )


def start_lab(
    directory: pathlib.Path,
    *,
    kerberos: bool = True,
    alternatives: bool = True,
    decomposition: bool = True,
) -> Lab:
    """Make the identities, start the KDC (when there is one) and the server process, and
    describe each configuration; with ``alternatives``, also what users pick instead
    (``_alternatives``: mTLS + JWT, Envoy sidecars, replicas behind Envoy); with
    ``decomposition``, the rows of ``_decomposition`` (plain gRPC to rpcsec step by step)."""
    notes: list[str] = [
        "grpc_tls: ECDSA P-256 leaves with a DNS SAN 'localhost', issued under the rpcsec "
        "authority's Ed25519 root by the benchmark (grpcio's BoringSSL refuses Ed25519 leaf "
        "keys: NO_COMMON_SIGNATURE_ALGORITHMS)",
        "servers: all in one child process (python -m benchmarks._server), the clients in the "
        "suite's process, so the two ends do not share a GIL",
    ]
    pki = make_pki(directory)
    identities = {"x509": _x509_identity(pki), "ntlm": _ntlm_identity(directory)}
    krb_lab = None
    if kerberos:
        krb_lab, krb_identity = _kerberos(directory, notes)
        if krb_identity is not None:
            identities["kerberos"] = krb_identity
    else:
        notes.append("kerberos: not measured (--no-kerberos)")
    try:
        servers = _start_servers(pki, identities, krb_lab, ladder=decomposition)
    except BaseException:
        if krb_lab is not None:
            krb_lab.stop()
        raise
    lab = Lab(configs=[], servers=servers, notes=notes, identities=identities, kerberos=krb_lab)
    try:
        lab.configs = _configs(pki, identities, servers)
        if decomposition:
            from ._decomposition import start_decomposition

            try:
                lab.decomposition = start_decomposition(pki, servers, identities)
            except Exception as exc:  # reported as an error of the run, never a wrong number
                text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                lab.errors["decomposition"] = {"setup": text}
            else:
                lab.configs += lab.decomposition.configs
                notes += lab.decomposition.notes
        if alternatives:
            from ._alternatives import start_alternatives

            lab.alternatives = start_alternatives(directory, pki, servers, identities)
            lab.configs += lab.alternatives.configs
            notes += lab.alternatives.notes
    except BaseException:
        lab.stop()
        raise
    return lab


def server_spec(pki: BenchPki, identities: Iterable[PackageIdentity]) -> dict[str, Any]:
    """What ``_server`` needs: its TLS pair and roots (PEM text) and the package identities."""
    return {
        "max_workers": MAX_WORKERS,
        "tls_key": pki.tls_server.key.decode(),
        "tls_certificate": pki.tls_server.certificate.decode(),
        "tls_root": pki.root_pem.decode(),
        "identities": [identity.__dict__ for identity in identities],
    }


def _start_servers(
    pki: BenchPki, identities: dict[str, PackageIdentity], krb_lab: Any, *, ladder: bool
) -> ServerProcess:
    """The server process, with the same interpreter and allocator environment as this one;
    libkrb5 there finds the lab's KDC through ``KRB5_CONFIG``. ``ladder``: also the
    decomposition's capture and re-wrapped servers (``_server``)."""
    spec = server_spec(pki, identities.values())
    spec["ladder"] = ladder
    env = dict(os.environ)
    if krb_lab is not None:
        env["KRB5_CONFIG"] = str(krb_lab.krb5_conf)
    return ServerProcess(spec, env)


def _configs(
    pki: BenchPki, identities: dict[str, PackageIdentity], servers: ServerProcess
) -> list[Config]:
    ports = servers.ports
    plain_port, tls_port = ports["plain"], ports["tls"]

    def plain_cpu() -> float:
        return servers.cpu_seconds()["plain"]

    def rpcsec_cpu() -> float:
        return servers.cpu_seconds()["rpcsec"]

    tls_client = grpc.ssl_channel_credentials(
        pki.root_pem, pki.tls_client.key, pki.tls_client.certificate
    )
    tls_options = [*FRESH, ("grpc.ssl_target_name_override", "localhost")]

    configs = [
        Config(
            "plain",
            "gRPC plain",
            lambda: grpc.insecure_channel(f"127.0.0.1:{plain_port}", options=FRESH),
            plain_cpu,
        ),
        Config(
            "grpc_tls",
            "gRPC mTLS",
            lambda: grpc.secure_channel(f"127.0.0.1:{tls_port}", tls_client, options=tls_options),
            plain_cpu,
        ),
    ]
    address = f"127.0.0.1:{ports['rpcsec']}"
    integrity, privacy = ProtectionLevel.INTEGRITY, ProtectionLevel.PRIVACY
    wanted = [
        ("x509_integrity", "rpcsec x509 INTEGRITY", "x509", integrity),
        ("x509_privacy", "rpcsec x509 PRIVACY", "x509", privacy),
        ("ntlm_integrity", "rpcsec ntlm INTEGRITY", "ntlm", integrity),
        ("kerberos_integrity", "rpcsec kerberos INTEGRITY", "kerberos", integrity),
        ("kerberos_privacy", "rpcsec kerberos PRIVACY", "kerberos", privacy),
    ]
    for name, label, package, level in wanted:
        identity = identities.get(package)
        if identity is not None:
            configs.append(_rpcsec_config(name, label, address, identity, level, rpcsec_cpu))
    return configs
