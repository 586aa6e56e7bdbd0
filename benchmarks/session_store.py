"""Micro-benchmark of the session layer's sans-IO parts: tickets and replay stores.

Medians per operation of: sealing and opening a context ticket (in-memory and directory
rings), refusing a tampered ticket and one naming an unknown key (a directory ring's miss
path: one stat), and ``claim`` on the memory store vs a real Redis (sync, one round trip;
asyncio sequential and 64 concurrent claims). Starts its own ``redis-server`` on loopback
unless ``--redis URL`` is given.

The sync Redis claim is measured paired (rounds interleaved, the machine's noise hits all
alike), wall and this process's CPU per claim: the memory store (baseline), the claim as it
was before (redis-py's ``Script`` on a ``BlockingConnectionPool``), the claim as it is (the
thread's own connection, pre-encoded EVALSHA, hiredis when installed), and a bare redis-py
PING on the same kind of connection (the round trip's floor); plus Redis' own time per
script call (``INFO commandstats``). Not a timed test: run it by hand,

    python -m benchmarks.session_store [--quick] [--state-bytes 600] [--json out.json]
    python -m benchmarks.session_store --topologies 3     # where the replica overhead goes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
    ReplayVerdict,
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
        results["claim paired (wall | cpu us)"] = _paired_claims(store, repeat, batch)
        store.close()
        results.update(asyncio.run(_async_claims(redis_url, repeat, max(batch // 4, 50))))
    finally:
        if server is not None:
            server.stop()
    return results


def _paired_claims(store: RedisReplayStore, repeat: int, batch: int) -> dict[str, Any]:
    """Interleaved rounds of each way to claim (see the module doc); medians of wall and CPU
    microseconds per claim, and Redis' own microseconds per script call."""
    import redis  # the report says whether hiredis parsed the replies (the [redis] extra)

    memory = MemoryReplayStore()
    memory_claims, before_claims, after_claims = _Claims(), _Claims(), _Claims()
    layout = store._layout
    script = store._claim_script

    def before() -> None:  # what claim() did before: redis-py's Script on the pool
        ticket, seq, expires = before_claims.next()
        call = layout.claim_call(ticket, seq, expires, None)
        assert not isinstance(call, ReplayVerdict)
        keys, args = call
        assert layout.verdict(script(keys=keys, args=args)) is ReplayVerdict.FRESH

    ping_connection = store._connections.get() if store._connections else None

    def ping() -> None:
        assert ping_connection is not None
        ping_connection.send_command("PING", check_health=False)
        ping_connection.read_response()

    operations: dict[str, Callable[[], object]] = {
        "memory": lambda: memory.claim(*memory_claims.next()),
        "redis before (Script on a pool)": before,
        "redis after (own connection, pre-encoded)": lambda: store.claim(*after_claims.next()),
        "redis PING (round-trip floor)": ping,
    }
    count = max(batch // 4, 50)
    wall: dict[str, list[float]] = {name: [] for name in operations}
    cpu: dict[str, list[float]] = {name: [] for name in operations}
    for operation in operations.values():
        for _ in range(count):
            operation()
    store.client.config_resetstat()
    for _ in range(repeat):
        for name, operation in operations.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            for _ in range(count):
                operation()
            wall[name].append((time.perf_counter() - started) / count * 1e6)
            cpu[name].append((time.process_time() - started_cpu) / count * 1e6)
    stats = store.client.info("commandstats").get("cmdstat_evalsha", {})
    out: dict[str, Any] = {
        name: {"wall": statistics.median(wall[name]), "cpu": statistics.median(cpu[name])}
        for name in operations
    }
    out["redis server us per script call"] = float(stats.get("usec_per_call", 0.0))
    out["hiredis"] = bool(redis.utils.HIREDIS_AVAILABLE)
    return out


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


# -- where the replica overhead goes (``--topologies``) ----------------------------------------

TOPOLOGY_CALLS = 400


_ENVOY_BYTES = {
    "rx": "http.grpc.downstream_cx_rx_bytes_total",  # client -> Envoy (requests)
    "tx": "cluster.upstreams.upstream_cx_tx_bytes_total",  # Envoy -> replicas
    "up_rx": "cluster.upstreams.upstream_cx_rx_bytes_total",  # replicas -> Envoy (responses)
    "down_tx": "http.grpc.downstream_cx_tx_bytes_total",  # Envoy -> client
}


def _envoy_bytes(proxy: Any) -> dict[str, int]:
    """Bytes Envoy moved so far, each direction of each leg (``_ENVOY_BYTES``)."""
    from helpers import proxies

    _status, body = proxies._admin_get(proxy.admin_port, "/stats?format=json")
    stats = {s["name"]: s.get("value", 0) for s in json.loads(body)["stats"] if "name" in s}
    return {key: int(stats.get(name, 0)) for key, name in _ENVOY_BYTES.items()}


def topologies(rounds: int, calls: int = TOPOLOGY_CALLS) -> dict[str, Any]:
    """Paired unary calls, plain gRPC vs rpcsec x509 INTEGRITY, in four topologies that add
    one thing at a time: one server process with the memory store (the suite's single-process
    row); the same with the replicas' options (a ticket key ring directory and the Redis
    store); Envoy in front of that one process; Envoy round-robin over three processes (the
    suite's ``envoy_rr3`` row). Per call: median latency, server CPU (the handler pools),
    Envoy CPU, and the bytes Envoy moved on each direction of both legs (HPACK-compressed
    headers plus frames). Rounds interleave every (topology, kind)."""
    import grpc

    from . import _configs
    from ._alternatives import replica_interceptor_kwargs
    from ._pki import make_pki
    from ._server import ServerProcess
    from ._service import UNARY_METHOD
    from ._workloads import PAYLOAD

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
    from helpers import proxies
    from helpers.redis_server import RedisServer

    from rpcsec.grpc import secure_channel
    from rpcsec.sspi import ContextReq, ProtectionLevel

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as workdir, contextlib.ExitStack() as stack:
        directory = pathlib.Path(workdir)
        pki = make_pki(directory)
        identity = _configs._x509_identity(pki)
        redis = RedisServer(directory / "redis").start()
        stack.callback(redis.stop)
        env = dict(os.environ)

        def processes(count: int, kwargs: dict[str, Any]) -> list[ServerProcess]:
            spec = _configs.server_spec(pki, [identity])
            spec["interceptor_kwargs"] = kwargs
            started = []
            for _ in range(count):
                server = ServerProcess(spec, env)
                stack.callback(server.stop)
                started.append(server)
            return started

        replica_kwargs = replica_interceptor_kwargs(directory, redis.url)
        single = processes(1, {})
        single_redis = processes(1, replica_kwargs)
        three = processes(3, replica_kwargs)

        def envoy(servers: list[ServerProcess], kind: str) -> Any:
            upstreams = [f"127.0.0.1:{server.ports[kind]}" for server in servers]
            proxy = proxies.envoy_proxy(upstreams, directory / "envoy", concurrency=2)
            stack.callback(proxy.stop)
            return proxy

        layouts: dict[str, tuple[list[ServerProcess], bool]] = {
            "1 process, memory store": (single, False),
            "1 process, ring dir + Redis": (single_redis, False),
            "Envoy -> 1 process, ring dir + Redis": (single_redis, True),
            "Envoy RR -> 3 processes, ring dir + Redis": (three, True),
        }
        targets: dict[tuple[str, str], tuple[Any, Any, list[ServerProcess]]] = {}
        for name, (servers, proxied) in layouts.items():
            for kind in ("plain", "rpcsec"):
                proxy = envoy(servers, kind) if proxied else None
                address = proxy.address if proxy else f"127.0.0.1:{servers[0].ports[kind]}"
                if kind == "plain":
                    channel = grpc.insecure_channel(address, options=_configs.FRESH)
                else:
                    channel = secure_channel(
                        address,
                        identity.client(),
                        target_name=identity.target,
                        requirements=ContextReq(identity.requirements),
                        protection=ProtectionLevel.INTEGRITY,
                        options=_configs.FRESH,
                    )
                stack.callback(channel.close)
                targets[(name, kind)] = (channel.unary_unary(UNARY_METHOD), proxy, servers)

        samples: dict[tuple[str, str], dict[str, list[float]]] = {
            key: {"latency": [], "server_cpu": [], "envoy_cpu": [], **{k: [] for k in _ENVOY_BYTES}}
            for key in targets
        }
        for call, _proxy, _servers in targets.values():
            for _ in range(50):  # bind, open tickets on every replica, fill HPACK tables
                call(PAYLOAD)
        for _ in range(rounds):
            for key, (call, proxy, servers) in targets.items():
                kind = key[1]
                cpu = sum(server.cpu_seconds()[kind] for server in servers)
                envoy_cpu = proxy.cpu_seconds() if proxy else 0.0
                moved = _envoy_bytes(proxy) if proxy else {}
                latencies = []
                for _ in range(calls):
                    started = time.perf_counter()
                    call(PAYLOAD)
                    latencies.append(time.perf_counter() - started)
                record = samples[key]
                record["latency"].append(statistics.median(latencies) * 1e6)
                spent = sum(server.cpu_seconds()[kind] for server in servers) - cpu
                record["server_cpu"].append(spent / calls * 1e6)
                if proxy:
                    record["envoy_cpu"].append((proxy.cpu_seconds() - envoy_cpu) / calls * 1e6)
                    for direction, total in _envoy_bytes(proxy).items():
                        record[direction].append((total - moved[direction]) / calls)
        for (name, kind), record in samples.items():
            out.setdefault(name, {})[kind] = {
                metric: statistics.median(values) if values else None
                for metric, values in record.items()
            }
    return out


def _print_topologies(results: dict[str, Any]) -> None:
    print("unary 100 B, plain gRPC / rpcsec x509 INTEGRITY, medians of paired rounds, per call:")
    header = f"  {'topology':44s} {'latency us':>17s} {'ratio':>6s} {'server cpu us':>15s}"
    print(
        header + f" {'envoy cpu us':>13s} {'client->envoy B':>16s} {'envoy->up B':>12s}"
        f" {'up->envoy B':>12s} {'envoy->client B':>16s}"
    )
    for name, kinds in results.items():
        plain, rpcsec = kinds["plain"], kinds["rpcsec"]
        cells = {}
        for metric in ("latency", "server_cpu", "envoy_cpu", *_ENVOY_BYTES):
            values = [plain[metric], rpcsec[metric]]
            cells[metric] = "-" if None in values else "/".join(f"{v:.0f}" for v in values)
        ratio = rpcsec["latency"] / plain["latency"]
        print(
            f"  {name:44s} {cells['latency']:>17s} {ratio:5.2f}x {cells['server_cpu']:>15s}"
            f" {cells['envoy_cpu']:>13s} {cells['rx']:>16s} {cells['tx']:>12s}"
            f" {cells['up_rx']:>12s} {cells['down_tx']:>16s}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--state-bytes", type=int, default=600, help="sealed state size")
    parser.add_argument("--redis", metavar="URL", help="use this Redis instead of starting one")
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument(
        "--topologies",
        type=int,
        metavar="ROUNDS",
        help="instead: where the replicas' overhead goes (four topologies, paired rounds)",
    )
    args = parser.parse_args(argv)
    if args.topologies:
        found = topologies(args.topologies)
        _print_topologies(found)
        if args.json:
            args.json.write_text(json.dumps(found, indent=2))
        return 0
    results = run(quick=args.quick, state_bytes=args.state_bytes, redis_url=args.redis)
    print(f"ticket: {results['ticket_bytes']} B for {results['state_bytes']} B of state")
    for key, value in results.items():
        if isinstance(value, dict) and "median" in value:
            print(f"  {key:44s} median {value['median']:9.2f} us  (min {value['min']:.2f})")
    paired = results.get("claim paired (wall | cpu us)", {})
    print("sync claim, paired rounds (median us per claim):")
    for key, value in paired.items():
        if isinstance(value, dict):
            print(f"  {key:44s} wall {value['wall']:8.1f}   cpu {value['cpu']:7.1f}")
    if paired:
        print(f"  Redis' own time per script call: {paired['redis server us per script call']} us")
        print(f"  hiredis: {paired['hiredis']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
