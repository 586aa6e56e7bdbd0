"""Large messages sealed and opened in place (rpcsec.sspi._fresh_bytes) and the framings built on
it: the core's ``AeadProtector`` tokens and the binding's response tokens (``ResponseKeys``).

What must hold: the in-place result is byte for byte what the copying construction gives (so
peers on either side of the change interoperate), it is an ordinary immutable ``bytes``, no
memory is kept or leaked per message, and every single-byte change of a large token is refused
with a typed error, never data.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tracemalloc

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV
from helpers.pair import handshake
from helpers.pki import make_authority
from hypothesis import given
from hypothesis import strategies as st

from rpcsec.grpc._responses import ResponseKeys
from rpcsec.grpc._wire import REQUEST, RESPONSE, SEALED_KIND, SIGNED_KIND, position
from rpcsec.sspi import (
    AeadProtector,
    ContextReq,
    CredentialUse,
    InvalidTokenError,
    MessageAlteredError,
    SecurityError,
    _fresh_bytes,
    accept_security_context,
    initialize_security_context,
)
from rpcsec.sspi._fresh_bytes import LARGE, TAG_SIZE

KEY = bytes(range(32))
NONCE = bytes(range(12))
AEADS = (AESGCM(KEY), AESGCMSIV(KEY))
# Sizes either side of the threshold: below it the plain calls run, from it the in-place ones.
sizes = st.sampled_from([0, 1, 2, LARGE - 1, LARGE, LARGE + 1, 2 * LARGE + 7])
headers = st.binary(min_size=0, max_size=12)
aads = st.binary(min_size=0, max_size=200)


def _payload(size: int, salt: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 2))[salt : salt + size]


def test_in_place_on_cpython() -> None:
    # The suite runs on CPython: the fast path must be the one under test, not the fallback.
    assert sys.implementation.name != "cpython" or _fresh_bytes.in_place
    # Its prototypes are its own: the process-wide ctypes.pythonapi entries keep their defaults.
    import ctypes

    assert ctypes.pythonapi.PyBytes_FromStringAndSize.restype is ctypes.c_int


@given(size=sizes, header=headers, aad=aads, salt=st.integers(0, 255), which=st.integers(0, 1))
def test_sealed_is_the_copying_construction_byte_for_byte(size, header, aad, salt, which) -> None:
    aead = AEADS[which]
    payload = _payload(size, salt)
    token = _fresh_bytes.sealed(aead, NONCE, header, payload, aad)
    assert type(token) is bytes
    assert token == header + aead.encrypt(NONCE, payload, aad)
    body = token[len(header) :]
    for given_body in (body, memoryview(token)[len(header) :]):
        opened = _fresh_bytes.opened(aead, NONCE, given_body, aad)
        assert type(opened) is bytes
        assert opened == payload


def test_results_are_ordinary_immutable_bytes() -> None:
    payload = os.urandom(LARGE + 3)
    token = _fresh_bytes.sealed(AEADS[0], NONCE, b"\x07", payload, b"aad")
    opened = _fresh_bytes.opened(AEADS[0], NONCE, memoryview(token)[1:], b"aad")
    # Only the name and getrefcount's argument hold each: the C call's reference was not kept.
    assert sys.getrefcount(token) <= 2
    assert sys.getrefcount(opened) <= 2
    for value in (token, opened):
        assert hash(value) == hash(bytes(bytearray(value)))  # hashes like any equal bytes
        with pytest.raises(TypeError):
            value[0] = 0  # type: ignore[index]
    assert {token: 1}[bytes(bytearray(token))] == 1


def test_no_memory_kept_per_message() -> None:
    payload = os.urandom(1 << 20)
    aead = AEADS[0]
    token = _fresh_bytes.sealed(aead, NONCE, b"h", payload, b"")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(50):
            _fresh_bytes.sealed(aead, NONCE, b"h", payload, b"")
            _fresh_bytes.opened(aead, NONCE, memoryview(token)[1:], b"")
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # 100 MiB went through; a reference kept per message would keep all of it.
    assert after - before < (1 << 20)


def test_fallback_gives_the_same_results(monkeypatch) -> None:
    payload = os.urandom(LARGE + 100)
    fast = _fresh_bytes.sealed(AEADS[0], NONCE, b"hd", payload, b"a")
    monkeypatch.setattr(_fresh_bytes, "_BOUND", None)
    assert _fresh_bytes.sealed(AEADS[0], NONCE, b"hd", payload, b"a") == fast
    assert _fresh_bytes.opened(AEADS[0], NONCE, fast[2:], b"a") == payload


def test_every_single_byte_change_of_a_large_token_is_refused() -> None:
    payload = os.urandom(LARGE)
    token = _fresh_bytes.sealed(AEADS[0], NONCE, b"", payload, b"aad")
    damaged = bytearray(token)
    # Every byte of the tag and the edges of the ciphertext, and a stride through the middle
    # (hypothesis below picks arbitrary positions and values).
    positions = [*range(64), *range(len(token) - 80, len(token)), *range(64, len(token), 997)]
    for index in positions:
        damaged[index] ^= 0x80
        with pytest.raises(InvalidTag):
            _fresh_bytes.opened(AEADS[0], NONCE, bytes(damaged), b"aad")
        damaged[index] ^= 0x80
    for cut in (token[:-1], token[1:], token + b"\x00"):
        with pytest.raises(InvalidTag):
            _fresh_bytes.opened(AEADS[0], NONCE, cut, b"aad")
    with pytest.raises(InvalidTag):
        _fresh_bytes.opened(AEADS[0], NONCE, token, b"aae")


# -- the core's tokens: AeadProtector (both ends of a context) --------------------------------


def _protectors() -> tuple[AeadProtector, AeadProtector]:
    a, b = bytes([1]) * 32, bytes([2]) * 32
    return AeadProtector(a, b), AeadProtector(b, a)


@given(size=sizes, aad=aads, seq=st.integers(0, 2**24 + 5), salt=st.integers(0, 255))
def test_protector_seal_token_round_trip_and_layout(size, aad, seq, salt) -> None:
    sender, receiver = _protectors()
    payload = _payload(size, salt)
    header = b"\x02" + seq.to_bytes(8, "big")
    token = sender.seal_token(seq, header, aad, payload)
    assert token == header + sender.seal(seq, header + aad, payload)  # unchanged wire format
    assert receiver.unseal(seq, header + aad, memoryview(token)[len(header) :]) == payload


@given(index=st.integers(0, LARGE + TAG_SIZE - 1), value=st.integers(1, 255))
def test_protector_refuses_any_single_byte_change(index, value) -> None:
    sender, receiver = _protectors()
    payload = bytes(LARGE)
    sealed = bytearray(sender.seal_token(5, b"", b"aad", payload))
    sealed[index] ^= value
    with pytest.raises(MessageAlteredError):
        receiver.unseal(5, b"aad", memoryview(bytes(sealed)))
    with pytest.raises(MessageAlteredError):  # the right bytes under another number
        receiver.unseal(6, b"aad", sender.seal_token(5, b"", b"aad", payload))


# -- the core's whole tokens: SecurityContext.wrap / unwrap on a real x509 context pair ------


@pytest.fixture(scope="module")
def x509_pair(tmp_path_factory):
    pki = make_authority(tmp_path_factory.mktemp("pki"))
    return handshake(
        initialize_security_context(
            pki.credentials("alice"),
            pki.id("documents"),
            ContextReq.default() | ContextReq.CONFIDENTIALITY,
        ),
        accept_security_context(pki.credentials("documents", CredentialUse.INBOUND)),
    )


@pytest.mark.parametrize("encrypt", [True, False], ids=["privacy", "integrity"])
@given(data=st.data())
def test_large_context_tokens_refuse_any_single_byte_change(x509_pair, encrypt, data) -> None:
    payload = (bytes(range(256)) * (LARGE // 256 + 1))[: LARGE + data.draw(st.integers(0, 99))]
    token = x509_pair.client.wrap(payload, aad=b"call", encrypt=encrypt)
    assert x509_pair.server.unwrap(token, aad=b"call", encrypted=encrypt, record=False) == payload
    index = data.draw(st.integers(0, len(token) - 1), label="index")
    damaged = bytearray(token)
    damaged[index] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(SecurityError):
        x509_pair.server.unwrap(bytes(damaged), aad=b"call", encrypted=encrypt, record=False)
    with pytest.raises(SecurityError):  # the intact token under other associated data
        x509_pair.server.unwrap(token, aad=b"call2", encrypted=encrypt, record=False)


# -- the binding's response tokens (ResponseKeys): large PRIVACY and INTEGRITY ----------------

CALL = (7).to_bytes(8, "big")
_SEALED, _SIGNED = bytes((SEALED_KIND,)), bytes((SIGNED_KIND,))
AAD = b"handle|method|" + CALL


def _reference(keys: ResponseKeys, pos: bytes, payload: bytes, encrypt: bool) -> bytes:
    """The response token as the copying code built it (so old and new peers interoperate)."""
    aead, nonce = keys.key(CALL, pos[1:5])
    aad = AAD + pos
    if encrypt:
        return _SEALED + aead.encrypt(nonce, payload, _SEALED + aad)
    return _SIGNED + aead.encrypt(nonce, b"", _SIGNED + aad + payload) + payload


@pytest.mark.parametrize("encrypt", [True, False], ids=["privacy", "integrity"])
@given(size=sizes, index=st.integers(0, 40), salt=st.integers(0, 255))
def test_response_tokens_round_trip_with_the_same_layout(encrypt, size, index, salt) -> None:
    keys = ResponseKeys(bytes([9]) * 32)
    pos = position(RESPONSE, index)
    payload = _payload(size, salt)
    token = keys.seal(AAD + pos, CALL, pos, payload, encrypt)
    assert token[:1] == (_SEALED if encrypt else _SIGNED)
    assert token == _reference(keys, pos, payload, encrypt)
    opened = keys.open(AAD + pos, CALL, pos, token, encrypt)
    assert type(opened) is bytes and opened == payload


@pytest.mark.parametrize("encrypt", [True, False], ids=["privacy", "integrity"])
@given(data=st.data())
def test_large_response_tokens_refuse_any_single_byte_change(encrypt, data) -> None:
    keys = ResponseKeys(bytes([9]) * 32)
    pos = position(RESPONSE, 3)
    payload = bytes(range(256)) * (LARGE // 256)
    token = keys.seal(AAD + pos, CALL, pos, payload, encrypt)
    index = data.draw(st.integers(0, len(token) - 1), label="index")
    value = data.draw(st.integers(1, 255), label="xor")
    damaged = bytearray(token)
    damaged[index] ^= value
    with pytest.raises((MessageAlteredError, InvalidTokenError)):
        keys.open(AAD + pos, CALL, pos, bytes(damaged), encrypt)


@pytest.mark.parametrize("encrypt", [True, False], ids=["privacy", "integrity"])
def test_large_response_tokens_are_bound_to_call_position_and_level(encrypt) -> None:
    keys = ResponseKeys(bytes([9]) * 32)
    pos = position(RESPONSE, 1)
    payload = os.urandom(LARGE + 1)
    token = keys.seal(AAD + pos, CALL, pos, payload, encrypt)
    other_pos = position(RESPONSE, 2)
    other_call = (8).to_bytes(8, "big")
    with pytest.raises(MessageAlteredError):
        keys.open(AAD + other_pos, CALL, other_pos, token, encrypt)
    with pytest.raises(MessageAlteredError):
        keys.open(b"handle|method|" + other_call + pos, other_call, pos, token, encrypt)
    with pytest.raises(MessageAlteredError):  # a request's position, same index
        keys.open(AAD + position(REQUEST, 1), CALL, position(REQUEST, 1), token, encrypt)
    with pytest.raises(MessageAlteredError):  # the other protection level
        keys.open(AAD + pos, CALL, pos, token, not encrypt)
    for cut in (token[:-1], token[:1] + token[2:], token + b"\x00"):
        with pytest.raises((MessageAlteredError, InvalidTokenError)):
            keys.open(AAD + pos, CALL, pos, cut, encrypt)


_HOSTILE_SIZES = """
import os, sys
from rpcsec.grpc._responses import ResponseKeys
from rpcsec.grpc._wire import RESPONSE, position
from rpcsec.sspi import AeadProtector, SecurityError
from rpcsec.sspi._fresh_bytes import LARGE, TAG_SIZE

keys = ResponseKeys(bytes(32))
receiver = AeadProtector(bytes([1]) * 32, bytes([2]) * 32)
pos = position(RESPONSE, 0)
edges = [*range(0, 40), *range(LARGE - 2, LARGE + 2 * TAG_SIZE + 3), 4 * LARGE + 1]
refused = 0
for size in edges:
    for kind in (b"W", b"S", b"M", b"\\x00"):
        token = kind + os.urandom(size)
        for encrypt in (True, False):
            try:
                keys.open(b"aad" + pos, bytes(8), pos, token, encrypt)
            except SecurityError:
                refused += 1
    try:
        receiver.unseal(0, b"aad", memoryview(os.urandom(size)))
    except SecurityError:
        refused += 1
print(refused, len(edges) * 9)
"""


def test_hostile_token_sizes_are_refused_without_harm_in_a_subprocess() -> None:
    # The in-place path writes raw memory: every size a peer can send, at and around the
    # thresholds, must end in a typed refusal, never a crash (hence a process of its own).
    root = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", _HOSTILE_SIZES],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    refused, attempts = map(int, done.stdout.split())
    assert refused == attempts
