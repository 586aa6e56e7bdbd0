"""The Kerberos test lab itself (tests/kdc.py) and the package's behaviour without its backend."""

from __future__ import annotations

import os
import sys

import kdc
import pytest

from rpcsec.packages.kerberos import _native
from rpcsec.sspi import (
    CredentialUse,
    NoCredentialsError,
    acquire_credentials_handle,
    query_security_package_info,
)


def test_missing_kdc_skips_locally_with_the_install_hint(monkeypatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(kdc, "_tool", lambda name: None)
    with pytest.raises(pytest.skip.Exception) as raised:
        kdc.require_kerberos()
    message = str(raised.value)
    assert "apt-get install krb5-kdc krb5-admin-server krb5-user libkrb5-dev" in message
    assert "pip install gssapi" in message


def test_missing_gssapi_fails_in_ci(monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setitem(sys.modules, "gssapi", None)  # import gssapi -> ImportError
    with pytest.raises(pytest.fail.Exception) as raised:
        kdc.require_kerberos()
    assert "python-gssapi" in str(raised.value)


def test_without_gssapi_the_package_is_listed_unavailable(monkeypatch) -> None:
    monkeypatch.setattr(_native, "_IMPORT_ERROR", "python-gssapi is not installed (simulated)")
    info = query_security_package_info("kerberos")
    assert not info.available
    assert "rpcsec[kerberos]" in info.unavailable_reason
    with pytest.raises(NoCredentialsError):
        acquire_credentials_handle("kerberos", None, CredentialUse.OUTBOUND)


def test_a_lab_starts_on_loopback_and_cleans_up(kerberos_lab, tmp_path) -> None:
    before = os.environ.get("KRB5_CONFIG")
    lab = kdc.start_lab(tmp_path)
    try:
        assert os.environ["KRB5_CONFIG"] == str(lab.krb5_conf)
        assert "127.0.0.1:" in lab.krb5_conf.read_text()
        assert lab.main.ccache("bob").startswith("FILE:")
        processes = list(lab._processes)
        assert len(processes) == 2 and all(p.poll() is None for p in processes)
    finally:
        lab.stop()
    assert os.environ.get("KRB5_CONFIG") == before
    assert all(p.poll() is not None for p in processes)
