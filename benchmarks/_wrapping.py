"""The decomposition's first step: the gRPC-level work of rpcsec's wrapping, without security.

What a protected unary call costs gRPC itself, apart from anything rpcsec computes: the client
sends the ``-bin`` metadata rpcsec sends (same keys, same value sizes: the context handle or
ticket, the call entry, ...) through a client-side wrapper around the multicallable
(``with_call``, as rpcsec's client does, so the call object is made, and its trailers read when
the response carries some -- rpcsec's plain call reads none when the outcome is folded into
the response); the
request and response messages carry the same number of extra bytes as rpcsec's tokens; the
server's handler is re-wrapped bytes-in/bytes-out (reads the invocation metadata, strips the
request's extra bytes, calls the echo behavior, sets the same trailing metadata, adds the
response's extra bytes). No key, no check, no crypto.

Two ways to put the re-wrapped handler in front of the service, each its own server:

* ``wrap_generic``: registered once as a ``grpc.GenericRpcHandler`` (no interceptor);
* ``wrap_interceptor``: a pass-through ``grpc.ServerInterceptor`` whose ``intercept_service``
  returns the cached re-wrapped handler (what ``SecurityInterceptor`` does per call).

The sizes are not assumed: ``ShapeRecorder`` (a server interceptor in front of a real
``SecurityInterceptor``) records them from real rpcsec calls in the server process, which then
hands them to the re-wrapped servers (``Shape``) and, through the suite, to the client wrapper.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

__all__ = [
    "Shape",
    "ShapeRecorder",
    "WrappedClient",
    "wrapped_generic_handler",
    "wrapped_interceptor",
]

OWN_PREFIX = "rpcsec-"


@dataclass
class Shape:
    """What rpcsec puts around one unary call, by size: its own request metadata entries, the
    extra bytes of the request and response messages, its trailing and initial metadata."""

    request_metadata: list[tuple[str, int]] = field(default_factory=list)
    request_overhead: int = 0
    response_overhead: int = 0
    trailing_metadata: list[tuple[str, int]] = field(default_factory=list)
    initial_metadata: list[tuple[str, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items()}

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> Shape:
        shape = cls(**fields)
        for name in ("request_metadata", "trailing_metadata", "initial_metadata"):
            setattr(shape, name, [(str(k), int(n)) for k, n in getattr(shape, name)])
        return shape


def _entries(shape: Sequence[tuple[str, int]]) -> tuple[tuple[str, bytes | str], ...]:
    return tuple((key, bytes(size) if key.endswith("-bin") else "x" * size) for key, size in shape)


def _sizes(metadata: Sequence[Any] | None) -> list[tuple[str, int]]:
    return [
        (str(key), len(value)) for key, value in (metadata or ()) if str(key).startswith(OWN_PREFIX)
    ]


class _RecordingContext:
    """The servicer context rpcsec's behavior gets: forwards everything, records the metadata
    it sets."""

    def __init__(self, context: Any, record: dict[str, Any]) -> None:
        self._context = context
        self._record = record

    def set_trailing_metadata(self, metadata: Sequence[Any]) -> None:
        self._record["trailing_metadata"] = _sizes(metadata)
        self._context.set_trailing_metadata(metadata)

    def send_initial_metadata(self, metadata: Sequence[Any]) -> None:
        self._record["initial_metadata"] = _sizes(metadata)
        self._context.send_initial_metadata(metadata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class ShapeRecorder(grpc.ServerInterceptor):
    """Put before a ``SecurityInterceptor``: records, for every call of the echo ``Unary``
    method, the sizes ``Shape`` holds (the last call's is the one used)."""

    def __init__(self, payload_size: int) -> None:
        self.payload_size = payload_size
        self.shapes: list[Shape] = []
        self._lock = threading.Lock()

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None or not details.method.endswith("/Unary"):
            return handler
        behavior = handler.unary_unary
        request_metadata = _sizes(details.invocation_metadata)

        def record(request: bytes, context: Any) -> bytes:
            seen: dict[str, Any] = {}
            response = behavior(request, _RecordingContext(context, seen))
            shape = Shape(
                request_metadata=request_metadata,
                request_overhead=len(request) - self.payload_size,
                response_overhead=len(response) - self.payload_size,
                trailing_metadata=seen.get("trailing_metadata", []),
                initial_metadata=seen.get("initial_metadata", []),
            )
            with self._lock:
                self.shapes.append(shape)
            return response

        return grpc.unary_unary_rpc_method_handler(record)


class _Rewrapped:
    """The re-wrapped behaviors over one service's handlers, made once per method."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self._own = {key for key, _ in shape.request_metadata}
        self._trailing = _entries(shape.trailing_metadata)
        self._initial = _entries(shape.initial_metadata)
        self._cut = shape.request_overhead
        self._pad = bytes(shape.response_overhead)
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Unary-unary handlers only get the re-wrapping (the ladder measures unary calls)."""
        if handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary
        own, trailing, initial = self._own, self._trailing, self._initial
        cut, pad = self._cut, self._pad

        def unary_unary(request: bytes, context: Any) -> bytes:
            found = [value for key, value in context.invocation_metadata() if key in own]
            if len(found) != len(own):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing wrapping metadata")
            if initial:
                context.send_initial_metadata(initial)
            response = behavior(request[cut:] if cut > 0 else request, context)
            if trailing:
                context.set_trailing_metadata(trailing)
            return response + pad

        return grpc.unary_unary_rpc_method_handler(unary_unary)

    def cached(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        wrapped = self._cache.get(method)
        if wrapped is None:
            wrapped = self._cache.setdefault(method, self.wrap(handler))
        return wrapped


class _GenericHandler(grpc.GenericRpcHandler):
    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._handlers = handlers

    def service(self, details: Any) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(details.method)


def wrapped_generic_handler(
    shape: Shape, service: str, handlers: dict[str, grpc.RpcMethodHandler]
) -> grpc.GenericRpcHandler:
    """The service's handlers re-wrapped once, at registration, as one generic handler."""
    rewrapped = _Rewrapped(shape)
    return _GenericHandler(
        {f"/{service}/{name}": rewrapped.wrap(handler) for name, handler in handlers.items()}
    )


class _PassThrough(grpc.ServerInterceptor):
    def __init__(self, shape: Shape) -> None:
        self._rewrapped = _Rewrapped(shape)

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        return self._rewrapped.cached(details.method, handler)


def wrapped_interceptor(shape: Shape) -> grpc.ServerInterceptor:
    """A pass-through interceptor returning the cached re-wrapped handler on every call."""
    return _PassThrough(shape)


class _WrappedMultiCallable:
    """The client wrapper: the extra request bytes and metadata in, ``with_call``, the
    trailers read if the server sends some, the response's extra bytes out."""

    def __init__(self, raw: Any, shape: Shape) -> None:
        self._raw = raw
        self._metadata = _entries(shape.request_metadata)
        self._pad = bytes(max(shape.request_overhead, 0))
        self._cut = shape.response_overhead
        self._trailers = bool(shape.trailing_metadata)

    def __call__(self, request: bytes, timeout: float | None = None) -> bytes:
        response, call = self._raw.with_call(
            self._pad + request, timeout=timeout, metadata=self._metadata
        )
        if self._trailers:
            call.trailing_metadata()
        return response[: len(response) - self._cut] if self._cut > 0 else response


class WrappedClient:
    """A channel whose ``unary_unary`` gives the wrapper (only what the workloads use)."""

    def __init__(self, channel: grpc.Channel, shape: Shape) -> None:
        self._channel = channel
        self._shape = shape

    def unary_unary(self, method: str) -> _WrappedMultiCallable:
        return _WrappedMultiCallable(self._channel.unary_unary(method), self._shape)

    def close(self) -> None:
        self._channel.close()
