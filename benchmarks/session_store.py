"""Micro-benchmark of the session layer's sans-IO parts: tickets and replay stores.

Medians per operation of: sealing and opening a context ticket (in-memory and directory
rings), refusing a tampered ticket and one naming an unknown key (a directory ring's miss
path: one stat), and ``claim`` on the memory store vs a real Redis (sync, one round trip;
asyncio sequential and 64 concurrent claims). Starts its own ``redis-server`` on loopback
unless ``--redis URL`` is given. Not a timed test: run it by hand,

    python -m benchmarks.session_store [--quick] [--state-bytes 600] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

from rpcsec.session import (
    AsyncRedisReplayStore,
    MemoryReplayStore,
    RedisReplayStore,
    TicketKeyRing,
)
from rpcsec.sspi import InvalidHandleError


def _median_us(operation: Callable[[], object], repeat: int, batch: int) -> dict[str, float]:
    for _ in range(batch):  # warm up
        operation()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(batch):
            operation()
        samples.append((time.perf_counter() - start) / batch * 1e6)
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


async def _amedian_us(
    operation: Callable[[], Awaitable[object]], repeat: int, batch: int
) -> dict[str, float]:
    for _ in range(batch):
        await operation()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(batch):
            await operation()
        samples.append((time.perf_counter() - start) / batch * 1e6)
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def _refuse(ring: TicketKeyRing, ticket: bytes) -> Callable[[], None]:
    def operation() -> None:
        try:
            ring.open(ticket)
        except InvalidHandleError:
            return
        raise AssertionError("a bad ticket opened")

    return operation


class _Claims:
    """A fresh (ticket, sequence) per call, so every claim is a FRESH write."""

    def __init__(self) -> None:
        self.ticket = os.urandom(16)
        self.seq = 0
        self.expires = time.time() + 3600

    def next(self) -> tuple[bytes, int, float]:
        self.seq += 1
        return self.ticket, self.seq, self.expires


def run(*, quick: bool, state_bytes: int, redis_url: str | None) -> dict[str, Any]:
    repeat, batch = (5, 200) if quick else (15, 2000)
    results: dict[str, Any] = {}
    state = os.urandom(state_bytes)
    expires = time.time() + 3600

    with tempfile.TemporaryDirectory() as workdir:
        memory_ring = TicketKeyRing.generate()
        directory = pathlib.Path(workdir) / "ring"
        TicketKeyRing.create(directory)
        dir_ring = TicketKeyRing.load(directory)
        ticket = memory_ring.seal(state, ticket_id=os.urandom(16), expires_at=expires)
        dir_ticket = dir_ring.seal(state, ticket_id=os.urandom(16), expires_at=expires)
        results["ticket_bytes"] = len(ticket)
        results["state_bytes"] = state_bytes
        results["seal (memory ring)"] = _median_us(
            lambda: memory_ring.seal(state, ticket_id=b"t" * 16, expires_at=expires), repeat, batch
        )
        results["open (memory ring)"] = _median_us(lambda: memory_ring.open(ticket), repeat, batch)
        results["open (directory ring)"] = _median_us(
            lambda: dir_ring.open(dir_ticket), repeat, batch
        )
        tampered = ticket[:-1] + bytes([ticket[-1] ^ 1])
        results["refuse tampered"] = _median_us(_refuse(memory_ring, tampered), repeat, batch)
        unknown = dir_ticket[:1] + os.urandom(16) + dir_ticket[17:]
        results["refuse unknown key (dir stat)"] = _median_us(
            _refuse(dir_ring, unknown), repeat, batch
        )

    memory = MemoryReplayStore()
    claims = _Claims()
    results["claim (memory)"] = _median_us(lambda: memory.claim(*claims.next()), repeat, batch)

    server = None
    if redis_url is None:
        from helpers.redis_server import RedisServer

        redis_dir = tempfile.TemporaryDirectory()
        server = RedisServer(pathlib.Path(redis_dir.name)).start()
        redis_url = server.url
    try:
        store = RedisReplayStore(redis_url, timeout=2.0, prefix="bench:")
        claims = _Claims()
        results["claim (redis, sync)"] = _median_us(
            lambda: store.claim(*claims.next()), repeat, max(batch // 4, 50)
        )
        store.close()
        results.update(asyncio.run(_async_claims(redis_url, repeat, max(batch // 4, 50))))
    finally:
        if server is not None:
            server.stop()
    return results


async def _async_claims(url: str, repeat: int, batch: int) -> dict[str, Any]:
    store = AsyncRedisReplayStore(url, timeout=2.0, prefix="bench:")
    claims = _Claims()
    out: dict[str, Any] = {}
    out["claim (redis, aio)"] = await _amedian_us(
        lambda: store.claim(*claims.next()), repeat, batch
    )

    async def concurrent() -> None:
        await asyncio.gather(*(store.claim(*claims.next()) for _ in range(64)))

    timing = await _amedian_us(concurrent, repeat, max(batch // 64, 3))
    out["claim (redis, aio, 64 concurrent, per claim)"] = {k: v / 64 for k, v in timing.items()}
    await store.aclose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--state-bytes", type=int, default=600, help="sealed state size")
    parser.add_argument("--redis", metavar="URL", help="use this Redis instead of starting one")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args(argv)
    results = run(quick=args.quick, state_bytes=args.state_bytes, redis_url=args.redis)
    print(f"ticket: {results['ticket_bytes']} B for {results['state_bytes']} B of state")
    for key, value in results.items():
        if isinstance(value, dict):
            print(f"  {key:44s} median {value['median']:9.2f} us  (min {value['min']:.2f})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
