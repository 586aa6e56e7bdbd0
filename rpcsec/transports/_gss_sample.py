"""MIT gss-sample's protocol (krb5 ``src/appl/gss-sample``: gss-misc.c, gss-client.c,
gss-server.c) as sans-IO state machines, so ``gss-client`` / ``gss-server`` interoperate.

Framing (``send_token`` / ``recv_token``): ``flags:u8 | length:u32 be | token``; a flags byte
of 0 is the old v1 framing, whose length has only three more bytes. Flags::

    NOOP 0x01  CONTEXT 0x02  DATA 0x04  MIC 0x08  CONTEXT_NEXT 0x10
    WRAPPED 0x20  ENCRYPTED 0x40  SEND_MIC 0x80

Exchange (the "sign" service)::

    C: NOOP|CONTEXT_NEXT ""                    (authenticated session follows)
    C: CONTEXT <init token>   S: CONTEXT <accept token>      ... until both are complete
    C: DATA|WRAPPED[|ENCRYPTED][|SEND_MIC] GSS_Wrap(message)  (RFC 2743 §2.3.3)
    S: MIC GSS_GetMIC(message)     (or NOOP "" without SEND_MIC)   ... per message
    C: NOOP ""                                 (end)

The flags are not authenticated, so this side never lets them lower protection: the server
refuses an unauthenticated session, a DATA token that is not WRAPPED, and a token whose
GSS conf_state does not match ENCRYPTED (gss-server only warns); the client insists on a MIC
that verifies when it asked for one. Lengths are checked against ``max_token`` before
anything is buffered.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass

from rpcsec.sspi import InvalidTokenError, MessageAlteredError

from ._errors import FrameTooLargeError

__all__ = [
    "CONTEXT",
    "CONTEXT_NEXT",
    "DATA",
    "ENCRYPTED",
    "MIC",
    "NOOP",
    "SEND_MIC",
    "WRAPPED",
    "SampleToken",
    "SampleTokenReader",
    "ServerProtocol",
    "encode_sample_token",
]

NOOP, CONTEXT, DATA, MIC, CONTEXT_NEXT, WRAPPED, ENCRYPTED, SEND_MIC = (1 << i for i in range(8))
_LENGTH = struct.Struct(">I")
DEFAULT_MAX_TOKEN = 1 << 20


@dataclass(frozen=True, slots=True)
class SampleToken:
    flags: int
    token: bytes


def encode_sample_token(flags: int, token: bytes) -> bytes:
    """``send_token``: the flags byte (omitted when 0, the v1 form), length, token."""
    if not 0 <= flags <= 0xFF:
        raise ValueError("gss-sample flags are one byte")
    head = bytes([flags]) if flags else b""
    return head + _LENGTH.pack(len(token)) + bytes(token)


class SampleTokenReader:
    """``recv_token`` over a byte stream: ``feed`` bytes, ``next_token`` until None."""

    __slots__ = ("_buffer", "max_token")

    def __init__(self, max_token: int = DEFAULT_MAX_TOKEN) -> None:
        self.max_token = max_token
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_token(self) -> SampleToken | None:
        buffer = self._buffer
        if not buffer:
            return None
        flags = buffer[0]
        if flags == 0:  # v1: the flags byte was the length's high byte
            if len(buffer) < 4:
                return None
            header, length = 4, int.from_bytes(buffer[1:4], "big")
        else:
            if len(buffer) < 5:
                return None
            header, length = 5, _LENGTH.unpack_from(buffer, 1)[0]
        if length > self.max_token:
            raise FrameTooLargeError(f"gss-sample token of {length} bytes is too large")
        if len(buffer) < header + length:
            return None
        token = bytes(buffer[header : header + length])
        del buffer[: header + length]
        return SampleToken(flags, token)

    @property
    def buffered(self) -> int:
        return len(self._buffer)


class _State(enum.Enum):
    START = "start"  # waiting for NOOP|CONTEXT_NEXT
    CONTEXT = "context"  # exchanging CONTEXT tokens
    MESSAGES = "messages"  # DATA tokens until NOOP
    DONE = "done"
    FAILED = "failed"


class ServerProtocol:
    """gss-server's side (``sign_server``) without the socket.

    ``accept(token) -> (reply or None, complete)`` is one AcceptSecurityContext leg;
    ``messages()`` gives the established context's unwrap/get_mic; ``on_message(plaintext)``
    is called for each verified message (the binding runs it as the caller). ``receive``
    returns the tokens to send; a failure is sticky.
    """

    def __init__(
        self,
        accept: Callable[[bytes], tuple[bytes | None, bool]],
        unwrap: Callable[[bytes], tuple[bytes, bool]],
        get_mic: Callable[[bytes], bytes],
        on_message: Callable[[bytes], None],
        *,
        require_encryption: bool = False,
    ) -> None:
        self._accept = accept
        self._unwrap = unwrap
        self._get_mic = get_mic
        self._on_message = on_message
        self._require_encryption = require_encryption
        self.state = _State.START
        self._handlers = {
            _State.START: self._start,
            _State.CONTEXT: self._context,
            _State.MESSAGES: self._message,
        }

    @property
    def established(self) -> bool:
        return self.state in (_State.MESSAGES, _State.DONE)

    @property
    def done(self) -> bool:
        return self.state is _State.DONE

    def receive(self, item: SampleToken) -> list[bytes]:
        handler = self._handlers.get(self.state)
        if handler is None:
            raise InvalidTokenError(f"gss-sample session is {self.state.value}")
        try:
            return handler(item)
        except BaseException:
            self.state = _State.FAILED
            raise

    def _start(self, item: SampleToken) -> list[bytes]:
        if item.flags != NOOP | CONTEXT_NEXT or item.token:
            # NOOP alone is gss-client -na: an unauthenticated session, which is refused
            raise InvalidTokenError("gss-sample client did not ask for an authenticated session")
        self.state = _State.CONTEXT
        return []

    def _context(self, item: SampleToken) -> list[bytes]:
        if item.flags != CONTEXT:
            raise InvalidTokenError("expected a gss-sample context token")
        reply, complete = self._accept(item.token)
        out = [encode_sample_token(CONTEXT, reply)] if reply else []
        if complete:
            self.state = _State.MESSAGES
        return out

    def _message(self, item: SampleToken) -> list[bytes]:
        if item.flags & NOOP:
            self.state = _State.DONE
            return []
        if not item.flags & DATA or item.flags & (CONTEXT | MIC | CONTEXT_NEXT):
            raise InvalidTokenError("expected a gss-sample data token")
        if not item.flags & WRAPPED:
            raise MessageAlteredError("gss-sample message is not wrapped (integrity required)")
        if self._require_encryption and not item.flags & ENCRYPTED:
            raise MessageAlteredError("gss-sample message is not encrypted")
        message, encrypted = self._unwrap(item.token)
        if encrypted != bool(item.flags & ENCRYPTED):
            raise MessageAlteredError("gss-sample message protection does not match its flags")
        self._on_message(message)
        if item.flags & SEND_MIC:
            return [encode_sample_token(MIC, self._get_mic(message))]
        return [encode_sample_token(NOOP, b"")]
