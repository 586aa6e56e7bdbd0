"""Per-call message protection on an established context, for both ends of a call.

``CallProtection`` is one context plus the handle the server gave it; it seals and opens the
messages of calls as ``_wire`` lays them out. ``Outbound`` / ``Inbound`` are the per-call,
per-direction cursors (message index, end-of-stream marker). Sans-IO: bindings hand them bytes.

Hot path: the per-method AAD prefixes are computed once (``MethodKeys``) and each message costs
one AAD concatenation plus the core's wrap/unwrap; nothing else is allocated per message.
"""

from __future__ import annotations

from collections.abc import Callable

from rpcsec.sspi import (
    ContextExpiredError,
    InvalidTokenError,
    MessageAlteredError,
    ProtectionLevel,
    SecurityContext,
    SecurityError,
)

from ._client_errors import as_rpc_error
from ._wire import (
    END,
    END_MARKER_KIND,
    LEVEL_BYTES,
    REQUEST,
    RESPONSE,
    call_prefix,
    message_prefix,
    method_part,
    not_run_prefix,
    open_aad,
    position,
)

__all__ = [
    "FIRST_REQUEST",
    "FIRST_RESPONSE",
    "CallProtection",
    "ClientCallProtection",
    "Inbound",
    "MethodKeys",
    "OutcomeInbound",
    "Outbound",
]

FIRST_REQUEST = position(REQUEST, 0)
FIRST_RESPONSE = position(RESPONSE, 0)


class MethodKeys:
    """The constant parts of every signature over calls of one method on one context."""

    __slots__ = ("call_aad", "method", "not_run", "open_aad", "prefix")

    def __init__(self, handle: bytes, method: str, level: ProtectionLevel) -> None:
        part = method_part(method)
        self.method = method
        self.call_aad = call_prefix(handle) + LEVEL_BYTES[level] + part
        self.open_aad = open_aad(handle, part)
        self.prefix = message_prefix(handle, part)
        self.not_run = not_run_prefix(handle, part)


class CallProtection:
    """One established context and its server-side handle: seal / open call messages."""

    __slots__ = ("context", "handle")

    def __init__(self, context: SecurityContext, handle: bytes) -> None:
        self.context = context
        self.handle = handle

    def seal(
        self,
        prefix: bytes,
        call_seq: bytes,
        pos: bytes,
        payload: bytes,
        encrypt: bool,
        suffix: bytes = b"",
    ) -> bytes:
        """EncryptMessage (PRIVACY) or an integrity wrap (INTEGRITY) of one message;
        ``suffix``: ``OUTCOME_OK`` when the token also carries the call's outcome."""
        return self.context.wrap(payload, aad=prefix + call_seq + pos + suffix, encrypt=encrypt)

    def open(
        self,
        prefix: bytes,
        call_seq: bytes,
        pos: bytes,
        token: bytes,
        encrypt: bool,
        suffix: bytes = b"",
    ) -> bytes:
        """DecryptMessage / VerifySignature of one message; it must be at the call's level."""
        if not token:
            raise InvalidTokenError("message is not a protected token")
        # ``encrypted=`` refuses a token of the other kind (MessageAlteredError) without building
        # a MessageInfo per message. No replay window: the AAD binds the message to its call
        # (accepted once) and position (opened in order), so a slow reader whose messages fall
        # behind other calls' is never taken for a replay.
        return self.context.unwrap(
            token, aad=prefix + call_seq + pos + suffix, encrypted=encrypt, record=False
        )

    def end_marker(
        self, prefix: bytes, call_seq: bytes, direction: int, count: int, suffix: bytes = b""
    ) -> bytes:
        """The signed end of a stream of ``count`` messages (``suffix``: as for ``seal``)."""
        return self.context.sign(
            b"", aad=prefix + call_seq + position(direction | END, count) + suffix
        )

    def check_end(
        self,
        prefix: bytes,
        call_seq: bytes,
        direction: int,
        count: int,
        token: bytes,
        suffix: bytes = b"",
    ) -> None:
        self.context.verify(
            b"",
            token,
            aad=prefix + call_seq + position(direction | END, count) + suffix,
            record=False,
        )

    def altered(self, message: str) -> SecurityError:
        """The error for a stream that was cut or extended (the client's is an RpcError)."""
        return MessageAlteredError(message)

    def not_run(self, prefix: bytes, call_seq: bytes) -> bytes:
        """The server's signed "call ``call_seq`` did not run" (``prefix``: NOT_RUN_AAD)."""
        return self.context.sign(b"", aad=prefix + call_seq)

    def check_not_run(self, prefix: bytes, call_seq: bytes, token: bytes) -> None:
        self.context.verify(b"", token, aad=prefix + call_seq)

    def sign_status(self, aad: bytes, call_seq: bytes) -> bytes:
        """The server's MIC over a call's outcome (``_call_status``: STATUS_AAD)."""
        return self.context.sign(b"", aad=aad)

    def check_status(self, aad: bytes, call_seq: bytes, token: bytes) -> None:
        # Bound to its call by the AAD, like an end marker: no replay window.
        self.context.verify(b"", token, aad=aad, record=False)


class ClientCallProtection(CallProtection):
    """The client's ``CallProtection``: a response that does not verify raises its
    ``SecurityError`` as a ``grpc.RpcError`` too (``_client_errors``)."""

    __slots__ = ()

    def open(
        self,
        prefix: bytes,
        call_seq: bytes,
        pos: bytes,
        token: bytes,
        encrypt: bool,
        suffix: bytes = b"",
    ) -> bytes:
        try:
            return CallProtection.open(self, prefix, call_seq, pos, token, encrypt, suffix)
        except SecurityError as exc:
            raise as_rpc_error(exc) from exc.__cause__

    def check_end(
        self,
        prefix: bytes,
        call_seq: bytes,
        direction: int,
        count: int,
        token: bytes,
        suffix: bytes = b"",
    ) -> None:
        try:
            CallProtection.check_end(self, prefix, call_seq, direction, count, token, suffix)
        except SecurityError as exc:
            raise as_rpc_error(exc) from exc.__cause__

    def altered(self, message: str) -> SecurityError:
        return as_rpc_error(MessageAlteredError(message))


class _Direction:
    """One stream direction of one call: what every message of it is bound to, and how many
    have passed."""

    __slots__ = (
        "_call_seq",
        "_clock",
        "_direction",
        "_encrypt",
        "_expires_at",
        "_prefix",
        "_protection",
        "count",
    )

    def __init__(
        self,
        protection: CallProtection,
        prefix: bytes,
        call_seq: bytes,
        direction: int,
        encrypt: bool,
        expires_at: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._protection = protection
        self._prefix = prefix
        self._call_seq = call_seq
        self._direction = direction
        self._encrypt = encrypt
        # The server ends an admitted stream at the first message boundary past the context's
        # lifetime (``max_lifetime``), with a typed ``expired`` refusal.
        self._expires_at = expires_at if clock is not None else None
        self._clock = clock
        self.count = 0

    def _check_lifetime(self) -> None:
        expires_at = self._expires_at
        if expires_at is not None and self._clock() >= expires_at:  # type: ignore[misc]
            raise ContextExpiredError("the security context expired during the stream")


class Outbound(_Direction):
    """The sending side of one stream direction of one call."""

    __slots__ = ()

    def seal(self, payload: bytes) -> bytes:
        if self._expires_at is not None:
            self._check_lifetime()
        index = self.count
        self.count = index + 1
        return self._protection.seal(
            self._prefix, self._call_seq, position(self._direction, index), payload, self._encrypt
        )

    def end(self, suffix: bytes = b"") -> bytes:
        """The end marker (``suffix``: ``OUTCOME_OK`` when it also carries the outcome)."""
        return self._protection.end_marker(
            self._prefix, self._call_seq, self._direction, self.count, suffix
        )


class Inbound(_Direction):
    """The receiving side of one stream direction of one call.

    ``open(token)`` returns the next message's payload, or None for a verified end marker; a
    message after the end, or the transport ending before it (``finish()``), is an alteration.
    Failure is sticky: once a message failed, every later use raises the same error.
    """

    __slots__ = ("ended", "error")

    def __init__(
        self,
        protection: CallProtection,
        prefix: bytes,
        call_seq: bytes,
        direction: int,
        encrypt: bool,
        expires_at: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(protection, prefix, call_seq, direction, encrypt, expires_at, clock)
        self.ended = False
        self.error: Exception | None = None

    def open(self, token: bytes) -> bytes | None:
        if self.error is not None:
            raise self.error
        try:
            if self.ended:
                raise self._protection.altered("message after the end of the stream")
            if self._expires_at is not None:
                self._check_lifetime()
            if token[:1] == _END_BYTE:
                self._protection.check_end(
                    self._prefix, self._call_seq, self._direction, self.count, token
                )
                self.ended = True
                return None
            index = self.count
            data = self._protection.open(
                self._prefix,
                self._call_seq,
                position(self._direction, index),
                token,
                self._encrypt,
            )
            self.count = index + 1
            return data
        except Exception as exc:
            self.error = exc
            raise

    def finish(self) -> None:
        """The transport ended the stream: it must have ended with our marker."""
        if self.error is not None:
            raise self.error
        if not self.ended:
            self.error = self._protection.altered("stream ended without its end marker (truncated)")
            raise self.error


class OutcomeInbound(Inbound):
    """The client's side of a response stream. Its end marker may carry the call's outcome
    (``_wire.OUTCOME_OK``), which only the trailers that follow it can tell: the marker is
    kept when it arrives and checked by ``check_end_marker`` once they did (``_call_status``).
    Until then nothing after it is accepted, and the application sees no end of stream."""

    __slots__ = ("end_token",)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.end_token: bytes | None = None

    def open(self, token: bytes) -> bytes | None:
        if self.error is None and not self.ended and token[:1] == _END_BYTE:
            self.end_token = token
            self.ended = True
            return None
        return Inbound.open(self, token)

    def check_end_marker(self, suffix: bytes) -> None:
        """Verify the kept end marker, with ``suffix`` (``OUTCOME_OK``) or without."""
        if self.error is not None:
            raise self.error
        token = self.end_token
        try:
            if token is None:
                raise self._protection.altered("stream ended without its end marker (truncated)")
            self._protection.check_end(
                self._prefix, self._call_seq, self._direction, self.count, token, suffix
            )
        except Exception as exc:
            self.error = exc
            raise


_END_BYTE = bytes((END_MARKER_KIND,))
