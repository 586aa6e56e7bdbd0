"""Apache httpd 2.4 + mod_auth_gssapi (Debian apache2, libapache2-mod-auth-gssapi) on loopback.

Started by the tests as a non-daemon process (``apache2 -X``) with its own configuration in a
temporary directory and a keytab of the test realm; nothing in /etc is read or changed. As
root, httpd drops to ``www-data`` (it refuses to serve as root), so the keytab, krb5.conf and
the replay cache live in a directory of its own that user can read. Readiness: the port
accepts connections. ``/`` needs Negotiate; the authenticated user comes back in
``X-Remote-User`` (mod_headers, ``expr=%{REMOTE_USER}``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helpers.negotiate_peers import http_keytab, require_tool

MODULES = Path("/usr/lib/apache2/modules")
_CONFIG = """\
ServerRoot "{root}"
ServerName localhost
Listen 127.0.0.1:{port}
PidFile {root}/httpd.pid
ErrorLog {root}/error.log
LogLevel info auth_gssapi:debug
{user}
LoadModule mpm_prefork_module {modules}/mod_mpm_prefork.so
LoadModule authn_core_module {modules}/mod_authn_core.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule authz_user_module {modules}/mod_authz_user.so
LoadModule headers_module {modules}/mod_headers.so
LoadModule auth_gssapi_module {modules}/mod_auth_gssapi.so
DocumentRoot {root}/htdocs
KeepAlive On
<Directory {root}/htdocs>
    AuthType GSSAPI
    AuthName "rpcsec test"
    GssapiCredStore keytab:{root}/http.keytab
    GssapiBasicAuth Off
    GssapiAllowedMech krb5
    Require valid-user
    Header always set X-Remote-User "expr=%{{REMOTE_USER}}"
</Directory>
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_accepting(port: int, proc: subprocess.Popen[bytes], root: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            path = root / "error.log"
            log = path.read_text(errors="replace") if path.exists() else ""
            raise RuntimeError(f"apache2 exited ({proc.returncode}): {log[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)  # poll the port (readiness), not a fixed wait
    raise RuntimeError("apache2 did not start accepting connections")


@contextlib.contextmanager
def apache_gssapi(realm: Any) -> Iterator[str]:
    """Run httpd with mod_auth_gssapi for HTTP/localhost of ``realm``; yields the base URL."""
    binary = require_tool("apache2") if shutil.which("apache2") else "/usr/sbin/apache2"
    if not os.path.exists(binary):
        require_tool("apache2")
    if not (MODULES / "mod_auth_gssapi.so").exists():
        require_tool("mod_auth_gssapi (libapache2-mod-auth-gssapi)")
    root = Path(tempfile.mkdtemp(prefix="rpcsec-apache-"))
    try:
        (root / "htdocs").mkdir()
        (root / "htdocs" / "index.html").write_text("hello from apache\n")
        shutil.copy(http_keytab(realm), root / "http.keytab")
        shutil.copy(realm.lab.krb5_conf, root / "krb5.conf")
        user = ""
        if os.geteuid() == 0:
            account = pwd.getpwnam("www-data")
            user = "User www-data\nGroup www-data"
            for path in (root, root / "htdocs", root / "http.keytab", root / "krb5.conf"):
                os.chown(path, account.pw_uid, account.pw_gid)
        root.chmod(0o755)
        port = _free_port()
        conf = root / "httpd.conf"
        conf.write_text(_CONFIG.format(root=root, port=port, modules=MODULES, user=user))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "KRB5_CONFIG": str(root / "krb5.conf"),
            "KRB5RCACHEDIR": str(root),
            "KRB5_KTNAME": str(root / "http.keytab"),
        }
        proc = subprocess.Popen(
            [binary, "-X", "-f", str(conf)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_accepting(port, proc, root)
            yield f"http://localhost:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def error_log(url: str) -> str:  # pragma: no cover - debugging aid
    return ""
