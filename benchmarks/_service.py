"""The echo service every configuration is measured against, and the servers that host it.

Messages are raw bytes (no serializers), so the numbers are the transport's and the security
layer's, not protobuf's: the same handler functions run behind the plain server, the gRPC TLS
port and the rpcsec ``SecurityInterceptor``.

* ``Unary``: returns the request.
* ``Stream``: the request is ``count:u32 | size:u32``; answers ``count`` messages of ``size``
  bytes (built once and reused, so the handler costs nothing per message).

``CpuAccountingExecutor`` is the servers' thread pool: it adds up the CPU time (``thread_time``)
of every piece of work the gRPC server gives it. In a sync gRPC server that is all the Python
work of a call -- interceptor behaviors, handshake steps, handlers -- so it measures what the
*server* spends per call or per handshake. The servers run in their own process (``_server``),
which reports these sums to the suite on request.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc

__all__ = [
    "SERVICE",
    "STREAM_METHOD",
    "UNARY_METHOD",
    "CpuAccountingExecutor",
    "echo_handler",
    "start_server",
    "stream_request",
]

SERVICE = "rpcsec.bench.v1.Echo"
UNARY_METHOD = f"/{SERVICE}/Unary"
STREAM_METHOD = f"/{SERVICE}/Stream"
_STREAM_REQUEST = struct.Struct(">II")
_MAX_STREAM_BYTES = 1 << 30


def stream_request(count: int, size: int) -> bytes:
    return _STREAM_REQUEST.pack(count, size)


def _unary(request: bytes, context: Any) -> bytes:
    return request


class _Payloads:
    """One prebuilt payload per size, so streaming measures moving bytes, not making them."""

    def __init__(self) -> None:
        self._cache: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def get(self, size: int) -> bytes:
        payload = self._cache.get(size)
        if payload is None:
            with self._lock:
                payload = self._cache.setdefault(size, bytes(size))
        return payload


_PAYLOADS = _Payloads()


def _stream(request: bytes, context: Any) -> Iterator[bytes]:
    count, size = _STREAM_REQUEST.unpack(request)
    if count * size > _MAX_STREAM_BYTES:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "stream too large")
    payload = _PAYLOADS.get(size)
    for _ in range(count):
        yield payload


def echo_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        },
    )


class CpuAccountingExecutor(futures.ThreadPoolExecutor):
    """A thread pool that sums the CPU time its work items use (``cpu_seconds``)."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "bench-server") -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._cpu = 0.0
        self._cpu_lock = threading.Lock()

    @property
    def cpu_seconds(self) -> float:
        return self._cpu

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        def measured() -> Any:
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.thread_time() - start
                with self._cpu_lock:
                    self._cpu += spent

        return super().submit(measured)


def start_server(
    interceptors: Iterable[grpc.ServerInterceptor] = (),
    *,
    max_workers: int = 16,
    tls: grpc.ServerCredentials | None = None,
) -> tuple[grpc.Server, CpuAccountingExecutor, int, int | None]:
    """A sync ``grpc.server`` with the echo service on 127.0.0.1 port 0 (and a TLS port if
    ``tls``). Returns the server, its executor, the insecure port and the TLS port."""
    executor = CpuAccountingExecutor(max_workers)
    server = grpc.server(
        executor,
        interceptors=list(interceptors),
        options=[("grpc.so_reuseport", 0)],
    )
    server.add_generic_rpc_handlers((echo_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    tls_port = server.add_secure_port("127.0.0.1:0", tls) if tls is not None else None
    server.start()
    return server, executor, port, tls_port
