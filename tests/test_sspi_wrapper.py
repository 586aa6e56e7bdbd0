"""``SecurityContext.wrapper``: the gRPC client's per-method opening wrap in one frame.

It must be ``wrap`` exactly -- the very token for the same sequence number, the same counter
(never a number twice, interleaved with ``wrap`` and ``sign``), the same refusals (deleted,
exported, expired, exhausted, no confidentiality) -- or a hot path would be a second, weaker
copy of the core. Twin contexts (one exported context imported twice: same keys, same next
number) show "the very token".
"""

from __future__ import annotations

import itertools
import time

import pytest
from helpers.pair import handshake
from helpers.pki import make_authority
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.sspi import (
    ContextExpiredError,
    ContextReq,
    CredentialUse,
    InvalidStateError,
    MessageAlteredError,
    QopNotSupportedError,
    accept_security_context,
    acquire_credentials_handle,
    import_security_context,
    initialize_security_context,
)
from rpcsec.sspi._protection import EPOCH_BITS, LARGE_MESSAGE

PRIVATE = ContextReq.REPLAY_DETECT | ContextReq.CONFIDENTIALITY | ContextReq.CONNECTION
SIGNED = ContextReq.REPLAY_DETECT | ContextReq.INTEGRITY | ContextReq.CONNECTION


class _Clock:
    """Real time plus whatever a test adds (certificates are checked against it too)."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


def _pair(package: str, tmp_path, user_file, req: ContextReq = PRIVATE, **kwargs):
    if package == "x509":
        pki = make_authority(tmp_path)
        client = initialize_security_context(pki.credentials("alice"), pki.id("documents"), req)
        server_creds = pki.credentials("documents", CredentialUse.INBOUND)
    else:
        alice = acquire_credentials_handle(
            "ntlm", "RPCSEC\\alice", CredentialUse.OUTBOUND, password="Alice-Pa55!"
        )
        client = initialize_security_context(alice, "host@server", req)
        server_creds = acquire_credentials_handle(
            "ntlm", None, CredentialUse.INBOUND, user_file=str(user_file)
        )
    return handshake(client, accept_security_context(server_creds, **kwargs)), server_creds


@pytest.fixture(params=["x509", "ntlm"])
def twins(request, tmp_path, ntlm_user_file):
    """(peer, a, b): ``a`` and ``b`` the same server context (same keys, same counter)."""
    pair, creds = _pair(request.param, tmp_path, ntlm_user_file)
    blob, a = pair.server.export_and_continue()
    b = import_security_context(blob, creds, once=False)
    return pair.client, a, b


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=600),
    aad=st.binary(max_size=120),
    encrypt=st.booleans(),
)
def test_a_wrapper_makes_the_very_token_wrap_makes(twins, data, aad, encrypt) -> None:
    peer, a, b = twins
    token = a.wrapper(aad, encrypt=encrypt)(data)
    assert token == b.wrap(data, aad=aad, encrypt=encrypt)
    assert peer.unwrap(token, aad=aad, encrypted=encrypt) == data
    with pytest.raises(MessageAlteredError):  # the AAD is bound: another one does not open
        peer.unwrap(token, aad=aad + b"x", encrypted=encrypt, record=False)


def test_it_shares_wraps_counter_and_never_repeats_a_number(twins) -> None:
    peer, a, _ = twins
    opening = a.wrapper(b"open", encrypt=True)
    tokens = [opening(b"1"), a.wrap(b"2", aad=b"open"), a.sign(b"3"), opening(b"4")]
    numbers = [int.from_bytes(token[1:9], "big") for token in tokens]
    assert numbers == sorted(set(numbers)) and len(set(numbers)) == 4
    assert peer.unwrap(tokens[3], aad=b"open") == b"4"


def test_an_epoch_boundary_derives_the_next_key_as_wrap_does(twins) -> None:
    peer, a, b = twins
    start = (1 << EPOCH_BITS) - 2  # the last two numbers of epoch 0, then epoch 1 (not derived)
    a._send_seq = itertools.count(start)
    b._send_seq = itertools.count(start)
    opening = a.wrapper(b"aad", encrypt=False)
    for index in range(4):
        token = opening(b"m%d" % index)
        assert token == b.wrap(b"m%d" % index, aad=b"aad", encrypt=False)
        assert int.from_bytes(token[1:9], "big") == start + index
    assert peer.unwrap(token, aad=b"aad") == b"m3"


def test_a_large_message_is_wraps_own(twins) -> None:
    peer, a, b = twins
    data = bytes(LARGE_MESSAGE + 5)
    for encrypt in (True, False):
        token = a.wrapper(b"big", encrypt=encrypt)(data)
        assert token == b.wrap(data, aad=b"big", encrypt=encrypt)
        assert peer.unwrap(token, aad=b"big") == data


def test_a_deleted_or_exported_context_refuses_through_its_wrapper(twins) -> None:
    _, a, b = twins
    opening, other = a.wrapper(b"x", encrypt=True), b.wrapper(b"x", encrypt=True)
    a.delete()
    with pytest.raises(ContextExpiredError):
        opening(b"after delete")
    b.export()
    with pytest.raises(ContextExpiredError):
        other(b"after export")
    with pytest.raises(ContextExpiredError):
        a.wrapper(b"x", encrypt=True)


def test_expiry_and_exhaustion_refuse_as_wrap_does(tmp_path, ntlm_user_file) -> None:
    clock = _Clock()
    pair, _ = _pair("x509", tmp_path, ntlm_user_file)
    client = initialize_security_context(
        pair.client.credentials, pair.client.target_name, PRIVATE, lifetime=60, clock=clock
    )
    server = accept_security_context(pair.server.credentials)
    handshake(client, server)
    opening = client.wrapper(b"x", encrypt=True)
    assert server.unwrap(opening(b"in time"), aad=b"x") == b"in time"
    clock.ahead += 61
    with pytest.raises(ContextExpiredError):
        opening(b"too late")
    fresh = handshake(
        initialize_security_context(pair.client.credentials, pair.client.target_name, PRIVATE),
        accept_security_context(pair.server.credentials),
    ).client
    fresh._send_seq = itertools.count((1 << 64) - 1)
    opening = fresh.wrapper(b"x", encrypt=True)
    opening(b"the last number")
    with pytest.raises(ContextExpiredError):
        opening(b"one past it: a nonce would repeat")


def test_sealing_needs_a_confidential_context_and_an_established_one(
    tmp_path, ntlm_user_file
) -> None:
    pair, _ = _pair("x509", tmp_path, ntlm_user_file, SIGNED)
    with pytest.raises(QopNotSupportedError):
        pair.client.wrapper(b"x", encrypt=True)
    assert pair.server.unwrap(pair.client.wrapper(b"x", encrypt=False)(b"ok"), aad=b"x") == b"ok"
    pki = make_authority(tmp_path / "other")
    unbound = initialize_security_context(pki.credentials("alice"), pki.id("documents"), SIGNED)
    with pytest.raises(InvalidStateError):
        unbound.wrapper(b"x", encrypt=False)
