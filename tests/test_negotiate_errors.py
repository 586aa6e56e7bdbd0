"""Bad input against the negotiate package: typed SecurityErrors, never pyspnego's or gssapi's."""

from __future__ import annotations

import pytest
from helpers.pair import handshake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_negotiate_handshake import client_creds, server_creds

from rpcsec.packages.kerberos._records import OfferRecord, encode_frame
from rpcsec.sspi import (
    BadBindingsError,
    ContextOffer,
    ContextReq,
    ContextState,
    CredentialUse,
    ImpersonationLevel,
    InsufficientAttributesError,
    LogonDeniedError,
    MessageAlteredError,
    ReplayError,
    SecurityError,
    TargetUnknownError,
    accept_security_context,
    acquire_credentials_handle,
    initialize_security_context,
)

REQ = ContextReq.default() | ContextReq.CONFIDENTIALITY


def _client(creds, target="storage@localhost", req=REQ, level=ImpersonationLevel.IMPERSONATE):
    return initialize_security_context(creds, target, req, impersonation=level)


def _forge_offer(token: bytes) -> bytes:
    requested = REQ.normalized()
    genuine = ContextOffer(requested, ImpersonationLevel.IMPERSONATE).encode()
    assert genuine in token
    return token.replace(genuine, ContextOffer(requested, ImpersonationLevel.DELEGATE).encode())


def test_wrong_ntlm_password_is_logon_denied(kerberos_realm, ntlm_user_file) -> None:
    creds = acquire_credentials_handle(
        "negotiate", "RPCSEC\\alice", CredentialUse.OUTBOUND, password="not her password"
    )
    with pytest.raises(LogonDeniedError) as raised:
        handshake(_client(creds), accept_security_context(server_creds(user_file=ntlm_user_file)))
    assert "not her password" not in str(raised.value)


def test_forged_offer_fails_bindings_over_kerberos(kerberos_realm, ntlm_user_file) -> None:
    client = _client(client_creds(kerberos_realm))
    server = accept_security_context(server_creds(kerberos_realm, user_file=ntlm_user_file))
    with pytest.raises(BadBindingsError):
        server.step(_forge_offer(client.step().token))


def test_forged_offer_fails_bindings_over_ntlm(kerberos_realm, ntlm_user_file) -> None:
    client = _client(client_creds(None))
    server = accept_security_context(server_creds(user_file=ntlm_user_file))
    token = _forge_offer(client.step().token)
    with pytest.raises(BadBindingsError):
        while token is not None:
            token = server.step(token).token
            if token is not None:
                token = client.step(token).token


def test_forged_grant_is_rejected(kerberos_realm, ntlm_user_file) -> None:
    client = _client(client_creds(kerberos_realm))
    server = accept_security_context(server_creds(kerberos_realm))
    reply = server.step(client.step().token).token
    with pytest.raises(MessageAlteredError):
        client.step(reply[:-1] + bytes([reply[-1] ^ 1]))


def test_replayed_first_leg_over_kerberos(kerberos_realm) -> None:
    token = _client(client_creds(kerberos_realm, ntlm=False)).step().token
    assert accept_security_context(server_creds(kerberos_realm)).step(token).complete
    with pytest.raises(ReplayError):
        accept_security_context(server_creds(kerberos_realm)).step(token)


def test_server_requirements_ntlm_cannot_meet(kerberos_realm, ntlm_user_file) -> None:
    client = _client(client_creds(None), req=REQ | ContextReq.DELEGATE)
    server = accept_security_context(server_creds(user_file=ntlm_user_file), ContextReq.MUTUAL_AUTH)
    with pytest.raises(InsufficientAttributesError):
        handshake(client, server)


def test_kerberos_only_client_with_unknown_target(kerberos_realm) -> None:
    client = _client(client_creds(kerberos_realm, ntlm=False), target="unregistered@localhost")
    with pytest.raises(TargetUnknownError):
        client.step()
    assert client.state is ContextState.FAILED


@pytest.mark.parametrize("target", [None, "", "storage", "@host", "svc@"])
def test_malformed_targets(kerberos_realm, target) -> None:
    # The caller's mistake: refused when the context is made (issue 10 item 4).
    with pytest.raises((TypeError, ValueError)):
        _client(client_creds(None), target=target)


@pytest.fixture(scope="module")
def both_server(kerberos_realm, tmp_path_factory):
    path = tmp_path_factory.mktemp("ntlm") / "users"
    path.write_text("RPCSEC:alice:Alice-Pa55!\n")
    return server_creds(kerberos_realm, user_file=path)


@pytest.fixture(scope="module")
def first_legs(kerberos_realm):
    return [
        _client(client_creds(kerberos_realm)).step().token,
        _client(client_creds(None)).step().token,
    ]


def _server_rejects(credentials, token: bytes) -> None:
    server = accept_security_context(credentials)
    try:
        server.step(token)
    except SecurityError:
        assert server.state is ContextState.FAILED
        return
    # Accepting is only fine if nothing authenticated was changed (NTLM's first message and
    # SPNEGO's framing carry nothing secret): then the handshake is merely still going.
    assert server.state in (ContextState.IN_PROGRESS, ContextState.ESTABLISHED)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=400), framed=st.booleans())
def test_garbage_first_leg(both_server, data, framed) -> None:
    if framed:  # a well-formed frame and offer record around a garbage SPNEGO token
        record = OfferRecord(ContextOffer(REQ, ImpersonationLevel.IMPERSONATE)).encode()
        data = encode_frame(b"RG", 1, data, record)
    server = accept_security_context(both_server)
    with pytest.raises(SecurityError):
        server.step(data)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(which=st.integers(0, 1), cut=st.integers(0, 3000), flip=st.integers(0, 3000))
def test_truncated_or_flipped_first_leg(both_server, first_legs, which, cut, flip) -> None:
    token = first_legs[which]
    with pytest.raises(SecurityError):
        accept_security_context(both_server).step(token[: cut % len(token)])
    index = flip % len(token)
    _server_rejects(both_server, token[:index] + bytes([token[index] ^ 0x04]) + token[index + 1 :])


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=300))
def test_garbage_server_reply(kerberos_realm, data) -> None:
    client = _client(client_creds(kerberos_realm))
    client.step()
    with pytest.raises(SecurityError):
        client.step(data)
    assert client.state is ContextState.FAILED
