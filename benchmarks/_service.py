"""The echo service every configuration is measured against, and the servers that host it.

Messages are raw bytes (no serializers), so the numbers are the transport's and the security
layer's, not protobuf's: the same handler functions run behind the plain server, the gRPC TLS
port and rpcsec's ``secure_server()``.

* ``Unary``: returns the request.
* ``Stream``: the request is ``count:u32 | size:u32``; answers ``count`` messages of ``size``
  bytes (built once and reused, so the handler costs nothing per message).

``ThreadCpu`` reads the CPU time of one server's worker threads (``CpuAccountingExecutor`` is a
pool it can find; ``rpcsec.grpc.secure_server()`` makes its own). In a sync gRPC server the
worker threads do all the Python work of a call -- interceptor behaviors, handshake steps,
handlers -- so it measures what the *server* spends per call or per handshake. The servers run
in their own process (``_server``), which reports these sums to the suite on request.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc

__all__ = [
    "SERVICE",
    "STREAM_METHOD",
    "UNARY_METHOD",
    "CpuAccountingExecutor",
    "ThreadCpu",
    "echo_handler",
    "echo_methods",
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


def echo_methods() -> dict[str, grpc.RpcMethodHandler]:
    return {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
    }


def echo_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, echo_methods())


class ThreadCpu:
    """CPU seconds the threads of one thread pool have spent so far: the per-thread CPU clocks
    (``pthread_getcpuclockid``) of the live threads named ``PREFIX_N`` (how
    ``ThreadPoolExecutor`` names its workers). The same method for every server, whoever
    made its pool -- ours, or ``rpcsec.grpc.secure_server()``'s (prefix ``rpcsec``) -- so it
    counts everything a worker thread does: the behavior (interceptor, handler, message
    protection), gRPC's sends from that thread, and taking the next work item."""

    def __init__(self, prefix: str) -> None:
        self._pattern = re.compile(re.escape(prefix) + r"_\d+")

    def threads(self) -> list[threading.Thread]:
        return [t for t in threading.enumerate() if self._pattern.fullmatch(t.name)]

    @property
    def cpu_seconds(self) -> float:
        total = 0.0
        for thread in self.threads():
            if thread.ident is None:
                continue
            with contextlib.suppress(OSError):  # it exited meanwhile
                total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        return total


_POOLS = itertools.count()


class CpuAccountingExecutor(futures.ThreadPoolExecutor):
    """A thread pool with a name of its own, so ``ThreadCpu`` finds its threads
    (``cpu_seconds``)."""

    def __init__(self, max_workers: int, thread_name_prefix: str | None = None) -> None:
        prefix = thread_name_prefix or f"bench-pool{next(_POOLS)}"
        super().__init__(max_workers=max_workers, thread_name_prefix=prefix)
        self._cpu = ThreadCpu(prefix)

    @property
    def cpu_seconds(self) -> float:
        return self._cpu.cpu_seconds


def start_server(
    interceptors: Iterable[grpc.ServerInterceptor] = (),
    *,
    max_workers: int = 16,
    tls: grpc.ServerCredentials | None = None,
    handlers: grpc.GenericRpcHandler | None = None,
) -> tuple[grpc.Server, CpuAccountingExecutor, int, int | None]:
    """A sync ``grpc.server`` with the echo service (or ``handlers`` in its place) on 127.0.0.1
    port 0 (and a TLS port if ``tls``). Returns the server, its executor, the insecure port and
    the TLS port."""
    executor = CpuAccountingExecutor(max_workers)
    server = grpc.server(
        executor,
        interceptors=list(interceptors),
        options=[("grpc.so_reuseport", 0)],
    )
    server.add_generic_rpc_handlers((handlers or echo_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    tls_port = server.add_secure_port("127.0.0.1:0", tls) if tls is not None else None
    server.start()
    return server, executor, port, tls_port
