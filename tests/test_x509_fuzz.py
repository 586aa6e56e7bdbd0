"""x509 package: hostile input. Arbitrary, truncated and altered tokens at every leg raise only
``SecurityError`` subclasses and never complete a context; the DER and message parsers reject
everything they do not produce."""

from __future__ import annotations

import contextlib

import pytest
from helpers.pki import make_authority
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rpcsec.packages.x509._der import DerError, decode_oid, encode_oid
from rpcsec.packages.x509._extensions import (
    ProxyCertInfo,
    decode_groups,
    decode_proxy_cert_info,
    encode_groups,
    encode_proxy_cert_info,
)
from rpcsec.packages.x509._messages import ClientFinish, ProxyIssued, ServerGrant
from rpcsec.sspi import (
    ContextReq,
    ContextState,
    CredentialUse,
    ImpersonationLevel,
    InvalidTokenError,
    SecurityError,
    accept_security_context,
    initialize_security_context,
)
from rpcsec.sspi._negotiation import ContextGrant, ContextOffer

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DELEGATE = ContextReq.default() | ContextReq.DELEGATE


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    pki = make_authority(tmp_path_factory.mktemp("pki"))
    return (
        pki,
        pki.credentials("alice"),
        pki.credentials("documents", CredentialUse.INBOUND),
    )


def new_pair(world, delegation=False):
    pki, alice, documents = world
    if delegation:
        client = initialize_security_context(
            alice,
            pki.id("documents"),
            DELEGATE,
            impersonation=ImpersonationLevel.DELEGATE,
            options={"delegate_to": [pki.id("storage")]},
        )
    else:
        client = initialize_security_context(alice, pki.id("documents"))
    return client, accept_security_context(documents)


def advance(world, leg, delegation=False):
    """A fresh pair stepped honestly until leg ``leg`` was produced (not yet delivered)."""
    client, server = new_pair(world, delegation)
    token = client.step().token
    sender = client
    for _ in range(leg):
        receiver = server if sender is client else client
        token = receiver.step(token).token
        sender = receiver
    receiver = server if sender is client else client
    return client, server, receiver, token


def finish(client, server, receiver, token):
    """Deliver ``token`` (even empty) and keep the exchange going as honest peers would."""
    token = receiver.step(token).token
    receiver = client if receiver is server else server
    while token:
        result = receiver.step(token)
        token = result.token
        receiver = client if receiver is server else server
    return client.complete and server.complete


def mutate(token, data):
    """One alteration of ``token``; the draws do not depend on its (varying) length."""
    kind = data.draw(st.sampled_from(["truncate", "flip", "replace", "append", "splice"]))
    position = data.draw(st.integers(0, 1 << 16)) % len(token)
    if kind == "truncate":
        return token[:position]
    if kind == "flip":
        out = bytearray(token)
        out[position] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(out)
    if kind == "replace":
        return data.draw(st.binary(min_size=1, max_size=4096))
    if kind == "append":
        return token + data.draw(st.binary(min_size=1, max_size=64))
    return token[:position] + data.draw(st.binary(min_size=1, max_size=32)) + token[position + 1 :]


@pytest.mark.parametrize(("leg", "delegation"), [(0, 0), (1, 0), (2, 0), (3, 0), (4, 1)])
@FUZZ
@given(data=st.data())
def test_altered_leg_fails_with_a_security_error(world, leg, delegation, data):
    client, server, receiver, token = advance(world, leg, bool(delegation))
    altered = mutate(token, data)
    assume(altered != token)
    with pytest.raises(SecurityError):
        finish(client, server, receiver, altered)
    assert ContextState.FAILED in (client.state, server.state)
    assert not (client.complete and server.complete)


@pytest.mark.parametrize("leg", range(5))
def test_every_truncation_point_of_every_leg(world, leg):
    _, _, _, token = advance(world, leg, delegation=leg == 4)
    step = max(1, len(token) // 40)
    for cut in range(0, len(token), step):
        client, server, receiver, _ = advance(world, leg, delegation=leg == 4)
        with pytest.raises(SecurityError):
            finish(client, server, receiver, token[:cut])


@FUZZ
@given(garbage=st.binary(max_size=4096))
def test_arbitrary_bytes_into_a_new_server(world, garbage):
    _, documents = world[1], world[2]
    server = accept_security_context(documents)
    with pytest.raises(SecurityError):
        server.step(garbage)
    assert server.state is ContextState.FAILED


@FUZZ
@given(garbage=st.binary(max_size=4096), leg=st.sampled_from([1, 3]))
def test_arbitrary_bytes_into_the_client(world, garbage, leg):
    client, _server, _, _ = advance(world, leg)
    with pytest.raises(SecurityError):
        client.step(garbage)
    assert client.state is ContextState.FAILED


@FUZZ
@given(garbage=st.binary(max_size=4096), leg=st.sampled_from([2, 4]))
def test_arbitrary_bytes_into_the_server_mid_handshake(world, garbage, leg):
    _client, server, _, _ = advance(world, leg, delegation=leg == 4)
    with pytest.raises(SecurityError):
        server.step(garbage)
    assert server.state is ContextState.FAILED


def test_a_leg_delivered_twice_fails(world):
    _, server, _, hello = advance(world, 0)
    server.step(hello)
    with pytest.raises(SecurityError):
        server.step(hello)
    client, _, _, flight = advance(world, 1)
    client.step(flight)
    with pytest.raises(SecurityError):
        client.step(flight)


def test_tokens_of_another_handshake_fail(world):
    _, one_server, _, first = advance(world, 0)
    two_client, _, _, _ = advance(world, 0)
    second_leg = one_server.step(first).token
    with pytest.raises(SecurityError):
        two_client.step(second_leg)  # a server flight for another ClientHello


# -- parsers -------------------------------------------------------------------------------------


@given(st.binary(max_size=512))
def test_der_parsers_reject_garbage_with_typed_errors(data):
    for parse in (decode_groups, decode_proxy_cert_info):
        with contextlib.suppress(DerError):
            parse(data)
    with contextlib.suppress(DerError):
        decode_oid(data)


_segment = st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True)
_ids = st.builds(lambda a, b: f"spiffe://rpcsec.test/{a}/{b}", _segment, _segment)


@given(
    path_len=st.one_of(st.none(), st.integers(0, 2**40)),
    delegate=_ids,
    targets=st.frozensets(_ids, max_size=8),
)
def test_proxy_cert_info_round_trips(path_len, delegate, targets):
    info = ProxyCertInfo(path_len, delegate, targets)
    encoded = encode_proxy_cert_info(info)
    assert decode_proxy_cert_info(encoded) == info
    for cut in range(len(encoded)):
        with pytest.raises(DerError):
            decode_proxy_cert_info(encoded[:cut])
    with pytest.raises(DerError):
        decode_proxy_cert_info(encoded + b"\x00")


@given(st.frozensets(st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=20)))
def test_groups_round_trip(groups):
    assume(len(groups) <= 64)
    assert decode_groups(encode_groups(groups)) == groups


@given(st.lists(st.integers(0, 2**70), min_size=1, max_size=8), st.integers(0, 2), st.data())
def test_oid_round_trips(tail, first, data):
    second = data.draw(st.integers(0, 39 if first < 2 else 2**20))
    dotted = ".".join(str(arc) for arc in [first, second, *tail])
    encoded = encode_oid(dotted)
    content = encoded[2:] if encoded[1] < 0x80 else encoded[2 + (encoded[1] & 0x7F) :]
    if len(content) > 64:  # the decoder's bound on what a peer may make it parse
        with pytest.raises(DerError):
            decode_oid(content)
    else:
        assert decode_oid(content) == dotted


def test_der_rules_are_strict():
    good = encode_groups(["staff"])
    with pytest.raises(DerError):  # non-minimal length
        decode_groups(b"\x30\x81" + bytes([len(good) - 2]) + good[2:])
    with pytest.raises(DerError):  # indefinite length
        decode_groups(b"\x30\x80" + good[2:] + b"\x00\x00")
    with pytest.raises(DerError):  # another type inside
        decode_groups(b"\x30\x03\x04\x01a")
    with pytest.raises(DerError):  # invalid UTF-8
        decode_groups(b"\x30\x03\x0c\x01\xff")
    with pytest.raises(DerError):
        decode_proxy_cert_info(b"\x30\x03\x02\x01\x01")  # no policy
    foreign = encode_proxy_cert_info(ProxyCertInfo(1, "spiffe://a/b", frozenset())).replace(
        encode_oid("2.25.60419790568215671982316443780111443101"),
        encode_oid("1.3.6.1.5.5.7.21.1"),  # id-ppl-inheritAll: not ours, refused
    )
    with pytest.raises(DerError):
        decode_proxy_cert_info(foreign)
    assert isinstance(DerError("x"), InvalidTokenError)


@given(st.binary(max_size=1024))
def test_message_parsers_reject_garbage_with_typed_errors(data):
    for parse in (ClientFinish.decode, ServerGrant.decode, ProxyIssued.decode):
        with contextlib.suppress(InvalidTokenError):
            parse(data)


def test_messages_round_trip_and_reject_trailing_bytes():
    offer = ContextOffer(ContextReq.default(), ImpersonationLevel.DELEGATE)
    finish = ClientFinish(offer)
    assert ClientFinish.decode(finish.encode()) == finish
    grant = ServerGrant(
        ContextGrant(ContextReq.default(), ImpersonationLevel.IMPERSONATE), b"k" * 32
    )
    assert ServerGrant.decode(grant.encode()) == grant
    for message, parse in ((finish, ClientFinish.decode), (grant, ServerGrant.decode)):
        encoded = message.encode()
        with pytest.raises(InvalidTokenError):
            parse(encoded + b"\x00")
        for cut in range(len(encoded)):
            with pytest.raises(InvalidTokenError):
                parse(encoded[:cut])
