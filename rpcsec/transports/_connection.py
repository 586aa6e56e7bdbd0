"""The sockauth protocol as a sans-IO state machine: bytes in, events and bytes out.

This is the seed's sockauth sample (Client.c / Server.c / Security.c) without the sockets:
the DoAuthentication loop that passes InitializeSecurityContext / AcceptSecurityContext tokens
until the context is complete, then messages protected by the context. Like h11 and h2, a
``SockAuthConnection`` performs no I/O: ``receive_data(bytes)`` returns events,
``data_to_send()`` drains the bytes to write, and the socket code in ``sockauth`` is a thin
edge. Every transition is in ``_TRANSITIONS``; an unknown one raises, and failure is sticky.

Wire format. Every handshake frame, and every message frame of a connection-style context, is
a length-prefixed frame (``_framing``) whose first byte is its kind::

    TOKEN  0x01 | token          a handshake token, either direction
    ACCEPT 0x02 | final token    server: the context is complete (the token may be empty)
    DATA   0x03 | wrap token     one protected application message
    CLOSE  0x04 | wrap token     authenticated close (wrap of b"")
    ERROR  0x05 | reason         coarse reason code (``SecurityError.reason``), advisory

The client waits for ACCEPT before it sends data, so it learns whether its last token was
accepted (RFC 4559 returns the server's final token with the 200 response the same way).
DATA and CLOSE are ``wrap``-ped with additional data binding the protocol, the direction and
the kind, so a message cannot be reflected back to its sender or turned into a close. ERROR
frames are unauthenticated; they only ever end a connection, as a TCP reset could.

With a STREAM context (ContextReq.STREAM, seed "Stream Contexts") the package frames the data
itself: after ACCEPT both directions carry ``encrypt_message`` records back to back, and the
receiver hands whatever arrived to ``decrypt_message`` with ``DATA, EMPTY, EMPTY, EMPTY``
buffers, keeping an EXTRA buffer for the next record and waiting for the MISSING count on
SEC_E_INCOMPLETE_MESSAGE (which changes no state). An empty record is the authenticated close.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rpcsec.sspi import (
    QOP,
    BufferType,
    ContextAttribute,
    ContextReq,
    ContextState,
    IncompleteMessageError,
    InsufficientAttributesError,
    InvalidStateError,
    InvalidTokenError,
    QopNotSupportedError,
    SecBuffer,
    SecurityContext,
    SecurityError,
    error_for_status,
)

from ._errors import FrameTooLargeError, TruncatedFrameError
from ._events import CloseReceived, Event, HandshakeComplete, MessageReceived
from ._framing import FrameDecoder, encode_frame

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "MAX_HANDSHAKE_LEGS",
    "ConnectionConfig",
    "ConnectionState",
    "FrameKind",
    "SockAuthConnection",
]

DEFAULT_MAX_MESSAGE = 1 << 20
MAX_HANDSHAKE_LEGS = 16
_MIN_HANDSHAKE_FRAME = 64 * 1024
_MAX_REASON = 64
_AAD_PREFIX = b"rpcsec-sockauth/1\x00"


class FrameKind(enum.IntEnum):
    TOKEN = 0x01
    ACCEPT = 0x02
    DATA = 0x03
    CLOSE = 0x04
    ERROR = 0x05


class ConnectionState(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    LOCAL_CLOSED = "local-closed"  # we sent our close; the peer may still send
    REMOTE_CLOSED = "remote-closed"  # the peer closed; we may still send
    CLOSED = "closed"
    FAILED = "failed"


class _Event(enum.Enum):
    ESTABLISHED = "establish"
    SEND_CLOSE = "send a close on"
    RECEIVE_CLOSE = "receive a close on"
    FAIL = "fail"


_S = ConnectionState
# The whole state machine (h11 style): (state, event) -> next state. FAILED is sticky.
_TRANSITIONS: dict[tuple[ConnectionState, _Event], ConnectionState] = {
    (_S.HANDSHAKE, _Event.ESTABLISHED): _S.OPEN,
    (_S.HANDSHAKE, _Event.SEND_CLOSE): _S.CLOSED,
    (_S.OPEN, _Event.SEND_CLOSE): _S.LOCAL_CLOSED,
    (_S.OPEN, _Event.RECEIVE_CLOSE): _S.REMOTE_CLOSED,
    (_S.LOCAL_CLOSED, _Event.SEND_CLOSE): _S.LOCAL_CLOSED,
    (_S.LOCAL_CLOSED, _Event.RECEIVE_CLOSE): _S.CLOSED,
    (_S.REMOTE_CLOSED, _Event.SEND_CLOSE): _S.CLOSED,
    (_S.CLOSED, _Event.SEND_CLOSE): _S.CLOSED,
    (_S.FAILED, _Event.SEND_CLOSE): _S.FAILED,
    **{(state, _Event.FAIL): _S.FAILED for state in ConnectionState},
}
_CAN_SEND = frozenset({_S.OPEN, _S.REMOTE_CLOSED})
_CAN_RECEIVE = frozenset({_S.HANDSHAKE, _S.OPEN, _S.LOCAL_CLOSED})


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """Options of one connection (h2 keeps its options in one object too).

    ``max_message`` bounds one application message (message mode) or one record's data
    (stream mode) in both directions; peers should agree on it. ``required`` is checked
    against the granted attributes when the handshake completes (``ctx.require``).
    """

    required: ContextReq = ContextReq.NONE
    max_message: int = DEFAULT_MAX_MESSAGE
    max_handshake_legs: int = MAX_HANDSHAKE_LEGS

    def __post_init__(self) -> None:
        if not isinstance(self.required, ContextReq):
            raise TypeError("required must be ContextReq flags")
        if not isinstance(self.max_message, int) or not 0 < self.max_message < (1 << 31):
            raise ValueError("max_message must be a positive size below 2 GiB")
        if not isinstance(self.max_handshake_legs, int) or self.max_handshake_legs < 2:
            raise ValueError("max_handshake_legs must be at least 2")


class SockAuthConnection:
    """One end of a sockauth connection over an existing byte stream (no I/O).

    Client::

        conn = SockAuthConnection(initialize_security_context(creds, target, requested), cfg)
        conn.initiate(); send(conn.data_to_send())
        # then for each chunk read: events = conn.receive_data(chunk); send(conn.data_to_send())

    Server: the same with ``accept_security_context(...)`` and no ``initiate``. ``receive_data``
    raises a ``SecurityError`` for anything the peer got wrong; the connection is then FAILED
    and ``send_error`` queues the coarse reason for the peer before the edge closes.
    """

    def __init__(self, context: SecurityContext, config: ConnectionConfig | None = None) -> None:
        if not isinstance(context, SecurityContext):
            raise TypeError("context must be a SecurityContext")
        if context.state is not ContextState.NEW:
            raise ValueError("the connection must start from a new security context")
        self.context = context
        self.config = config or ConnectionConfig()
        self.is_client = context.is_client
        self.state = ConnectionState.HANDSHAKE
        self.error: SecurityError | None = None
        self._legs = 0
        self._out = bytearray()
        handshake_limit = max(context.package.max_token, _MIN_HANDSHAKE_FRAME) + 1
        self._decoder: FrameDecoder | None = FrameDecoder(handshake_limit)
        self._stream = False
        self._stream_buffer = bytearray()
        self._stream_need = 0
        self._record_limit = 0
        self._encrypt = False
        self._error_sent = False
        self._deferred: SecurityError | None = None
        send, receive = (b"c2s", b"s2c") if self.is_client else (b"s2c", b"c2s")
        self._send_aad = {k: _AAD_PREFIX + send + bytes((k,)) for k in FrameKind}
        self._receive_aad = {k: _AAD_PREFIX + receive + bytes((k,)) for k in FrameKind}

    # -- state machine ---------------------------------------------------------------------

    def _transition(self, event: _Event) -> None:
        try:
            self.state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise InvalidStateError(
                f"cannot {event.value} a connection in state {self.state.value}"
            ) from None

    @property
    def stream_mode(self) -> bool:
        """True once a STREAM context carries the data as the package's own records."""
        return self._stream

    # -- outbound ----------------------------------------------------------------------------

    def _queue(self, kind: FrameKind, payload: bytes = b"") -> None:
        self._out += encode_frame(bytes((kind,)) + payload)

    def data_to_send(self) -> bytes:
        """Drain the bytes to write to the peer (h2's ``data_to_send``)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def initiate(self) -> None:
        """Client: the first InitializeSecurityContext call and its token."""
        if not self.is_client:
            raise InvalidStateError("only the client initiates the handshake")
        if self.state is not ConnectionState.HANDSHAKE or self._legs:
            raise InvalidStateError("the handshake was already initiated")
        try:
            self._client_step(None)
        except SecurityError as exc:
            self._fail(exc)
            raise

    def send_message(self, data: bytes) -> None:
        """Protect one application message and queue it (message mode), or queue it as one or
        more records (stream mode, where message boundaries are not kept)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("data must be bytes")
        if self.state not in _CAN_SEND:
            raise InvalidStateError(f"cannot send on a connection in state {self.state.value}")
        limit = self.config.max_message
        if self._stream:
            view = memoryview(data)
            for start in range(0, len(view), limit):
                self._out += self._seal_record(view[start : start + limit])
            return
        if len(data) > limit:
            raise ValueError(f"message of {len(data)} bytes exceeds max_message ({limit})")
        token = self.context.wrap(
            bytes(data), aad=self._send_aad[FrameKind.DATA], encrypt=self._encrypt
        )
        self._queue(FrameKind.DATA, token)

    def close(self) -> None:
        """Queue the authenticated close (idempotent). During the handshake, just abandon."""
        if self.state in _CAN_SEND:
            if self._stream:
                self._out += self._seal_record(b"")
            else:
                token = self.context.wrap(
                    b"", aad=self._send_aad[FrameKind.CLOSE], encrypt=self._encrypt
                )
                self._queue(FrameKind.CLOSE, token)
        self._transition(_Event.SEND_CLOSE)

    def send_error(self, error: BaseException) -> None:
        """Queue an ERROR frame telling the peer the coarse reason (never the detail), when the
        framing is still in use; stream records have no room for one, so this is a no-op there.
        """
        if self.state is not ConnectionState.FAILED:
            self._transition(_Event.FAIL)
        if self._error_sent or self._stream:
            return
        reason = error.reason if isinstance(error, SecurityError) else "internal-error"
        self._error_sent = True
        self._queue(FrameKind.ERROR, reason.encode("ascii", "replace")[:_MAX_REASON])

    def _seal_record(self, chunk: bytes | memoryview) -> bytes:
        buffers = [
            SecBuffer(BufferType.STREAM_HEADER),
            SecBuffer(BufferType.DATA, bytes(chunk)),
            SecBuffer(BufferType.STREAM_TRAILER),
        ]
        self.context.encrypt_message(buffers)
        return b"".join(bytes(b.data) for b in buffers)

    # -- inbound -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Process bytes read from the peer; ``b""`` means the peer closed its side.

        Returns the events, in order. Raises a ``SecurityError`` subclass for anything the peer
        did wrong; the connection is FAILED from then on. When messages that verified came in
        the same bytes before the failure, they are returned first (and may be answered) and
        the connection fails at the next call, which raises the error (``error_pending`` says
        so; the data passed to that call is ignored).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("data must be bytes")
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            self._fail(deferred)
            raise deferred
        if self.state is ConnectionState.FAILED:
            raise InvalidStateError("the connection failed earlier")
        events: list[Event] = []
        try:
            if self.state not in _CAN_RECEIVE:
                if data:
                    raise InvalidTokenError("data after the peer's close")
                return events
            self._receive(bytes(data), events)
        except SecurityError as exc:
            if not events:
                self._fail(exc)
                raise
            self._deferred = exc
        except (InvalidStateError, TypeError, ValueError) as exc:
            # The peer drove the context into misuse (e.g. a token after completion).
            error = InvalidTokenError("peer sent a message the protocol does not allow here")
            error.__cause__ = exc
            if not events:
                self._fail(error)
                raise error from exc
            self._deferred = error
        return events

    @property
    def error_pending(self) -> bool:
        """True when ``receive_data`` will raise a failure found after returned events."""
        return self._deferred is not None

    def _fail(self, error: SecurityError) -> None:
        self.error = error
        if self.state is not ConnectionState.FAILED:
            self._transition(_Event.FAIL)

    def _receive(self, data: bytes, events: list[Event]) -> None:
        if self._stream:
            if not data:
                self._end_of_stream()
            self._stream_buffer += data
            self._drain_records(events)
            return
        decoder = self._decoder
        assert decoder is not None
        if not data:
            decoder.end_of_stream()
            self._end_of_stream()
        decoder.feed(data)
        while self.state in _CAN_RECEIVE and not self._stream:
            frame = decoder.next_frame()
            if frame is None:
                break
            self._frame(frame, events)
        if self._stream:  # the handshake ended and records may already follow in this chunk
            self._stream_buffer += decoder.take_remaining()
            self._decoder = None
            self._drain_records(events)
        elif decoder.buffered and self.state not in _CAN_RECEIVE:
            raise InvalidTokenError("data after the peer's close")

    def _end_of_stream(self) -> None:
        if self.state is ConnectionState.HANDSHAKE:
            raise TruncatedFrameError("connection closed during the handshake")
        if self._stream_buffer:
            raise TruncatedFrameError("connection closed inside a record")
        raise TruncatedFrameError("connection closed without an authenticated close")

    def _frame(self, frame: bytes, events: list[Event]) -> None:
        if not frame:
            raise InvalidTokenError("empty frame")
        kind, payload = frame[0], frame[1:]
        if kind == FrameKind.ERROR:
            reason = payload[:_MAX_REASON].decode("ascii", "replace")
            self._error_sent = True  # never answer an error with an error
            raise error_for_status(reason, f"peer reported {reason!r}")
        if self.state is ConnectionState.HANDSHAKE:
            self._legs += 1
            if self._legs > self.config.max_handshake_legs:
                raise InvalidTokenError("handshake did not converge")
            if kind == FrameKind.TOKEN and payload:
                step = self._client_step if self.is_client else self._server_step
                events.extend(step(payload))
            elif kind == FrameKind.ACCEPT and self.is_client:
                events.extend(self._client_accepted(payload))
            else:
                raise InvalidTokenError("unexpected frame during the handshake")
            return
        if kind == FrameKind.DATA:
            data, info = self.context.unwrap_message(payload, aad=self._receive_aad[FrameKind.DATA])
            self._check_qop(info.qop)
            events.append(MessageReceived(data, info.seq))
        elif kind == FrameKind.CLOSE:
            data, info = self.context.unwrap_message(
                payload, aad=self._receive_aad[FrameKind.CLOSE]
            )
            self._check_qop(info.qop)
            if data:
                raise InvalidTokenError("close frame carries data")
            self._transition(_Event.RECEIVE_CLOSE)
            events.append(CloseReceived())
        else:
            raise InvalidTokenError("unexpected frame after the handshake")

    def _check_qop(self, qop: int) -> None:
        if self._encrypt and qop != QOP.DEFAULT:
            raise QopNotSupportedError("peer sent an unencrypted message on a privacy context")

    # -- handshake ---------------------------------------------------------------------------

    def _client_step(self, token: bytes | None) -> list[Event]:
        if self.context.complete:
            raise InvalidTokenError("server sent a token after the context completed")
        result = self.context.step(token)
        if result.token:
            self._queue(FrameKind.TOKEN, result.token)
        elif not result.complete:
            raise InvalidTokenError("package asked to continue without a token to send")
        return []  # even when complete, the server's ACCEPT is still to come

    def _client_accepted(self, final_token: bytes) -> list[Event]:
        if final_token:
            if self.context.complete:
                raise InvalidTokenError("server sent a final token after the context completed")
            result = self.context.step(final_token)
            if result.token or not result.complete:
                raise InvalidTokenError("server accepted before the context could complete")
        elif not self.context.complete:
            raise InvalidTokenError("server accepted before the context completed")
        return [self._established()]

    def _server_step(self, token: bytes) -> list[Event]:
        result = self.context.step(token)
        if not result.complete:
            if result.token:
                self._queue(FrameKind.TOKEN, result.token)
            return []
        event = self._established()  # checks the attributes before ACCEPT goes out
        self._queue(FrameKind.ACCEPT, result.token or b"")
        return [event]

    def _established(self) -> HandshakeComplete:
        context = self.context
        missing = self.config.required.normalized() & ~context.attributes
        if missing:
            raise InsufficientAttributesError(f"context lacks required attributes: {missing!r}")
        granted = context.attributes
        self._encrypt = bool(granted & ContextReq.CONFIDENTIALITY)
        if granted & ContextReq.STREAM:
            if not self._encrypt:
                raise InsufficientAttributesError("stream contexts need CONFIDENTIALITY")
            sizes = context.query_attributes(ContextAttribute.STREAM_SIZES)
            payload = min(sizes.max_message, self.config.max_message)
            self._record_limit = sizes.header + payload + sizes.trailer
        self._transition(_Event.ESTABLISHED)
        assert self._decoder is not None
        if granted & ContextReq.STREAM:
            self._stream = True
        else:
            sizes = context.query_attributes(ContextAttribute.SIZES)
            overhead = max(sizes.security_trailer, sizes.max_signature) + 1
            self._decoder.max_size = self.config.max_message + overhead
        return HandshakeComplete(peer=context.peer, attributes=granted)

    # -- stream records ----------------------------------------------------------------------

    def _drain_records(self, events: list[Event]) -> None:
        buffer = self._stream_buffer
        while buffer and self.state in _CAN_RECEIVE:
            if len(buffer) < self._stream_need:
                break
            buffers = [
                SecBuffer(BufferType.DATA, bytes(buffer)),
                SecBuffer(BufferType.EMPTY),
                SecBuffer(BufferType.EMPTY),
                SecBuffer(BufferType.EMPTY),
            ]
            try:
                info = self.context.decrypt_message(buffers)
            except IncompleteMessageError as exc:
                # SEC_E_INCOMPLETE_MESSAGE: nothing changed; wait for the MISSING bytes.
                need = len(buffer) + exc.missing
                if need > self._record_limit:
                    raise FrameTooLargeError("peer announced a record above the limit") from None
                self._stream_need = need
                break
            self._stream_need = 0
            data_buf, extra_buf = buffers[1], buffers[3]
            if data_buf.type.base is not BufferType.DATA:
                raise InvalidTokenError("stream record returned no data buffer")
            if len(buffer) - len(extra_buf.data) > self._record_limit:
                raise FrameTooLargeError("peer sent a record above the limit")
            extra = bytes(extra_buf.data) if extra_buf.type.base is BufferType.EXTRA else b""
            del buffer[: len(buffer) - len(extra)]
            if data_buf.data:
                events.append(MessageReceived(bytes(data_buf.data), info.seq))
            else:
                self._transition(_Event.RECEIVE_CLOSE)
                events.append(CloseReceived())
        if buffer and self.state not in _CAN_RECEIVE:
            raise InvalidTokenError("data after the peer's close")
        if len(buffer) > self._record_limit and self._stream_need == 0:
            raise FrameTooLargeError("peer sent more than one record can hold")

    def __repr__(self) -> str:
        role = "client" if self.is_client else "server"
        mode = "stream" if self._stream else "message"
        return f"<SockAuthConnection {role} {mode} state={self.state.value}>"
