"""The ntlm package: NTLMv2 through pyspnego, hostile input, no delegation."""

from __future__ import annotations

import os
import pathlib

import pytest
from helpers.pair import handshake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.sspi import (
    ContextReq,
    CredentialUse,
    ImpersonationLevel,
    LogonDeniedError,
    MessageAlteredError,
    NoCredentialsError,
    PackageCapability,
    SecurityError,
    accept_security_context,
    acquire_credentials_handle,
    enumerate_security_packages,
    initialize_security_context,
    query_security_package_info,
)


def _client(user: str, password: str, **kwargs):
    creds = acquire_credentials_handle("ntlm", user, CredentialUse.OUTBOUND, password=password)
    return initialize_security_context(creds, "host@server", **kwargs)


def _server(user_file: pathlib.Path):
    creds = acquire_credentials_handle(
        "ntlm", None, CredentialUse.INBOUND, user_file=str(user_file)
    )
    return accept_security_context(creds)


def test_package_info_says_no_delegation_no_mutual_auth() -> None:
    info = query_security_package_info("ntlm")
    assert info.available and info.capabilities & PackageCapability.INTEGRITY
    assert not info.capabilities & PackageCapability.DELEGATION
    assert not info.capabilities & PackageCapability.MUTUAL_AUTH
    assert "ntlm" in {p.name for p in enumerate_security_packages()}


def test_handshake_identifies_the_client(ntlm_user_file) -> None:
    pair = handshake(_client("RPCSEC\\alice", "Alice-Pa55!"), _server(ntlm_user_file))
    assert pair.legs == 4  # NEGOTIATE, CHALLENGE, AUTHENTICATE+offer, grant
    assert pair.server.peer.principal == "RPCSEC\\alice"
    assert pair.server.peer.package == "ntlm"


def test_delegate_is_never_granted(ntlm_user_file) -> None:
    pair = handshake(
        _client(
            "RPCSEC\\alice",
            "Alice-Pa55!",
            requested=ContextReq.default() | ContextReq.DELEGATE,
            impersonation=ImpersonationLevel.DELEGATE,
        ),
        _server(ntlm_user_file),
    )
    assert not pair.server.attributes & ContextReq.DELEGATE
    assert pair.server.peer.delegated_credentials is None
    assert pair.server.peer.impersonation_level is ImpersonationLevel.IMPERSONATE


@pytest.mark.parametrize(
    ("user", "password"),
    [("RPCSEC\\alice", "wrong"), ("RPCSEC\\mallory", "Alice-Pa55!"), ("OTHER\\alice", "x")],
)
def test_bad_logon_is_logon_denied(ntlm_user_file, user: str, password: str) -> None:
    with pytest.raises(LogonDeniedError):
        handshake(_client(user, password), _server(ntlm_user_file))


def test_ntlmv1_responses_are_refused(ntlm_user_file, monkeypatch) -> None:
    client, server = _client("RPCSEC\\alice", "Alice-Pa55!"), _server(ntlm_user_file)
    monkeypatch.setenv("LM_COMPAT_LEVEL", "1")  # the client will send NTLMv1 / LM responses
    negotiate = client.step().token
    monkeypatch.delenv("LM_COMPAT_LEVEL")
    authenticate = client.step(server.step(negotiate).token).token
    with pytest.raises(LogonDeniedError):
        server.step(authenticate)


def test_altered_offer_is_detected(ntlm_user_file) -> None:
    client, server = _client("RPCSEC\\alice", "Alice-Pa55!"), _server(ntlm_user_file)
    challenge = server.step(client.step().token).token
    authenticate = bytearray(client.step(challenge).token)
    authenticate[-40] ^= 0x04  # a bit of the ContextOffer (e.g. drop CONFIDENTIALITY)
    with pytest.raises(MessageAlteredError):
        server.step(bytes(authenticate))


def test_missing_credentials() -> None:
    with pytest.raises(NoCredentialsError):
        acquire_credentials_handle("ntlm", "alice", CredentialUse.OUTBOUND)
    with pytest.raises(NoCredentialsError):
        acquire_credentials_handle(
            "ntlm", None, CredentialUse.INBOUND, user_file="/nonexistent/users"
        )
    with pytest.raises(NoCredentialsError):
        acquire_credentials_handle("no-such-package")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(leg=st.integers(min_value=0, max_value=2), garbage=st.binary(max_size=300))
def test_arbitrary_bytes_at_any_leg_raise_only_security_errors(ntlm_user_file, leg, garbage):
    client, server = _client("RPCSEC\\alice", "Alice-Pa55!"), _server(ntlm_user_file)
    tokens = []
    token = client.step().token
    try:
        if leg == 0:
            server.step(garbage)
            return
        challenge = server.step(token).token
        if leg == 1:
            client.step(garbage)
            return
        tokens.append(client.step(challenge).token)
        server.step(garbage)
    except SecurityError:
        return
    except Exception as exc:  # pragma: no cover - the property under test
        raise AssertionError(f"non-SecurityError escaped: {exc!r}") from exc


def test_password_never_appears_in_errors(ntlm_user_file) -> None:
    with pytest.raises(LogonDeniedError) as raised:
        handshake(_client("RPCSEC\\alice", "S3cret-Guess"), _server(ntlm_user_file))
    text = repr(raised.value) + str(raised.value)
    cause = raised.value.__cause__
    assert "S3cret-Guess" not in text + (str(cause) if cause else "")


def test_user_file_environment_is_restored(ntlm_user_file) -> None:
    before = os.environ.get("NTLM_USER_FILE")
    handshake(_client("RPCSEC\\alice", "Alice-Pa55!"), _server(ntlm_user_file))
    assert os.environ.get("NTLM_USER_FILE") == before
