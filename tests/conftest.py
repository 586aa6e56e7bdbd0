"""Shared fixtures. Servers start on 127.0.0.1 port 0; nothing waits by sleeping."""

from __future__ import annotations

import pathlib

import pytest


@pytest.fixture
def ntlm_user_file(tmp_path: pathlib.Path) -> pathlib.Path:
    """A pyspnego / gss-ntlmssp user file with alice and bob in domain RPCSEC."""
    path = tmp_path / "ntlm-users"
    path.write_text("RPCSEC:alice:Alice-Pa55!\nRPCSEC:bob:Bob-Pa55!\n")
    return path


# -- Kerberos (tests/kdc.py): one real MIT KDC lab per test session --------------------------


@pytest.fixture(scope="session")
def kerberos_lab(tmp_path_factory: pytest.TempPathFactory):
    """Real KDCs on loopback: KRBTEST.COM (alice, bob; documents, storage, archive),
    OTHER.TEST (carol) and PAST.TEST (dave, KDC clock two hours behind). Skips without the
    Debian packages and python-gssapi; fails instead when CI=true. See tests/kdc.py."""
    import kdc

    kdc.require_kerberos()
    lab = kdc.start_lab(tmp_path_factory.mktemp("krb5"))
    yield lab
    lab.stop()


@pytest.fixture(scope="session")
def kerberos_realm(kerberos_lab):
    """The main realm, KRBTEST.COM: ``client_credentials("alice")``,
    ``server_credentials("storage")``, ``hostbased("storage")`` -> "storage@localhost"."""
    return kerberos_lab.main
