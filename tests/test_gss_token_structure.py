"""The pure-Python structure checks that guard every native Kerberos call (kerberos/_tokens).

Genuine tokens from a real KDC pass; anything else raises the typed error and nothing but it
(hypothesis over arbitrary bytes and over mutations of genuine tokens). The native side of the
same inputs is exercised in tests/test_gss_crash_subprocess.py, in a subprocess.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.packages.kerberos._tokens import (
    AP_REP,
    AP_REQ,
    KRB_ERROR,
    TokenShape,
    check_any_mic_token,
    check_initial_token,
    check_mic_token,
    check_wrap_token,
)
from rpcsec.sspi import InvalidTokenError, MessageAlteredError

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def gss_pair(kerberos_realm):
    """A raw MIT context pair (mutual auth, AES), its AP-REQ and AP-REP."""
    from rpcsec.packages.kerberos._names import service_name
    from rpcsec.packages.kerberos._native import KRB5_MECH, gss
    from rpcsec.sspi import CredentialUse, acquire_credentials_handle

    client = acquire_credentials_handle(
        "kerberos",
        kerberos_realm.principal("alice"),
        CredentialUse.OUTBOUND,
        ccache=kerberos_realm.ccache("alice"),
    )
    server = kerberos_realm.server_credentials("storage")
    flags = gss.RequirementFlag
    init = gss.init_sec_context(
        service_name(kerberos_realm.hostbased("storage")),
        creds=client.material.initiator,
        mech=KRB5_MECH,
        flags=int(flags.mutual_authentication | flags.integrity | flags.confidentiality),
    )
    accepted = gss.accept_sec_context(init.token, acceptor_creds=server.material.acceptor)
    done = gss.init_sec_context(
        service_name(kerberos_realm.hostbased("storage")),
        creds=client.material.initiator,
        context=init.context,
        mech=KRB5_MECH,
        input_token=accepted.token,
    )
    assert not done.more_steps
    return init.context, accepted.context, bytes(init.token), bytes(accepted.token)


@pytest.mark.kerberos
def test_genuine_handshake_tokens_pass(gss_pair) -> None:
    _, _, ap_req, ap_rep = gss_pair
    assert check_initial_token(ap_req, AP_REQ) == AP_REQ
    assert check_initial_token(ap_rep, AP_REP, KRB_ERROR) == AP_REP
    with pytest.raises(InvalidTokenError):
        check_initial_token(ap_req, AP_REP, KRB_ERROR)  # right framing, wrong step
    with pytest.raises(InvalidTokenError):
        check_initial_token(ap_rep, AP_REQ)


@pytest.mark.kerberos
def test_genuine_message_tokens_pass_and_directions_are_told_apart(gss_pair) -> None:
    from rpcsec.packages.kerberos._native import gss

    initiator, acceptor, _, _ = gss_pair
    client_mic = bytes(gss.get_mic(initiator, b"m"))
    server_mic = bytes(gss.get_mic(acceptor, b"m"))
    client_sees = TokenShape.from_own_mic(client_mic)
    server_sees = TokenShape.from_own_mic(server_mic)
    check_mic_token(server_mic, client_sees)
    check_mic_token(client_mic, server_sees)
    check_any_mic_token(client_mic)
    with pytest.raises(MessageAlteredError):
        check_mic_token(client_mic, client_sees)  # a reflected token: wrong direction
    sealed = bytes(gss.wrap(initiator, b"x" * 50, confidential=True).message)
    signed = bytes(gss.wrap(initiator, b"x" * 50, confidential=False).message)
    check_wrap_token(sealed, server_sees, sealed=True)
    check_wrap_token(signed, server_sees, sealed=False)
    with pytest.raises(MessageAlteredError):
        check_wrap_token(signed, server_sees, sealed=True)  # integrity-only where sealed needed
    with pytest.raises(MessageAlteredError):
        check_wrap_token(sealed, client_sees, sealed=True)


@pytest.mark.kerberos
@FUZZ
@given(index=st.integers(min_value=0, max_value=40), value=st.integers(0, 255))
def test_mutated_handshake_framing_is_refused_or_passes_typed(gss_pair, index, value) -> None:
    _, _, ap_req, _ = gss_pair
    mutated = bytearray(ap_req)
    mutated[index % len(mutated)] = value
    with contextlib.suppress(InvalidTokenError):
        check_initial_token(bytes(mutated), AP_REQ)


@pytest.mark.kerberos
@FUZZ
@given(cut=st.integers(min_value=0, max_value=2000))
def test_truncated_handshake_tokens_are_refused(gss_pair, cut) -> None:
    _, _, ap_req, ap_rep = gss_pair
    for token, ids in ((ap_req, (AP_REQ,)), (ap_rep, (AP_REP, KRB_ERROR))):
        if cut < len(token):
            with pytest.raises(InvalidTokenError):
                check_initial_token(token[:cut], *ids)
            with pytest.raises(InvalidTokenError):
                check_initial_token(token + b"\x00" * (1 + cut % 7), *ids)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_typed_errors(data: bytes) -> None:
    shape = TokenShape(peer_is_acceptor=True, acceptor_subkey=True, checksum_size=12)
    for check, error in (
        (lambda: check_initial_token(data, AP_REQ, AP_REP, KRB_ERROR), InvalidTokenError),
        (lambda: check_mic_token(data, shape), MessageAlteredError),
        (lambda: check_wrap_token(data, shape, sealed=None), MessageAlteredError),
        (lambda: check_any_mic_token(data), MessageAlteredError),
    ):
        with contextlib.suppress(error):
            check()


@FUZZ
@given(
    token_id=st.sampled_from([b"\x01\x01", b"\x02\x01", b"\x01\x02", b"\x00\x00", b"\x04\x05"]),
    rest=st.binary(min_size=0, max_size=120),
)
def test_rfc1964_token_ids_never_pass(token_id: bytes, rest: bytes) -> None:
    shape = TokenShape(peer_is_acceptor=False, acceptor_subkey=True, checksum_size=12)
    token = token_id + rest
    with pytest.raises(MessageAlteredError):
        check_mic_token(token, shape)
    with pytest.raises(MessageAlteredError):
        check_wrap_token(token, shape, sealed=None)
    with pytest.raises(MessageAlteredError):
        check_any_mic_token(token)


def test_der_lengths_must_be_minimal_and_definite() -> None:
    oid = bytes.fromhex("06092a864886f712010202")
    body = oid + AP_REQ + b"\x6e\x02\x30\x00"
    good = b"\x60" + bytes([len(body)]) + body
    assert check_initial_token(good, AP_REQ) == AP_REQ
    for bad in (
        b"\x60\x81" + bytes([len(body)]) + body,  # long form for a short length
        b"\x60\x80" + body,  # indefinite
        b"\x60" + bytes([len(body)]) + oid + AP_REQ + b"\x6e\x03\x30\x00",  # overrun
        b"\x60" + bytes([len(body)]) + oid + AP_REQ + b"\x6e\x02\x30\x01",  # inner overrun
        b"\x60" + bytes([len(body)]) + oid + AP_REQ + b"\x6f\x02\x30\x00",  # id/tag mismatch
    ):
        with pytest.raises(InvalidTokenError):
            check_initial_token(bad, AP_REQ)


@FUZZ
@given(st.binary(max_size=200), st.booleans())
def test_spnego_parse_raises_only_typed_errors(data: bytes, initial: bool) -> None:
    """negotiate's SPNEGO gate (pyspnego's pure-Python parser) before anything native."""
    from rpcsec.packages.negotiate import _SpnegoHooks

    with contextlib.suppress(InvalidTokenError):
        _SpnegoHooks.parse(data, initial=initial)


def test_wrap_token_ec_and_rrc_must_fit_the_body() -> None:
    shape = TokenShape(peer_is_acceptor=False, acceptor_subkey=True, checksum_size=12)
    body = bytes(16 + 16 + 12 + 5)  # confounder, header copy, checksum, 5 bytes of data
    sealed = b"\x05\x04\x06\xff"
    check_wrap_token(sealed + b"\x00\x00\x00\x00" + bytes(8) + body, shape)
    check_wrap_token(sealed + b"\x00\x05\x00\x1c" + bytes(8) + body, shape)  # Windows-like
    for ec_rrc in (b"\x00\x06\x00\x00", b"\xff\xff\x00\x00", b"\x00\x00\xff\xff"):
        with pytest.raises(MessageAlteredError):
            check_wrap_token(sealed + ec_rrc + bytes(8) + body, shape)
    signed = b"\x05\x04\x04\xff"
    check_wrap_token(signed + b"\x00\x0c\x00\x00" + bytes(8 + 12), shape, sealed=False)
    with pytest.raises(MessageAlteredError):  # EC must be the checksum length
        check_wrap_token(signed + b"\x00\x10\x00\x00" + bytes(8 + 16), shape, sealed=False)
