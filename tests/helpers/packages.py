"""Every security package's credentials for in-memory context tests: ``PACKAGES`` is the pytest
parameter list (kerberos and negotiate-with-Kerberos need the test KDC), ``credentials_for``
returns (client credentials, server credentials, target name) for alice calling a service."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from rpcsec.sspi import Credentials, CredentialUse, acquire_credentials_handle

__all__ = ["PACKAGES", "credentials_for"]

PACKAGES = [
    "x509",
    "ntlm",
    pytest.param("kerberos", marks=pytest.mark.kerberos),
    pytest.param("negotiate", marks=pytest.mark.kerberos),
]

_USERS = "RPCSEC:alice:Alice-Pa55!\nRPCSEC:bob:Bob-Pa55!\n"


def credentials_for(
    package: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> tuple[Credentials, Credentials, str]:
    """alice's OUTBOUND credentials, a service's INBOUND ones, and the service's target name."""
    if package == "x509":
        from helpers.pki import make_authority

        pki = make_authority(tmp_path)
        return (
            pki.credentials("alice"),
            pki.credentials("documents", CredentialUse.INBOUND),
            pki.id("documents"),
        )
    if package == "ntlm":
        user_file = tmp_path / "ntlm-users"
        user_file.write_text(_USERS)
        return (
            acquire_credentials_handle(
                "ntlm", "RPCSEC\\alice", CredentialUse.OUTBOUND, password="Alice-Pa55!"
            ),
            acquire_credentials_handle(
                "ntlm", None, CredentialUse.INBOUND, user_file=str(user_file)
            ),
            "host@documents",
        )
    realm: Any = request.getfixturevalue("kerberos_realm")
    return (
        realm.client_credentials("alice", package=package),
        realm.server_credentials("storage", package=package),
        realm.hostbased("storage"),
    )
