"""Kerberos per-message protection through the core's message API: AES-256-GCM / GMAC keyed
from the GSS session key (MS-SMB2 §3.1.4.2 style), both directions bound to the context."""

from __future__ import annotations

import threading
import time

import pytest
from helpers.pair import handshake

from rpcsec.sspi import (
    QOP,
    BufferType,
    ContextExpiredError,
    ContextReq,
    InvalidTokenError,
    MessageAlteredError,
    OutOfSequenceError,
    QopNotSupportedError,
    ReplayError,
    SecBuffer,
    SecurityError,
    accept_security_context,
    initialize_security_context,
)

PRIVATE = ContextReq.default() | ContextReq.CONFIDENTIALITY


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _pair(realm, req=PRIVATE, *, clock=None, service="storage"):
    extra = {"clock": clock} if clock else {}
    client = initialize_security_context(
        realm.client_credentials("alice"), realm.hostbased(service), req, **extra
    )
    server = accept_security_context(realm.server_credentials(service), **extra)
    handshake(client, server)
    return client, server


@pytest.fixture(scope="module")
def pair(kerberos_realm):
    return _pair(kerberos_realm)


def _flip(token: bytes, index: int) -> bytes:
    return token[:index] + bytes([token[index] ^ 0x01]) + token[index + 1 :]


def test_sign_and_verify_both_directions(pair) -> None:
    client, server = pair
    token = client.sign(b"to the server", aad=b"/svc/Method")
    server.verify(b"to the server", token, aad=b"/svc/Method")
    token = server.sign(b"to the client")
    client.verify(b"to the client", token)


def test_wrap_and_unwrap_both_directions(pair) -> None:
    client, server = pair
    for size in (0, 1, 100, 4096):
        message = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        sealed = client.wrap(message, aad=b"call-1")
        assert len(message) < 16 or message not in sealed
        assert len(sealed) == 9 + len(message) + 16  # core header + AES-256-GCM tag
        assert server.unwrap(sealed, aad=b"call-1") == message
        assert client.unwrap(server.wrap(message)) == message


def test_integrity_only_wrap(pair) -> None:
    client, server = pair
    token = client.wrap(b"readable", encrypt=False)
    assert b"readable" in token
    with pytest.raises(MessageAlteredError):
        server.unwrap(token.replace(b"readable", b"READABLE"))
    data, info = server.unwrap_message(token)
    assert data == b"readable" and info.qop == QOP.WRAP_NO_ENCRYPT


def test_every_byte_of_a_token_is_protected(pair) -> None:
    client, server = pair
    sealed = client.wrap(b"payload", aad=b"aad")
    signature = client.sign(b"payload", aad=b"aad")
    for index in range(len(sealed)):
        with pytest.raises((MessageAlteredError, InvalidTokenError, ReplayError)):
            server.unwrap(_flip(sealed, index), aad=b"aad")
    for index in range(len(signature)):
        with pytest.raises((MessageAlteredError, InvalidTokenError, ReplayError)):
            server.verify(b"payload", _flip(signature, index), aad=b"aad")
    # Neither was consumed by the failures: the genuine tokens still verify once.
    assert server.unwrap(sealed, aad=b"aad") == b"payload"
    server.verify(b"payload", signature, aad=b"aad")


def test_aad_and_data_are_bound(pair) -> None:
    client, server = pair
    sealed = client.wrap(b"payload", aad=b"/svc/A")
    with pytest.raises(MessageAlteredError):
        server.unwrap(sealed, aad=b"/svc/B")
    signature = client.sign(b"payload", aad=b"/svc/A")
    with pytest.raises(MessageAlteredError):
        server.verify(b"payload!", signature, aad=b"/svc/A")
    with pytest.raises(MessageAlteredError):
        server.verify(b"payload", signature, aad=b"/svc/B")


def test_a_token_cannot_be_reflected_to_its_sender(pair) -> None:
    client, _server = pair
    with pytest.raises(MessageAlteredError):
        client.unwrap(client.wrap(b"echo"))
    with pytest.raises(MessageAlteredError):
        client.verify(b"echo", client.sign(b"echo"))


def test_replay_is_rejected(pair) -> None:
    client, server = pair
    sealed = client.wrap(b"once")
    assert server.unwrap(sealed) == b"once"
    with pytest.raises(ReplayError):
        server.unwrap(sealed)
    signature = client.sign(b"once")
    server.verify(b"once", signature)
    with pytest.raises(ReplayError):
        server.verify(b"once", signature)


def test_out_of_order_inside_the_window_is_accepted(kerberos_realm) -> None:
    # GSS replay/sequence flags are off; only the core's window decides.
    client, server = _pair(kerberos_realm)
    tokens = [client.wrap(f"call {i}".encode()) for i in range(8)]
    for i in (5, 0, 7, 2, 1, 6, 3, 4):
        assert server.unwrap(tokens[i]) == f"call {i}".encode()
    with pytest.raises(ReplayError):
        server.unwrap(tokens[3])


def test_sequence_detect_rejects_reordering(kerberos_realm) -> None:
    req = ContextReq.MUTUAL_AUTH | ContextReq.SEQUENCE_DETECT | ContextReq.CONFIDENTIALITY
    client, server = _pair(kerberos_realm, req)
    first, second = client.wrap(b"1"), client.wrap(b"2")
    with pytest.raises(OutOfSequenceError):
        server.unwrap(second)
    assert server.unwrap(first) == b"1"
    assert server.unwrap(second) == b"2"


def test_privacy_needs_confidentiality(kerberos_realm) -> None:
    client, server = _pair(kerberos_realm, ContextReq.default())
    with pytest.raises(QopNotSupportedError):
        client.wrap(b"secret")
    server.verify(b"signed", client.sign(b"signed"))


def test_buffer_api_signature_and_encryption(pair) -> None:
    client, server = pair
    buffers = [SecBuffer(BufferType.DATA, b"message"), SecBuffer(BufferType.EMPTY, b"")]
    seq = client.make_signature(buffers)
    assert buffers[1].type is BufferType.TOKEN
    info = server.verify_signature(buffers)
    assert info.seq == seq
    header = SecBuffer(BufferType.DATA | BufferType.READONLY, b"header-in-clear")
    body = SecBuffer(BufferType.DATA, b"body to hide")
    buffers = [header, body, SecBuffer(BufferType.EMPTY, b"")]
    client.encrypt_message(buffers)
    assert buffers[0].data == b"header-in-clear" and buffers[1].data != b"body to hide"
    server.decrypt_message(buffers)
    assert buffers[1].data == b"body to hide"


def test_stream_records(kerberos_realm) -> None:
    req = PRIVATE | ContextReq.STREAM
    client, server = _pair(kerberos_realm, req)
    buffers = [
        SecBuffer(BufferType.STREAM_HEADER, b""),
        SecBuffer(BufferType.DATA, b"record one"),
        SecBuffer(BufferType.STREAM_TRAILER, b""),
    ]
    client.encrypt_message(buffers)
    wire = b"".join(bytes(b.data) for b in buffers)
    received = [
        SecBuffer(BufferType.DATA, wire[:-5]),
        SecBuffer(BufferType.EMPTY, b""),
        SecBuffer(BufferType.EMPTY, b""),
        SecBuffer(BufferType.EMPTY, b""),
    ]
    with pytest.raises(SecurityError):  # IncompleteMessageError: 5 bytes missing
        server.decrypt_message(received)
    received = [SecBuffer(BufferType.DATA, wire)] + [
        SecBuffer(BufferType.EMPTY, b"") for _ in range(3)
    ]
    server.decrypt_message(received)
    assert received[1].data == b"record one"


def test_datagram_contexts_carry_the_callers_sequence(kerberos_realm) -> None:
    req = PRIVATE | ContextReq.DATAGRAM
    client, server = _pair(kerberos_realm, req)
    sealed = client.wrap(b"dgram", seq=41)
    data, info = server.unwrap_message(sealed)
    assert data == b"dgram" and info.seq == 41


def test_context_expires_with_the_ticket(kerberos_realm) -> None:
    clock = Clock()
    client, server = _pair(kerberos_realm, clock=clock)
    sealed = client.wrap(b"in time")
    assert server.unwrap(sealed) == b"in time"
    assert client.expires_at is not None
    clock.now = client.expires_at + 1
    with pytest.raises(ContextExpiredError):
        client.wrap(b"too late")
    clock.now = server.expires_at + 1
    with pytest.raises(ContextExpiredError):
        server.unwrap(sealed)


def test_concurrent_use_of_one_context(kerberos_realm) -> None:
    client, server = _pair(kerberos_realm)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(200):
                message = f"{n}:{i}".encode()
                assert server.unwrap(client.wrap(message)) == message
                server.verify(message, client.sign(message))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


def test_deleted_context_refuses_messages(kerberos_realm) -> None:
    client, server = _pair(kerberos_realm)
    sealed = client.wrap(b"x")
    server.delete()
    with pytest.raises(ContextExpiredError):
        server.unwrap(sealed)


def test_per_call_costs_are_small(pair) -> None:
    """Measured cost of 100-byte messages (printed with -s; asserted loosely: shared CPU)."""
    client, server = pair
    message = b"m" * 100
    rounds = 2000
    start = time.perf_counter()
    for _ in range(rounds):
        server.verify(message, client.sign(message, aad=b"/svc/M"), aad=b"/svc/M")
    sign_verify = (time.perf_counter() - start) / rounds
    start = time.perf_counter()
    for _ in range(rounds):
        server.unwrap(client.wrap(message, aad=b"/svc/M"), aad=b"/svc/M")
    wrap_unwrap = (time.perf_counter() - start) / rounds
    print(
        f"\nkerberos 100 B: sign+verify {sign_verify * 1e6:.1f} us, "
        f"wrap+unwrap {wrap_unwrap * 1e6:.1f} us"
    )
    assert sign_verify < 0.005 and wrap_unwrap < 0.005
