"""An attacker on the wire, for the gRPC binding's tests.

``Wiretap`` is a client interceptor on the *raw* channel under a secure channel, so it sees
exactly the bytes and metadata that cross the network: it records every call, and can alter,
reorder, drop or substitute request and response messages before they are sent or delivered.
``craft_call`` builds a call from the documented wire format (``rpcsec.grpc._wire``
docstring), independently of the binding's own code, so the tests also pin that format.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from rpcsec.sspi import ProtectionLevel, SecurityContext

__all__ = [
    "AioForger",
    "ForgedRefusal",
    "Recorded",
    "Wiretap",
    "call_aad",
    "craft_call",
    "craft_stream_call",
    "flip",
    "message_aad",
    "open_aad",
]


def flip(data: bytes, index: int = -1) -> bytes:
    """``data`` with one bit of byte ``index`` flipped."""
    mutable = bytearray(data)
    mutable[index] ^= 0x01
    return bytes(mutable)


@dataclass
class Recorded:
    method: str
    metadata: tuple[tuple[str, Any], ...]
    requests: list[bytes] = field(default_factory=list)
    responses: list[bytes] = field(default_factory=list)

    def value(self, key: str) -> Any:
        return next(v for k, v in self.metadata if k == key)


Transform = Callable[[str, list[bytes]], list[bytes]]


class _Outcome(grpc.Call, grpc.Future):
    """A finished unary call whose response the attacker replaced."""

    def __init__(self, real: Any, response: bytes) -> None:
        self._real = real
        self._response = response

    def result(self, timeout: float | None = None) -> bytes:
        self._real.result(timeout)
        return self._response

    def exception(self, timeout: float | None = None) -> Any:
        return self._real.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        return self._real.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._real.add_done_callback(lambda _: fn(self))

    def cancel(self) -> bool:
        return self._real.cancel()

    def cancelled(self) -> bool:
        return self._real.cancelled()

    def running(self) -> bool:
        return self._real.running()

    def done(self) -> bool:
        return self._real.done()

    def initial_metadata(self) -> Any:
        return self._real.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._real.trailing_metadata()

    def code(self) -> Any:
        return self._real.code()

    def details(self) -> Any:
        return self._real.details()

    def is_active(self) -> bool:
        return self._real.is_active()

    def time_remaining(self) -> Any:
        return self._real.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._real.add_callback(callback)


class _Responses(grpc.Call):
    """A response stream the attacker rewrote (all of it is read first, then replayed)."""

    def __init__(self, real: Any, messages: list[bytes]) -> None:
        self._real = real
        self._messages = iter(messages)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._messages)

    def initial_metadata(self) -> Any:
        return self._real.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._real.trailing_metadata()

    def code(self) -> Any:
        return self._real.code()

    def details(self) -> Any:
        return self._real.details()

    def is_active(self) -> bool:
        return self._real.is_active()

    def time_remaining(self) -> Any:
        return self._real.time_remaining()

    def cancel(self) -> bool:
        return self._real.cancel()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._real.add_callback(callback)


_FORGED_CODES = {"busy": grpc.StatusCode.RESOURCE_EXHAUSTED}


def forged_code(reason: str) -> grpc.StatusCode:
    """The status an rpcsec server would send with ``reason`` (what a forger imitates)."""
    return _FORGED_CODES.get(reason, grpc.StatusCode.UNAUTHENTICATED)


class ForgedRefusal(grpc.RpcError, grpc.Call, grpc.Future):
    """What a man in the middle returns *after the real call ran*: the server's answer thrown
    away and replaced by an unsigned refusal (``rpcsec-reason: <reason>`` in the trailers)."""

    def __init__(self, reason: str, extra: tuple[tuple[str, Any], ...] = ()) -> None:
        super().__init__()
        self._reason = reason
        self._extra = extra

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        raise self

    def result(self, timeout: float | None = None) -> bytes:
        raise self

    def exception(self, timeout: float | None = None) -> Any:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def initial_metadata(self) -> Any:
        return ()

    def trailing_metadata(self) -> Any:
        return (("rpcsec-reason", self._reason), *self._extra)

    def code(self) -> Any:
        return forged_code(self._reason)

    def details(self) -> Any:
        return f"rpcsec: {self._reason}"

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> Any:
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


class Wiretap(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Records every call; ``requests`` / ``responses`` / ``metadata`` rewrite them."""

    def __init__(self) -> None:
        self.calls: list[Recorded] = []
        self.requests: Transform | None = None
        self.responses: Transform | None = None
        self.metadata: Callable[[str, tuple], tuple] | None = None
        # ``forge(method) -> reason | None``: let the call run to completion on the server,
        # then hand the client a forged refusal instead of the server's answer.
        self.forge: Callable[[str], str | None] | None = None
        self.forge_trailers: tuple[tuple[str, Any], ...] = ()  # added to each forged refusal

    def _forged(self, method: str) -> str | None:
        if self.forge is None or "SecurityHandshake" in method:
            return None
        return self.forge(method)

    def app_calls(self) -> list[Recorded]:
        return [c for c in self.calls if "SecurityHandshake" not in c.method]

    def _details(self, details: Any, record: Recorded) -> Any:
        metadata = tuple(details.metadata or ())
        record.metadata = metadata
        if self.metadata is not None:
            metadata = self.metadata(details.method, metadata)
        return details._replace(metadata=metadata)

    def _start(self, details: Any) -> Recorded:
        record = Recorded(details.method, ())
        self.calls.append(record)
        return record

    def _rewrite_requests(self, method: str, messages: list[bytes]) -> list[bytes]:
        return messages if self.requests is None else self.requests(method, messages)

    def _rewrite_responses(self, method: str, messages: list[bytes]) -> list[bytes]:
        return messages if self.responses is None else self.responses(method, messages)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        record = self._start(client_call_details)
        details = self._details(client_call_details, record)
        record.requests.append(request)
        (request,) = self._rewrite_requests(record.method, [request])
        outcome = continuation(details, request)
        if outcome.exception() is not None:
            return outcome
        forged = self._forged(record.method)
        if forged is not None:
            return ForgedRefusal(forged, self.forge_trailers)
        response = outcome.result()
        record.responses.append(response)
        (rewritten,) = self._rewrite_responses(record.method, [response])
        return outcome if rewritten is response else _Outcome(outcome, rewritten)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        record = self._start(client_call_details)
        details = self._details(client_call_details, record)
        record.requests.append(request)
        (request,) = self._rewrite_requests(record.method, [request])
        call = continuation(details, request)
        return self._response_stream(record, call)

    def _response_stream(self, record: Recorded, call: Any) -> Any:
        forged = self._forged(record.method)
        if self.responses is None and forged is None:
            return call
        try:
            messages = list(call)
        except grpc.RpcError:
            return call
        record.responses.extend(messages)
        if forged is not None:
            return ForgedRefusal(forged, self.forge_trailers)
        return _Responses(call, self._rewrite_responses(record.method, messages))

    def _request_stream(self, record: Recorded, request_iterator) -> Iterator[bytes]:
        messages = list(request_iterator)
        record.requests.extend(messages)
        return iter(self._rewrite_requests(record.method, messages))

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        record = self._start(client_call_details)
        details = self._details(client_call_details, record)
        if "SecurityHandshake" in record.method:
            return continuation(details, request_iterator)
        outcome = continuation(details, self._request_stream(record, request_iterator))
        if outcome.exception() is not None:
            return outcome
        forged = self._forged(record.method)
        if forged is not None:
            return ForgedRefusal(forged, self.forge_trailers)
        response = outcome.result()
        record.responses.append(response)
        (rewritten,) = self._rewrite_responses(record.method, [response])
        return outcome if rewritten is response else _Outcome(outcome, rewritten)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        record = self._start(client_call_details)
        details = self._details(client_call_details, record)
        if "SecurityHandshake" in record.method:
            return continuation(details, request_iterator)  # the handshake is interactive
        call = continuation(details, self._request_stream(record, request_iterator))
        return self._response_stream(record, call)


def _is_handshake(details: Any) -> bool:
    method = details.method
    return (b"SecurityHandshake" if isinstance(method, bytes) else "SecurityHandshake") in method


class AioForger:
    """The asyncio man in the middle: each application call runs to completion on the
    server, then the client gets ``grpc.aio.AioRpcError`` with a forged refusal instead.

    ``grpc.aio`` files each interceptor under one call kind only, so ``interceptors`` is one
    object per kind, all forging for this instance."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.forged = 0
        self.interceptors = [
            _AioForgeUnaryUnary(self),
            _AioForgeUnaryStream(self),
            _AioForgeStreamUnary(self),
            _AioForgeStreamStream(self),
        ]

    def error(self) -> grpc.aio.AioRpcError:
        self.forged += 1
        return grpc.aio.AioRpcError(
            forged_code(self.reason),
            grpc.aio.Metadata(),
            grpc.aio.Metadata(("rpcsec-reason", self.reason)),
            f"rpcsec: {self.reason}",
        )

    async def drained(self, call: Any) -> Any:
        async for _message in call:
            pass
        raise self.error()
        yield b""  # pragma: no cover  (an async generator)


class _AioForgeUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, forger: AioForger) -> None:
        self.forger = forger

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        call = await continuation(client_call_details, request)
        if _is_handshake(client_call_details):
            return call
        await call
        raise self.forger.error()


class _AioForgeStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, forger: AioForger) -> None:
        self.forger = forger

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        call = await continuation(client_call_details, request_iterator)
        await call
        raise self.forger.error()


class _AioForgeUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, forger: AioForger) -> None:
        self.forger = forger

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        call = await continuation(client_call_details, request)
        return self.forger.drained(call)


class _AioForgeStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, forger: AioForger) -> None:
        self.forger = forger

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        call = await continuation(client_call_details, request_iterator)
        if _is_handshake(client_call_details):
            return call
        return self.forger.drained(call)


# -- the documented wire format, written out independently ----------------------------------

_POSITION = struct.Struct(">BI")


def _method(method: str) -> bytes:
    raw = method.encode()
    return len(raw).to_bytes(2, "big") + raw


def call_aad(handle: bytes, level: ProtectionLevel, method: str) -> bytes:
    return b"rpcsec call v1\x00" + handle + bytes([int(level)]) + _method(method)


def message_aad(handle: bytes, method: str, call_seq: bytes, direction: int, index: int) -> bytes:
    return (
        b"rpcsec msg v1\x00"
        + handle
        + _method(method)
        + call_seq
        + _POSITION.pack(direction, index)
    )


def open_aad(handle: bytes, method: str) -> bytes:
    return b"rpcsec open v1\x00" + handle + _method(method)


def craft_call(
    context: SecurityContext,
    handle: bytes,
    method: str,
    payload: bytes,
    level: ProtectionLevel = ProtectionLevel.INTEGRITY,
    *,
    aad_method: str | None = None,
) -> tuple[tuple[tuple[str, bytes], ...], bytes, bytes]:
    """A single-request call as a correct client sends it: (metadata, request token,
    call_seq). ``aad_method`` protects it for another method (a cut-and-paste attempt)."""
    token = context.wrap(
        payload,
        aad=open_aad(handle, aad_method or method),
        encrypt=level is ProtectionLevel.PRIVACY,
    )
    return (("rpcsec-context-bin", handle),), token, token[1:9]


def craft_stream_call(
    context: SecurityContext,
    handle: bytes,
    method: str,
    payloads: list[bytes],
    level: ProtectionLevel = ProtectionLevel.INTEGRITY,
    *,
    header_method: str | None = None,
) -> tuple[tuple[tuple[str, bytes], ...], list[bytes], bytes]:
    """A request-streaming call: (metadata with the call header, request tokens ending with
    the end marker, call_seq). ``header_method`` signs the header for another method."""
    header = context.sign(b"", aad=call_aad(handle, level, header_method or method))
    call_seq = header[1:9]
    encrypt = level is ProtectionLevel.PRIVACY
    tokens = [
        context.wrap(p, aad=message_aad(handle, method, call_seq, 0x01, i), encrypt=encrypt)
        for i, p in enumerate(payloads)
    ]
    tokens.append(context.sign(b"", aad=message_aad(handle, method, call_seq, 0x81, len(payloads))))
    metadata = (
        ("rpcsec-context-bin", handle),
        ("rpcsec-call-bin", bytes([int(level)]) + header),
    )
    return metadata, tokens, call_seq
