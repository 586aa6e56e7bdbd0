"""The workloads: each runs once against one configuration and returns one sample.

The suite calls every workload for every configuration once per round (configurations in a
rotated order each round), so each workload's samples spread across the whole run and machine
drift hits every configuration alike. Sizes are chosen by ``Budget`` (full or ``--quick``).
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from ._configs import Config
from ._service import STREAM_METHOD, UNARY_METHOD, stream_request

__all__ = ["WORKLOADS", "Budget", "Workload"]

PAYLOAD = bytes(range(100))  # 100 B
STREAM_MESSAGE = 1 << 20  # 1 MiB
MiB = 1 << 20


@dataclass(frozen=True)
class Budget:
    """How much each workload does per sample."""

    rounds: int
    latency_calls: int
    throughput_seconds: float
    throughput_threads: int
    stream_bytes: int
    first_calls: int
    handshake_seconds: float
    handshake_threads: int
    memory_contexts: int
    interleave_latency: int = 1
    interleave_throughput: int = 1
    interleave_stream: int = 1

    @classmethod
    def full(cls) -> Budget:
        return cls(
            rounds=5,
            latency_calls=1500,
            throughput_seconds=2.0,
            throughput_threads=8,
            stream_bytes=64 * MiB,
            first_calls=15,
            handshake_seconds=1.5,
            handshake_threads=4,
            memory_contexts=10_000,
            interleave_latency=10,
            interleave_throughput=4,
            interleave_stream=6,
        )

    @classmethod
    def quick(cls) -> Budget:
        return cls(
            rounds=1,
            latency_calls=50,
            throughput_seconds=0.2,
            throughput_threads=8,
            stream_bytes=4 * MiB,
            first_calls=2,
            handshake_seconds=0.2,
            handshake_threads=2,
            memory_contexts=50,
        )


@dataclass(frozen=True)
class Workload:
    """One measurement: ``key`` in the results, its unit, and whether bigger is better."""

    key: str
    title: str
    unit: str
    higher_is_better: bool
    run: Callable[[Config, Budget, int], Any]
    rpcsec_only: bool = False
    slices: Callable[[Budget], int] = lambda budget: 1
    """How many slices a round's work is cut into: the suite runs slice 1 of every
    configuration, then slice 2, ..., so drift within a round hits all configurations alike."""
    combine: Callable[[Config, list[Any]], float | None] = lambda config, parts: parts[0]
    """The round's sample from its slices' results."""


def unary_latency_slice(config: Config, budget: Budget, slices: int) -> tuple[list[int], float]:
    """One client, one call at a time: round trips (ns) of a slice of ``latency_calls`` calls,
    and the server CPU seconds they used."""
    call = config.channel.unary_unary(UNARY_METHOD)
    for _ in range(5):
        call(PAYLOAD)
    samples = []
    clock = time.perf_counter_ns
    cpu_before = config.server_cpu()
    for _ in range(max(1, budget.latency_calls // slices)):
        start = clock()
        response = call(PAYLOAD)
        samples.append(clock() - start)
        if len(response) != len(PAYLOAD):
            raise AssertionError("echo returned the wrong payload")
    return samples, config.server_cpu() - cpu_before


def unary_latency_us(config: Config, parts: list[tuple[list[int], float]]) -> float:
    """The median round trip over the round's calls (all slices)."""
    samples = [sample for part, _cpu in parts for sample in part]
    _SERVER_CPU[config.name] = sum(cpu for _part, cpu in parts) / len(samples)
    return statistics.median(samples) / 1000


_SERVER_CPU: dict[str, float] = {}


def server_cpu_per_call_us(config: Config, budget: Budget, slices: int) -> float | None:
    """CPU time the server's thread pool spent per call during ``unary_latency_us`` (thread
    CPU time, so it does not count waiting for a core on a busy machine): the server's share
    of a unary call, handler, interceptor and message protection included."""
    spent = _SERVER_CPU.get(config.name)
    return None if spent is None else spent * 1e6


def unary_throughput_slice(config: Config, budget: Budget, slices: int) -> tuple[int, float]:
    """``throughput_threads`` client threads sharing one channel, each calling in a loop for a
    slice of ``throughput_seconds``: (completed calls, seconds)."""
    call = config.channel.unary_unary(UNARY_METHOD)
    threads = budget.throughput_threads
    counts = [0] * threads
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()

    def client(index: int) -> None:
        try:
            call(PAYLOAD)  # warm
            barrier.wait()
            done = 0
            while not stop.is_set():
                call(PAYLOAD)
                done += 1
            counts[index] = done
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            stop.set()
            barrier.abort()

    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    start = time.perf_counter()
    stop.wait(budget.throughput_seconds / slices)
    stop.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts), elapsed


def unary_throughput_cps(config: Config, parts: list[tuple[int, float]]) -> float:
    """Completed calls per second over the round's slices."""
    return sum(calls for calls, _ in parts) / sum(seconds for _, seconds in parts)


def stream_mbps(config: Config, budget: Budget, slices: int) -> float:
    """One server-streaming call of ``stream_bytes`` in 1 MiB messages: MB/s (10**6 B/s).
    Each slice is a whole stream (``interleave_stream`` per round, see ``stream_median``); the
    CPU it cost both ends is kept for ``stream_cpu_per_mib_us``."""
    call = config.channel.unary_stream(STREAM_METHOD)
    count = budget.stream_bytes // STREAM_MESSAGE
    for _ in call(stream_request(1, STREAM_MESSAGE)):  # warm buffers
        pass
    client, server = time.process_time(), config.server_cpu()
    start = time.perf_counter()
    received = 0
    for message in call(stream_request(count, STREAM_MESSAGE)):
        received += len(message)
    elapsed = time.perf_counter() - start
    spent = time.process_time() - client + config.server_cpu() - server
    if received != count * STREAM_MESSAGE:
        raise AssertionError(f"stream delivered {received} of {count * STREAM_MESSAGE} bytes")
    _STREAM_CPU.setdefault(config.name, []).append(spent / count)
    return received / elapsed / 1e6


_STREAM_CPU: dict[str, list[float]] = {}


def stream_cpu_per_mib_us(config: Config, budget: Budget, slices: int) -> float | None:
    """CPU both ends spent per MiB during the round's ``stream_MBps`` streams (median): this
    client process, every thread of it (gRPC's own included), plus the server's worker threads.
    CPU clocks do not count waiting for a core, so a busy machine moves this far less than MB/s.
    Not for the alternatives: part of their work is in proxy processes this does not see."""
    spent = _STREAM_CPU.pop(config.name, None)
    if not spent or config.alternative:
        return None
    return statistics.median(spent) * 1e6


def stream_median(config: Config, parts: list[float]) -> float:
    """The round's sample: the median of its ``interleave_stream`` streams, each taken in turn
    with every other configuration's. One 64 MiB stream lasts ~40 ms, so a single one per round
    measured whichever scheduler stall of a shared machine fell into it (samples of one
    configuration in one run spread 0.4-2.9 GB/s), and the ratio of two such samples could say
    0.65x or 1.3x for the same code."""
    return statistics.median(parts)


def first_call_ms(config: Config, budget: Budget, slices: int) -> float:
    """A new channel's first call, from nothing to the response: TCP connect, the TLS or rpcsec
    handshake, the call. Median over ``first_calls`` channels."""
    samples = []
    for _ in range(budget.first_calls):
        start = time.perf_counter()
        channel = config.fresh_channel()
        try:
            channel.unary_unary(UNARY_METHOD)(PAYLOAD)
            samples.append(time.perf_counter() - start)
        finally:
            channel.close()
    return statistics.median(samples) * 1000


class _HandshakeRun:
    """New channels to their first response, from several client threads for a while."""

    def __init__(self, config: Config, budget: Budget) -> None:
        self.config = config
        self.budget = budget
        self.count = 0
        self.elapsed = 0.0
        self.server_cpu = 0.0

    def run(self) -> None:
        config, budget = self.config, self.budget
        lock = threading.Lock()
        stop = threading.Event()
        errors: list[BaseException] = []
        done = [0]

        def client() -> None:
            try:
                while not stop.is_set():
                    channel = config.fresh_channel()
                    try:
                        channel.unary_unary(UNARY_METHOD)(PAYLOAD)
                    finally:
                        _close_quietly(channel)
                    with lock:
                        done[0] += 1
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        cpu_before = config.server_cpu()
        start = time.perf_counter()
        workers = [
            threading.Thread(target=client, daemon=True) for _ in range(budget.handshake_threads)
        ]
        for worker in workers:
            worker.start()
        stop.wait(budget.handshake_seconds)
        stop.set()
        for worker in workers:
            worker.join()
        self.elapsed = time.perf_counter() - start
        self.server_cpu = config.server_cpu() - cpu_before
        if errors:
            raise errors[0]
        self.count = done[0]


def _close_quietly(channel: Any) -> None:
    # An rpcsec channel's close() releases its server context first (one signed call): the
    # server then holds only the contexts of live channels. Its cost is counted like any other
    # server work of a binding.
    with contextlib.suppress(grpc.RpcError):
        channel.close()


_LAST_HANDSHAKE: dict[str, _HandshakeRun] = {}


def handshakes_per_s(config: Config, budget: Budget, slices: int) -> float:
    """New bindings completed per second, ``handshake_threads`` clients at once. A binding is
    a new channel's first call, as in ``first_call_ms``: plain = TCP + HTTP/2, TLS = + mutual
    TLS handshake, rpcsec = + the Negotiate exchange (the channel is then closed, which releases
    the server's context). Client and server processes share this machine's cores, so this is
    the machine's rate for both halves of every handshake."""
    run = _HandshakeRun(config, budget)
    run.run()
    _LAST_HANDSHAKE[config.name] = run
    return run.count / run.elapsed


def server_handshakes_per_core_s(config: Config, budget: Budget, slices: int) -> float | None:
    """Bindings per second one core could serve: bindings / server CPU seconds spent on them
    (the server's thread pool's CPU time during ``handshakes_per_s``: Negotiate, the first call
    and Release included). rpcsec only: gRPC's TLS handshakes run inside its C core, which this
    accounting cannot see."""
    run = _LAST_HANDSHAKE.get(config.name)
    if run is None or not config.rpcsec or run.server_cpu <= 0:
        return None
    return run.count / run.server_cpu


WORKLOADS: list[Workload] = [
    Workload(
        "unary_latency_us",
        "unary 100 B latency",
        "µs",
        False,
        unary_latency_slice,
        slices=lambda budget: budget.interleave_latency,
        combine=unary_latency_us,
    ),
    Workload(
        "server_cpu_per_call_us", "server CPU per unary call", "µs", False, server_cpu_per_call_us
    ),
    Workload(
        "unary_throughput_cps",
        "unary 100 B, 8 threads",
        "calls/s",
        True,
        unary_throughput_slice,
        slices=lambda budget: budget.interleave_throughput,
        combine=unary_throughput_cps,
    ),
    Workload(
        "stream_MBps",
        "stream 64 MiB in 1 MiB messages",
        "MB/s",
        True,
        stream_mbps,
        slices=lambda budget: budget.interleave_stream,
        combine=stream_median,
    ),
    Workload(
        "stream_cpu_per_mib_us",
        "CPU per MiB streamed, both ends",
        "µs",
        False,
        stream_cpu_per_mib_us,
    ),
    Workload("first_call_ms", "first call on a new channel", "ms", False, first_call_ms),
    Workload("handshakes_per_s", "new bindings per second", "1/s", True, handshakes_per_s),
    Workload(
        "server_handshakes_per_core_s",
        "bindings one server core serves",
        "1/s",
        True,
        server_handshakes_per_core_s,
        rpcsec_only=True,
    ),
]
