"""The core context API driven through a real package (ntlm): state machine, message calls,
buffers, stream and datagram contexts, expiry, export/import, concurrency."""

from __future__ import annotations

import pathlib
import threading

import pytest
from helpers.pair import handshake

from rpcsec.sspi import (
    QOP,
    BufferType,
    ContextAttribute,
    ContextExpiredError,
    ContextReq,
    ContextState,
    CredentialUse,
    ImpersonationLevel,
    IncompleteMessageError,
    InsufficientAttributesError,
    InvalidStateError,
    InvalidTokenError,
    MessageAlteredError,
    OutOfSequenceError,
    QopNotSupportedError,
    ReplayError,
    SecBuffer,
    SecStatus,
    SecurityError,
    accept_security_context,
    acquire_credentials_handle,
    import_security_context,
    initialize_security_context,
)

PRIVATE = ContextReq.REPLAY_DETECT | ContextReq.CONFIDENTIALITY | ContextReq.CONNECTION


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def creds(ntlm_user_file: pathlib.Path):
    client = acquire_credentials_handle(
        "ntlm", "RPCSEC\\alice", CredentialUse.OUTBOUND, password="Alice-Pa55!"
    )
    server = acquire_credentials_handle(
        "ntlm", None, CredentialUse.INBOUND, user_file=str(ntlm_user_file)
    )
    return client, server


def make_pair(creds, requested=PRIVATE, clock=None, lifetime=None, **kwargs):
    client_creds, server_creds = creds
    extra = {"clock": clock} if clock else {}
    if lifetime is not None:
        extra["lifetime"] = lifetime
    client = initialize_security_context(client_creds, "host@server", requested, **kwargs, **extra)
    server = accept_security_context(server_creds, **extra)
    return handshake(client, server)


def test_step_results_follow_the_state_table(creds) -> None:
    client_creds, server_creds = creds
    client = initialize_security_context(client_creds, "host@server", PRIVATE)
    server = accept_security_context(server_creds)
    assert client.state is ContextState.NEW
    first = client.step()
    assert first.status is SecStatus.CONTINUE_NEEDED and first.token
    assert client.state is ContextState.IN_PROGRESS
    with pytest.raises(InvalidStateError):
        client.sign(b"too early")
    second = server.step(first.token)
    assert second.status is SecStatus.CONTINUE_NEEDED
    third = client.step(second.token)
    fourth = server.step(third.token)
    assert fourth.status is SecStatus.OK and server.complete
    assert client.step(fourth.token).status is SecStatus.OK
    with pytest.raises(InvalidStateError):
        client.step(b"more")


def test_failure_is_sticky(creds) -> None:
    _, server_creds = creds
    server = accept_security_context(server_creds)
    with pytest.raises(InvalidTokenError):
        server.step(b"garbage")
    assert server.state is ContextState.FAILED
    with pytest.raises(InvalidStateError):
        server.step(b"garbage")
    with pytest.raises(InvalidStateError):
        server.sign(b"x")


def test_granted_attributes_are_what_was_negotiated(creds) -> None:
    pair = make_pair(
        creds,
        PRIVATE | ContextReq.MUTUAL_AUTH | ContextReq.DELEGATE,
        impersonation=ImpersonationLevel.DELEGATE,
    )
    for context in (pair.client, pair.server):
        assert context.attributes & ContextReq.CONFIDENTIALITY
        assert context.attributes & ContextReq.INTEGRITY  # implied by REPLAY_DETECT
        assert not context.attributes & ContextReq.MUTUAL_AUTH  # NTLM proves only the client
        assert not context.attributes & ContextReq.DELEGATE  # NT 4.0: no delegation
    assert pair.server.impersonation_level is ImpersonationLevel.IMPERSONATE
    with pytest.raises(InsufficientAttributesError):
        pair.client.require(ContextReq.MUTUAL_AUTH)
    flags = pair.client.query_attributes(ContextAttribute.FLAGS)
    assert flags.requested & ContextReq.DELEGATE and not flags.granted & ContextReq.DELEGATE


def test_identify_level_is_honoured(creds) -> None:
    pair = make_pair(creds, impersonation=ImpersonationLevel.IDENTIFY)
    assert pair.server.peer.impersonation_level is ImpersonationLevel.IDENTIFY


def test_sign_verify_and_wrap_unwrap_both_directions(creds) -> None:
    pair = make_pair(creds)
    for sender, receiver in ((pair.client, pair.server), (pair.server, pair.client)):
        signature = sender.sign(b"payload", aad=b"call-1")
        assert receiver.verify(b"payload", signature, aad=b"call-1") >= 0
        sealed = sender.wrap(b"secret payload")
        assert b"secret payload" not in sealed
        assert receiver.unwrap(sealed) == b"secret payload"
        signed = sender.wrap(b"readable", encrypt=False)
        assert b"readable" in signed
        data, info = receiver.unwrap_message(signed)
        assert data == b"readable" and info.qop == QOP.WRAP_NO_ENCRYPT


@pytest.mark.parametrize("position", [0, 5, 9, 12, -1])
def test_any_altered_byte_is_detected(creds, position: int) -> None:
    pair = make_pair(creds)
    token = bytearray(pair.client.wrap(b"transfer 100 to bob", aad=b"m"))
    token[position] ^= 0x01
    with pytest.raises(SecurityError) as raised:
        pair.server.unwrap(bytes(token), aad=b"m")
    assert isinstance(raised.value, MessageAlteredError | InvalidTokenError | ReplayError)


def test_wrong_aad_wrong_key_and_truncation_are_detected(creds) -> None:
    pair, other = make_pair(creds), make_pair(creds)
    token = pair.client.wrap(b"x", aad=b"/svc/A")
    with pytest.raises(MessageAlteredError):
        pair.server.unwrap(token, aad=b"/svc/B")
    with pytest.raises(MessageAlteredError):
        other.server.unwrap(token, aad=b"/svc/A")  # another context's keys
    for cut in (0, 1, 8, 9, 20):
        with pytest.raises((InvalidTokenError, MessageAlteredError)):
            pair.server.unwrap(token[:cut], aad=b"/svc/A")
    assert pair.server.unwrap(token, aad=b"/svc/A") == b"x"  # failures changed nothing


def test_replay_is_rejected_and_reorder_accepted_with_replay_detect(creds) -> None:
    pair = make_pair(creds)
    tokens = [pair.client.wrap(bytes([i])) for i in range(5)]
    for index in (3, 0, 4, 1, 2):
        assert pair.server.unwrap(tokens[index]) == bytes([index])
    with pytest.raises(ReplayError):
        pair.server.unwrap(tokens[2])


def test_sequence_detect_rejects_reorder(creds) -> None:
    pair = make_pair(creds, PRIVATE | ContextReq.SEQUENCE_DETECT)
    first, second = pair.client.wrap(b"1"), pair.client.wrap(b"2")
    with pytest.raises(OutOfSequenceError):
        pair.server.unwrap(second)
    assert pair.server.unwrap(first) == b"1"
    assert pair.server.unwrap(second) == b"2"
    with pytest.raises(ReplayError):
        pair.server.unwrap(first)


def test_privacy_needs_confidentiality(creds) -> None:
    pair = make_pair(creds, ContextReq.REPLAY_DETECT | ContextReq.CONNECTION)
    with pytest.raises(QopNotSupportedError):
        pair.client.wrap(b"x")
    assert pair.server.unwrap(pair.client.wrap(b"x", encrypt=False)) == b"x"


def test_seed_sender_and_receiver_buffers(creds) -> None:
    pair = make_pair(creds)
    message = b"application message"
    out = [SecBuffer(BufferType.DATA | BufferType.READONLY, message), SecBuffer(BufferType.EMPTY)]
    pair.client.make_signature(out)
    assert out[1].type is BufferType.TOKEN and out[0].data == message
    incoming = [SecBuffer(BufferType.DATA | BufferType.READONLY, message), out[1]]
    assert pair.server.verify_signature(incoming).qop == 0
    with pytest.raises(ReplayError):
        pair.server.verify_signature(incoming)
    altered = [SecBuffer(BufferType.DATA | BufferType.READONLY, b"Application message"), out[1]]
    with pytest.raises((MessageAlteredError, ReplayError)):
        pair.server.verify_signature(altered)


def test_encrypt_message_seals_data_and_authenticates_readonly(creds) -> None:
    pair = make_pair(creds)
    buffers = [
        SecBuffer(BufferType.DATA | BufferType.READONLY, b"header"),
        SecBuffer(BufferType.DATA, b"body"),
        SecBuffer(BufferType.TOKEN),
    ]
    pair.client.encrypt_message(buffers)
    assert buffers[0].data == b"header" and buffers[1].data != b"body"
    received = [SecBuffer(b.type, b.data) for b in buffers]
    received[0].data = b"HEADER"
    with pytest.raises(MessageAlteredError):
        pair.server.decrypt_message(received)
    received[0].data = b"header"
    pair.server.decrypt_message(received)
    assert received[1].data == b"body"


def test_stream_context_records_extra_and_missing(creds) -> None:
    pair = make_pair(creds, PRIVATE | ContextReq.STREAM)
    sizes = pair.client.query_attributes(ContextAttribute.STREAM_SIZES)
    wire = b""
    for text in (b"first record", b"second"):
        buffers = [
            SecBuffer(BufferType.STREAM_HEADER),
            SecBuffer(BufferType.DATA, text),
            SecBuffer(BufferType.STREAM_TRAILER),
        ]
        pair.client.encrypt_message(buffers)
        assert len(buffers[0].data) == sizes.header and len(buffers[2].data) == sizes.trailer
        wire += b"".join(bytes(b.data) for b in buffers)
    # Too few bytes: MISSING says how many more, and no state changes.
    partial = [SecBuffer(BufferType.DATA, wire[:20])] + [SecBuffer(BufferType.EMPTY)] * 3
    with pytest.raises(IncompleteMessageError) as raised:
        pair.server.decrypt_message(partial)
    assert partial[1].type is BufferType.MISSING and raised.value.missing > 0
    buffers = [SecBuffer(BufferType.DATA, wire)] + [SecBuffer(BufferType.EMPTY) for _ in range(3)]
    pair.server.decrypt_message(buffers)
    assert [b.type for b in buffers] == [
        BufferType.STREAM_HEADER,
        BufferType.DATA,
        BufferType.STREAM_TRAILER,
        BufferType.EXTRA,
    ]
    assert buffers[1].data == b"first record"
    rest = [SecBuffer(BufferType.DATA, buffers[3].data)] + [
        SecBuffer(BufferType.EMPTY) for _ in range(3)
    ]
    pair.server.decrypt_message(rest)
    assert rest[1].data == b"second" and rest[3].type is BufferType.EMPTY


def test_datagram_context_carries_the_callers_sequence_number(creds) -> None:
    pair = make_pair(creds, PRIVATE | ContextReq.DATAGRAM)
    with pytest.raises(ValueError):
        pair.client.wrap(b"x")  # datagram callers must supply the number
    token = pair.client.wrap(b"datagram", seq=41)
    data, info = pair.server.unwrap_message(token)
    assert data == b"datagram" and info.seq == 41
    with pytest.raises(ReplayError):
        pair.server.unwrap(token)


def test_expired_context_refuses_messages(creds) -> None:
    clock = Clock()
    pair = make_pair(creds, clock=clock, lifetime=60)
    token = pair.client.wrap(b"x")
    clock.now += 61
    with pytest.raises(ContextExpiredError):
        pair.server.unwrap(token)
    with pytest.raises(ContextExpiredError):
        pair.client.wrap(b"y")


def test_deleted_context_refuses_everything(creds) -> None:
    pair = make_pair(creds)
    pair.server.delete()
    with pytest.raises(ContextExpiredError):
        pair.server.unwrap(pair.client.wrap(b"x"))


def test_export_import_continues_the_context(creds) -> None:
    pair = make_pair(creds)
    early = pair.client.wrap(b"before export")
    assert pair.server.unwrap(early) == b"before export"
    caller = pair.server.peer.principal
    blob = pair.server.export()
    imported = import_security_context(blob, creds[1])
    assert imported.peer.principal == caller
    assert imported.unwrap(pair.client.wrap(b"after")) == b"after"
    with pytest.raises(ReplayError):
        imported.unwrap(early)  # what the exporter saw stays seen
    assert pair.client.unwrap(imported.wrap(b"reply")) == b"reply"
    with pytest.raises(InvalidTokenError):
        import_security_context(b"{not json", creds[1])


def test_keys_never_appear_in_reprs(creds) -> None:
    pair = make_pair(creds)
    session_key = pair.server.query_attributes(ContextAttribute.SESSION_KEY)
    texts = [repr(pair.client), repr(pair.server), repr(creds[0]), repr(session_key)]
    texts += [repr(pair.server._protector), repr(pair.server.peer)]
    for text in texts:
        assert "Alice-Pa55!" not in text
        assert session_key.key.hex() not in text and repr(session_key.key) not in text


def test_eight_threads_signing_one_context_no_false_rejections(creds) -> None:
    pair = make_pair(creds)
    tokens: list[tuple[bytes, bytes]] = []
    lock = threading.Lock()

    def sender(index: int) -> None:
        produced = []
        for n in range(500):
            data = f"{index}:{n}".encode()
            produced.append((data, pair.client.sign(data)))
        with lock:
            tokens.extend(produced)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = {pair.server.verify(data, signature) for data, signature in tokens}
    assert len(seqs) == 4000  # every message accepted once, all sequence numbers distinct


@pytest.mark.parametrize("high_byte", [1, 2, 4])
def test_forged_far_future_sequence_numbers_fail_fast(creds, high_byte: int) -> None:
    """The sequence number is read before the tag is checked: a forged one must not make the
    receiver derive keys for billions of epochs (or move its window)."""
    import time

    pair = make_pair(creds)
    token = bytearray(pair.client.wrap(b"x"))
    token[high_byte] = 0xFF
    started = time.perf_counter()
    with pytest.raises(MessageAlteredError):
        pair.server.unwrap(bytes(token))
    assert time.perf_counter() - started < 0.5
    assert pair.server.unwrap(pair.client.wrap(b"still fine")) == b"still fine"


def test_datagram_callers_may_number_far_ahead(creds) -> None:
    """Datagram sequence numbers are the caller's (e.g. DCE call ids or timestamps): a jump of
    many key epochs is legitimate there, and GCM-SIV keeps a reused number safe."""
    pair = make_pair(creds, PRIVATE | ContextReq.DATAGRAM)
    for seq in (5, 2**40, 2**63):
        data, info = pair.server.unwrap_message(pair.client.wrap(b"dgram", seq=seq))
        assert (data, info.seq) == (b"dgram", seq)


def test_traffic_crosses_a_key_epoch_and_sequence_numbers_never_wrap(creds) -> None:
    """A new key every 2**24 messages (RFC 8446 §5.5 limits); both sides derive it from the
    sequence number alone. After 2**64 - 1 the context refuses instead of reusing a nonce."""
    import itertools

    from rpcsec.sspi._protection import EPOCH_BITS, MAX_SEQUENCE

    pair = make_pair(creds)
    boundary = 1 << EPOCH_BITS
    pair.client._send_seq = itertools.count(boundary - 2)  # as if 2**24 - 2 messages were sent
    tokens = [pair.client.wrap(bytes([i])) for i in range(4)]
    assert [pair.server.unwrap(t) for t in tokens] == [bytes([i]) for i in range(4)]
    # The same plaintext at the same offset in two epochs is sealed under different keys.
    assert tokens[0][9:] != tokens[2][9:]
    pair.client._send_seq = itertools.count(MAX_SEQUENCE)
    pair.client.wrap(b"last number")
    with pytest.raises(ContextExpiredError):
        pair.client.wrap(b"would wrap around")
