"""Real standard HTTP Negotiate peers (curl, requests-gssapi, httpx-gssapi, requests-kerberos)
and the application every rpcsec HTTP server shape serves to them in the tests.

The application answers ``/whoami`` with who ``rpcsec.current_token()`` says the caller is,
and, when the caller delegated, proves the delegated credentials work by authenticating *as the
caller* to a second service (``storage``) of the test realm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest

from rpcsec.security import current_token
from rpcsec.sspi import (
    CredentialUse,
    accept_security_context,
    acquire_credentials_handle,
    initialize_security_context,
)

_HTTP_KEYTABS: dict[str, str] = {}


def require_tool(name: str) -> str:
    """The path of a Debian tool the test needs; skip locally, fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (scripts/system-deps.sh installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def http_keytab(realm: Any) -> str:
    """HTTP/localhost@REALM with its own keytab (made once per lab)."""
    key = str(realm.lab.directory)
    if key not in _HTTP_KEYTABS:
        _HTTP_KEYTABS[key] = realm.add_service("HTTP")
    return _HTTP_KEYTABS[key]


def http_credentials(realm: Any, package: str = "kerberos") -> Any:
    """INBOUND credentials for HTTP/localhost (keytab, own replay cache)."""
    http_keytab(realm)
    return realm.server_credentials("HTTP", package=package)


def whoami() -> bytes:
    """What the application says about its caller: principal, level, onward identity."""
    token = current_token()
    onward = "-"
    if token.delegated_credentials is not None:
        onward = onward_identity(token.delegated_credentials)
    return f"{token.principal}|{token.impersonation_level.name}|{onward}\n".encode()


_STORAGE: dict[str, Any] = {}


def onward_identity(delegated: Any) -> str:
    """Authenticate to storage/localhost with the delegated credentials; storage's view."""
    realm = _STORAGE["realm"]
    storage = acquire_credentials_handle(
        "kerberos",
        realm.service_principal("storage"),
        CredentialUse.INBOUND,
        keytab=realm.keytab("storage"),
        rcache=realm.rcache("storage"),
    )
    client = initialize_security_context(
        delegated, "storage@localhost", options={"standard": "krb5"}
    )
    server = accept_security_context(storage, options={"standard": "only"})
    result = server.step(client.step().token)
    if result.token:
        client.step(result.token)
    return str(server.peer.principal)


def use_realm(realm: Any) -> None:
    _STORAGE["realm"] = realm


def peer_env(realm: Any, user: str = "alice") -> dict[str, str]:
    env = dict(realm.lab.env)
    env["KRB5CCNAME"] = realm.ccache(user)
    return env


def curl(url: str, realm: Any, *args: str, user: str = "alice") -> subprocess.CompletedProcess:
    """``curl --negotiate -u :`` (plus ``args``) with ``user``'s ticket cache."""
    tool = require_tool("curl")
    return subprocess.run(
        [tool, "-sS", "--negotiate", "-u", ":", "-w", "\n%{http_code}", *args, url],
        env=peer_env(realm, user),
        capture_output=True,
        timeout=60,
        check=False,
    )


def curl_body_status(url: str, realm: Any, *args: str) -> tuple[str, int]:
    proc = curl(url, realm, *args)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    text = proc.stdout.decode()
    body, _, status = text.rpartition("\n")
    return body.rstrip("\n"), int(status)


def requests_gssapi_get(url: str, realm: Any, *, delegate: bool = False) -> Any:
    import gssapi
    import requests
    import requests_gssapi

    creds = gssapi.Credentials(usage="initiate", store={"ccache": realm.ccache("alice")})
    auth = requests_gssapi.HTTPSPNEGOAuth(
        creds=creds, mutual_authentication=requests_gssapi.REQUIRED, delegate=delegate
    )
    return requests.get(url, auth=auth, timeout=30)


def httpx_gssapi_get(url: str, realm: Any) -> Any:
    import gssapi
    import httpx
    import httpx_gssapi

    creds = gssapi.Credentials(usage="initiate", store={"ccache": realm.ccache("alice")})
    auth = httpx_gssapi.HTTPSPNEGOAuth(creds=creds, mutual_authentication=httpx_gssapi.REQUIRED)
    with httpx.Client(timeout=30) as client:
        return client.get(url, auth=auth)


def requests_kerberos_get(url: str, realm: Any, monkeypatch: Any) -> Any:
    import requests
    import requests_kerberos

    monkeypatch.setenv("KRB5CCNAME", realm.ccache("alice"))
    auth = requests_kerberos.HTTPKerberosAuth(mutual_authentication=requests_kerberos.REQUIRED)
    return requests.get(url, auth=auth, timeout=30)
