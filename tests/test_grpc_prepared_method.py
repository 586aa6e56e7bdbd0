"""The client's prepared response open (``ResponseKeys.opener``, ``PreparedMethod.open_ok``).

The unary fast path trusts a response that opens over ``OUTCOME_OK`` and sends everything else
to the full check. So the one-frame opener must open exactly what ``ResponseKeys.open`` opens
(same AAD, nonce and level) and say None -- never raise, never return bytes -- for every token
``open`` refuses: hypothesis over genuine, damaged and arbitrary tokens.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpcsec.grpc._calls import FIRST_RESPONSE
from rpcsec.grpc._responses import ResponseKeys
from rpcsec.grpc._wire import OUTCOME_OK, message_prefix, method_part
from rpcsec.sspi import SecurityError

KEYS = ResponseKeys(bytes(range(32)))
PREFIX = message_prefix(b"\x07" * 16, method_part("/rpcsec.test.v1.Echo/Say"))
_SEQS = st.integers(0, (1 << 64) - 1).map(lambda n: n.to_bytes(8, "big"))
_SUFFIXES = st.sampled_from([b"", OUTCOME_OK])


def _sealed(call_seq: bytes, payload: bytes, encrypt: bool, suffix: bytes) -> bytes:
    aad = PREFIX + call_seq + FIRST_RESPONSE + suffix
    return KEYS.seal(aad, call_seq, FIRST_RESPONSE, payload, encrypt)


def _open(call_seq: bytes, token: bytes, encrypt: bool, suffix: bytes) -> bytes | None:
    try:
        aad = PREFIX + call_seq + FIRST_RESPONSE + suffix
        return KEYS.open(aad, call_seq, FIRST_RESPONSE, token, encrypt)
    except SecurityError:
        return None


@settings(max_examples=150, deadline=None)
@given(call_seq=_SEQS, payload=st.binary(max_size=300), encrypt=st.booleans(), suffix=_SUFFIXES)
def test_it_opens_what_the_server_sealed_and_nothing_of_another_shape(
    call_seq, payload, encrypt, suffix
) -> None:
    token = _sealed(call_seq, payload, encrypt, suffix)
    assert KEYS.opener(PREFIX, FIRST_RESPONSE, suffix, encrypt)(call_seq, token) == payload
    other_suffix = b"" if suffix else OUTCOME_OK
    # Folded or not is decided by the token: it opens one way, never both.
    assert KEYS.opener(PREFIX, FIRST_RESPONSE, other_suffix, encrypt)(call_seq, token) is None
    assert KEYS.opener(PREFIX, FIRST_RESPONSE, suffix, not encrypt)(call_seq, token) is None
    another_call = (int.from_bytes(call_seq, "big") ^ 1).to_bytes(8, "big")
    assert KEYS.opener(PREFIX, FIRST_RESPONSE, suffix, encrypt)(another_call, token) is None


@settings(max_examples=300, deadline=None)
@given(
    call_seq=_SEQS,
    payload=st.binary(max_size=64),
    encrypt=st.booleans(),
    suffix=_SUFFIXES,
    damage=st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 200), st.integers(1, 255)),
        st.tuples(st.just("cut"), st.integers(0, 200), st.just(0)),
        st.tuples(st.just("extend"), st.integers(1, 8), st.just(0)),
        st.tuples(st.just("kind"), st.integers(0, 255), st.just(0)),
    ),
    junk=st.binary(max_size=60),
)
def test_it_says_none_exactly_when_open_refuses(
    call_seq, payload, encrypt, suffix, damage, junk
) -> None:
    token = bytearray(_sealed(call_seq, payload, encrypt, suffix))
    how, where, value = damage
    if how == "flip":
        token[where % len(token)] ^= value
    elif how == "cut":
        del token[where % len(token) :]
    elif how == "extend":
        token += bytes(where)
    else:
        token[0] = where
    opener = KEYS.opener(PREFIX, FIRST_RESPONSE, suffix, encrypt)
    for candidate in (bytes(token), junk):
        assert opener(call_seq, candidate) == _open(call_seq, candidate, encrypt, suffix)


def test_a_new_epoch_is_derived_as_open_derives_it() -> None:
    keys = ResponseKeys(bytes(32))
    opener = keys.opener(PREFIX, FIRST_RESPONSE, OUTCOME_OK, True)
    for seq in (0, (1 << 24) - 1, 1 << 24, 5 << 40, (1 << 64) - 1):
        call_seq = seq.to_bytes(8, "big")
        aad = PREFIX + call_seq + FIRST_RESPONSE + OUTCOME_OK
        token = ResponseKeys(bytes(32)).seal(aad, call_seq, FIRST_RESPONSE, b"epoch", True)
        assert opener(call_seq, token) == b"epoch"


@pytest.mark.parametrize("encrypt", [True, False])
def test_an_empty_or_short_response_is_not_opened(encrypt) -> None:
    opener = KEYS.opener(PREFIX, FIRST_RESPONSE, OUTCOME_OK, encrypt)
    for token in (b"", b"\x57", b"\x53" + bytes(15), b"\x4d" + bytes(16)):
        assert opener(bytes(8), token) is None


def _binding(setup):
    from helpers.pair import handshake

    from rpcsec.grpc._binding import ClientBound
    from rpcsec.grpc._recovery import RebindBackoff
    from rpcsec.sspi import ClientContext, ProtectionLevel, ServerContext

    client = ClientContext(setup.client(), setup.target(), setup.requirements)
    server = ServerContext(setup.server())
    handshake(client, server)
    backoff = RebindBackoff()
    handle = b"h" * 16  # process-local: the context itself opens responses
    bound = ClientBound(client, handle, ProtectionLevel.INTEGRITY, 1, backoff.succeeded, backoff)
    return bound, server, handle


def test_a_prepared_method_is_made_once_and_holds_no_reference_to_its_binding(
    x509_setup,
) -> None:
    # The binding caches its prepared methods; a reference back would make a cycle and make
    # every binding look "in use" to the cloaking release (it reads reference counts).
    import gc
    import sys

    bound, _, _ = _binding(x509_setup)
    before = sys.getrefcount(bound)
    prepared = bound.prepared("/rpcsec.test.v1.Echo/Say")
    assert prepared is not None and prepared is bound.prepared("/rpcsec.test.v1.Echo/Say")
    assert sys.getrefcount(bound) == before
    assert not any(referent is bound for referent in gc.get_referents(prepared))
    bound.context.delete()
    assert bound.prepared("/rpcsec.test.v1.Echo/Other") is None  # the full path says why


def test_a_process_local_binding_opens_only_the_folded_response_of_its_call(x509_setup) -> None:
    from rpcsec.grpc._calls import CallProtection

    bound, server, handle = _binding(x509_setup)
    prepared = bound.prepared("/rpcsec.test.v1.Echo/Say")
    assert prepared is not None
    token = prepared.wrap(b"request")
    call_seq = token[1:9]
    assert server.unwrap(token, aad=prepared.keys.open_aad, encrypted=False) == b"request"
    sealer = CallProtection(server, handle)
    prefix = prepared.keys.prefix
    folded = sealer.seal(prefix, call_seq, FIRST_RESPONSE, b"answer", False, OUTCOME_OK)
    plain = sealer.seal(prefix, call_seq, FIRST_RESPONSE, b"answer", False)
    assert prepared.open_ok(call_seq, folded) == b"answer"
    assert prepared.open_ok(call_seq, plain) is None  # not folded: the full check decides
    assert (
        prepared.open_ok((int.from_bytes(call_seq, "big") + 1).to_bytes(8, "big"), folded) is None
    )
    damaged = bytearray(folded)
    damaged[-1] ^= 1
    assert prepared.open_ok(call_seq, bytes(damaged)) is None
