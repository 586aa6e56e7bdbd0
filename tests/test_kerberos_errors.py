"""Bad input against the kerberos package: every failure is a typed SecurityError.

Real failures of real tickets: wrong and stale keytabs, unknown principals, wrong passwords,
expired tickets and clock skew (from a KDC whose clock is two hours behind, ``krb5kdc -T``),
a ticket from another realm, a replayed AP-REQ (the acceptor's replay cache), and garbage.
"""

from __future__ import annotations

import shutil

import pytest
from helpers.pair import handshake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.sspi import (
    ContextExpiredError,
    ContextReq,
    ContextState,
    CredentialUse,
    InvalidStateError,
    InvalidTokenError,
    LogonDeniedError,
    NoCredentialsError,
    ReplayError,
    SecurityError,
    TargetUnknownError,
    TimeSkewError,
    WrongPrincipalError,
    accept_security_context,
    acquire_credentials_handle,
    initialize_security_context,
)


def _accept_with(credentials, client) -> None:
    server = accept_security_context(credentials)
    handshake(client, server)


def _client(realm, user="alice", service="storage", **kwargs):
    return initialize_security_context(
        realm.client_credentials(user, **kwargs), realm.hostbased(service)
    )


# -- credentials ----------------------------------------------------------------------------


def test_wrong_password_is_logon_denied(kerberos_realm) -> None:
    with pytest.raises(LogonDeniedError) as raised:
        acquire_credentials_handle(
            "kerberos", kerberos_realm.principal("bob"), CredentialUse.OUTBOUND, password="nope"
        )
    assert "nope" not in str(raised.value)
    assert type(raised.value.__cause__).__module__.startswith("gssapi")  # wrapped, not leaked


def test_unknown_user_is_logon_denied(kerberos_realm) -> None:
    with pytest.raises(LogonDeniedError):
        acquire_credentials_handle(
            "kerberos", "mallory@KRBTEST.COM", CredentialUse.OUTBOUND, password="whatever"
        )


def test_missing_or_mismatched_credentials(kerberos_realm) -> None:
    realm = kerberos_realm
    with pytest.raises(NoCredentialsError):  # the ccache holds alice, not bob
        acquire_credentials_handle(
            "kerberos", "bob@KRBTEST.COM", CredentialUse.OUTBOUND, ccache=realm.ccache("alice")
        )
    with pytest.raises(NoCredentialsError):
        acquire_credentials_handle(
            "kerberos", None, CredentialUse.OUTBOUND, ccache="FILE:/nonexistent/ccache"
        )
    with pytest.raises(NoCredentialsError):
        acquire_credentials_handle("kerberos", None, CredentialUse.INBOUND, keytab="/nonexistent")
    with pytest.raises(NoCredentialsError):  # documents' keytab has no key for storage
        acquire_credentials_handle(
            "kerberos",
            realm.service_principal("storage"),
            CredentialUse.INBOUND,
            keytab=realm.keytab("documents"),
        )


def test_client_context_needs_outbound_kerberos_credentials(kerberos_realm) -> None:
    server_creds = kerberos_realm.server_credentials("storage")
    with pytest.raises(ValueError):
        initialize_security_context(server_creds, "storage@localhost")


# -- targets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["nosuch@localhost", "storage/localhost@NOWHERE.TEST", "storage/localhost@OTHER.TEST"],
)
def test_unknown_target_is_target_unknown(kerberos_realm, target) -> None:
    client = initialize_security_context(kerberos_realm.client_credentials("alice"), target)
    with pytest.raises(TargetUnknownError):
        client.step()
    assert client.state is ContextState.FAILED
    with pytest.raises(InvalidStateError):  # failure is sticky
        client.step()


@pytest.mark.parametrize("target", [None, "", "storage", "bad\x00name@host"])
def test_malformed_target_names(kerberos_realm, target) -> None:
    # The caller's mistake: refused when the context is made (issue 10 item 4).
    with pytest.raises((TypeError, ValueError)):
        initialize_security_context(kerberos_realm.client_credentials("alice"), target)


# -- the acceptor's keys ----------------------------------------------------------------------


def test_keytab_of_another_service_is_wrong_principal(kerberos_realm) -> None:
    wrong = acquire_credentials_handle(
        "kerberos", None, CredentialUse.INBOUND, keytab=kerberos_realm.keytab("documents")
    )
    with pytest.raises(WrongPrincipalError):
        _accept_with(wrong, _client(kerberos_realm))


def test_stale_keytab_is_wrong_principal(kerberos_realm, tmp_path) -> None:
    realm = kerberos_realm
    current = realm.add_service("rekeyed")
    stale = tmp_path / "stale.keytab"
    shutil.copy(current, stale)
    realm.rekey_service("rekeyed", current)  # new kvno; the copy keeps only the old key
    creds = acquire_credentials_handle("kerberos", None, CredentialUse.INBOUND, keytab=str(stale))
    with pytest.raises(WrongPrincipalError):
        _accept_with(creds, _client(realm, service="rekeyed"))
    fresh = acquire_credentials_handle("kerberos", None, CredentialUse.INBOUND, keytab=current)
    _accept_with(fresh, _client(realm, service="rekeyed"))


def test_ticket_from_another_realm_is_refused(kerberos_lab) -> None:
    other, main = kerberos_lab.other, kerberos_lab.main
    client = initialize_security_context(
        other.client_credentials("carol"), other.service_principal("storage")
    )
    with pytest.raises(WrongPrincipalError):
        _accept_with(main.server_credentials("storage"), client)


# -- time ---------------------------------------------------------------------------------------


def test_expired_ticket_is_refused_by_the_acceptor(kerberos_lab) -> None:
    past = kerberos_lab.past
    # dave's tickets end an hour ago by the real clock; the client, synchronised to its KDC
    # (kdc_timesync), still presents one and the acceptor refuses it.
    client = initialize_security_context(
        past.client_credentials("dave"), past.service_principal("storage")
    )
    with pytest.raises(ContextExpiredError):
        _accept_with(past.server_credentials("storage"), client)


def test_expired_tickets_in_the_ccache_are_refused_at_acquire(kerberos_lab) -> None:
    past = kerberos_lab.past
    with pytest.raises(ContextExpiredError):
        past.client_credentials("dave", sync_clock=False)


def test_clock_skew_beyond_the_limit(kerberos_lab) -> None:
    past = kerberos_lab.past
    # erin's ticket is valid, but her client keeps the KDC's clock (two hours behind) and so
    # stamps its authenticator far outside the acceptor's five-minute window.
    client = initialize_security_context(
        past.client_credentials("erin"), past.service_principal("storage")
    )
    with pytest.raises(TimeSkewError):
        _accept_with(past.server_credentials("storage"), client)


# -- replay ---------------------------------------------------------------------------------------


def test_replayed_ap_req_is_detected_by_the_replay_cache(kerberos_realm, monkeypatch) -> None:
    # Even with replay caches disabled in the environment (as k5test realms do), the
    # acceptor's own rcache option applies.
    monkeypatch.setenv("KRB5RCACHETYPE", "none")
    realm = kerberos_realm
    token = _client(realm).step().token
    first = accept_security_context(realm.server_credentials("storage"))
    assert first.step(token).complete
    second = accept_security_context(realm.server_credentials("storage"))
    with pytest.raises(ReplayError):
        second.step(token)


def test_replay_after_a_failed_attempt_is_still_a_replay(kerberos_realm) -> None:
    realm = kerberos_realm
    token = _client(realm).step().token
    server = accept_security_context(realm.server_credentials("storage"), ContextReq.DELEGATE)
    with pytest.raises(SecurityError):  # InsufficientAttributesError
        server.step(token)
    with pytest.raises(ReplayError):
        accept_security_context(realm.server_credentials("storage")).step(token)


# -- garbage ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_leg(kerberos_realm) -> bytes:
    return _client(kerberos_realm).step().token


@pytest.fixture(scope="module")
def storage_creds(kerberos_realm):
    return kerberos_realm.server_credentials("storage")


def _server_step(credentials, token: bytes) -> None:
    """A corrupted first leg fails with a SecurityError -- or, when the change hit one of the
    few unauthenticated fields of Kerberos' ASN.1 framing (the AP-REQ's msg-type, RFC 4120
    §5.5.1), it is still alice's genuine authenticator and offer: never anything else."""
    server = accept_security_context(credentials)
    try:
        server.step(token)
    except SecurityError:
        assert server.state is ContextState.FAILED
        return
    assert server.peer.principal == "alice@KRBTEST.COM"
    assert server.attributes == ContextReq.default().normalized()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=600))
def test_garbage_first_leg_is_a_security_error(storage_creds, data) -> None:
    _server_step(storage_creds, data)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    cut=st.integers(min_value=0, max_value=4000), flip=st.integers(0, 4000), bit=st.integers(0, 7)
)
def test_truncated_or_flipped_first_leg_is_a_security_error(
    storage_creds, first_leg, cut, flip, bit
) -> None:
    truncated = first_leg[: cut % len(first_leg)]
    _server_step(storage_creds, truncated)
    index = flip % len(first_leg)
    flipped = first_leg[:index] + bytes([first_leg[index] ^ (1 << bit)]) + first_leg[index + 1 :]
    _server_step(storage_creds, flipped)


def _pending(realm, credentials):
    """A client waiting for the server's reply, and that genuine reply."""
    client = _client(realm)
    reply = accept_security_context(credentials).step(client.step().token).token
    return client, reply


def _client_step(client, token: bytes) -> None:
    """As for the first leg: a SecurityError, or (a flip in the AP-REP's unauthenticated
    msg-type) the genuine server and grant."""
    try:
        client.step(token)
    except SecurityError:
        assert client.state is ContextState.FAILED
        return
    assert client.peer.principal == "storage/localhost@KRBTEST.COM"
    assert client.attributes == ContextReq.default().normalized()


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=300), cut=st.integers(0, 400), flip=st.integers(0, 400))
def test_garbage_server_reply_is_a_security_error(
    kerberos_realm, storage_creds, data, cut, flip
) -> None:
    client, _ = _pending(kerberos_realm, storage_creds)
    _client_step(client, data)
    client, reply = _pending(kerberos_realm, storage_creds)
    _client_step(client, reply[: cut % len(reply)])
    client, reply = _pending(kerberos_realm, storage_creds)
    index = flip % len(reply)
    _client_step(client, reply[:index] + bytes([reply[index] ^ 0x80]) + reply[index + 1 :])


def test_messages_before_or_without_a_context(kerberos_realm) -> None:
    client = _client(kerberos_realm)
    with pytest.raises(InvalidStateError):
        client.wrap(b"too early")
    with pytest.raises(InvalidTokenError):
        client.step(b"a token on the first step")
