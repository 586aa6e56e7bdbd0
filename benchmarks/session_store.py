"""Micro-benchmark of the session layer's sans-IO parts: tickets and replay stores.

Medians per operation of: sealing and opening a context ticket (in-memory and directory
rings), refusing a tampered ticket and one naming an unknown key (a directory ring's miss
path: one stat), and ``claim`` on the memory store vs a real Redis (sync, one round trip;
asyncio sequential and 64 concurrent claims). Starts its own ``redis-server`` on loopback
unless ``--redis URL`` is given.

The sync Redis claim is measured paired (rounds interleaved, the machine's noise hits all
alike), wall, this process's CPU and Redis' CPU per claim: the memory store (baseline), the
claim as it was first (redis-py's ``Script`` on a ``BlockingConnectionPool``), then (the
thread's own redis-py connection, pre-encoded EVALSHA, hiredis), now (the thread's own
socket, ``rpcsec.session._redis_socket``: three system calls, the reply parsed strictly), over
TCP and over a unix socket, and a bare PING on each kind of connection (the round trip's
floor); plus Redis' own time per script call (``INFO commandstats``). Not a timed test: run
it by hand,

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

import grpc

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
    unix_url = None
    if redis_url is None:
        from helpers.redis_server import RedisServer

        redis_dir = tempfile.TemporaryDirectory()
        path = pathlib.Path(redis_dir.name) / "redis.sock"
        server = RedisServer(
            pathlib.Path(redis_dir.name),
            extra_args=("--unixsocket", str(path), "--unixsocketperm", "700"),
        ).start()
        redis_url, unix_url = server.url, f"unix://{path}"
    try:
        store = RedisReplayStore(redis_url, timeout=2.0, prefix="bench:")
        claims = _Claims()
        results["claim (redis, sync)"] = _median_us(
            lambda: store.claim(*claims.next()), repeat, max(batch // 4, 50)
        )
        pid = server.process.pid if server is not None and server.process else None
        results["claim paired (wall | cpu us)"] = _paired_claims(
            store, repeat, batch, unix_url, pid
        )
        store.close()
        results.update(asyncio.run(_async_claims(redis_url, repeat, max(batch // 4, 50))))
    finally:
        if server is not None:
            server.stop()
    return results


def _paired_claims(
    store: RedisReplayStore,
    repeat: int,
    batch: int,
    unix_url: str | None = None,
    redis_pid: int | None = None,
) -> dict[str, Any]:
    """Interleaved rounds of each way to claim (see the module doc); medians of wall and CPU
    microseconds per claim (this process's, and Redis' from /proc when it is ours), and
    Redis' own microseconds per script call."""
    import redis  # the report says whether hiredis parsed redis-py's replies

    from rpcsec.session._redis_store import _ThreadConnections
    from rpcsec.session._resp import encode_command

    memory = MemoryReplayStore()
    memory_claims, before_claims, after_claims = _Claims(), _Claims(), _Claims()
    layout = store._layout
    script = store._claim_script

    def before() -> None:  # what claim() did first: redis-py's Script on the pool
        ticket, seq, expires = before_claims.next()
        call = layout.claim_call(ticket, seq, expires, None)
        assert not isinstance(call, ReplayVerdict)
        keys, args = call
        assert layout.verdict(script(keys=keys, args=args)) is ReplayVerdict.FRESH

    # The previous claim: pre-encoded, on the thread's own redis-py Connection.
    redis_py = RedisReplayStore(store.client, prefix="bench:")
    redis_py._resp, redis_py._connections = None, _ThreadConnections.of(store.client)
    redis_py_claims = _Claims()
    assert store._resp is not None and redis_py._connections is not None
    ping_redis_py = redis_py._connections.get()
    ping_resp = store._resp.get()
    ping_request = encode_command(b"PING")

    def ping_redis_py_op() -> None:
        ping_redis_py.send_command("PING", check_health=False)
        ping_redis_py.read_response()

    operations: dict[str, Callable[[], object]] = {
        "memory": lambda: memory.claim(*memory_claims.next()),
        "redis-py Script on a pool (first)": before,
        "redis-py own connection, pre-encoded (previous)": lambda: redis_py.claim(
            *redis_py_claims.next()
        ),
        "own RESP socket, TCP (now)": lambda: store.claim(*after_claims.next()),
        "redis-py PING (its round-trip floor)": ping_redis_py_op,
        "own RESP socket PING (round-trip floor)": lambda: ping_resp.exchange(ping_request),
    }
    unix = None
    if unix_url is not None:
        unix = RedisReplayStore(unix_url, timeout=2.0, prefix="bench:")
        unix_claims = _Claims()
        operations["own RESP socket, unix socket"] = lambda: unix.claim(*unix_claims.next())

    def redis_cpu() -> float:
        if redis_pid is None:
            return 0.0
        return _process_cpu_seconds(redis_pid)

    count = max(batch // 4, 50)
    wall: dict[str, list[float]] = {name: [] for name in operations}
    cpu: dict[str, list[float]] = {name: [] for name in operations}
    server_cpu: dict[str, list[float]] = {name: [] for name in operations}
    for operation in operations.values():
        for _ in range(count):
            operation()
    store.client.config_resetstat()
    for _ in range(repeat):
        for name, operation in operations.items():
            started, started_cpu, started_redis = (
                time.perf_counter(),
                time.process_time(),
                redis_cpu(),
            )
            for _ in range(count):
                operation()
            wall[name].append((time.perf_counter() - started) / count * 1e6)
            cpu[name].append((time.process_time() - started_cpu) / count * 1e6)
            server_cpu[name].append(redis_cpu() - started_redis)
    stats = store.client.info("commandstats").get("cmdstat_evalsha", {})
    out: dict[str, Any] = {
        name: {
            "wall": statistics.median(wall[name]),
            "cpu": statistics.median(cpu[name]),
            # Redis' CPU in 10 ms ticks: summed over the rounds, not a median of rounds
            "redis_cpu": sum(server_cpu[name]) / (count * repeat) * 1e6 if redis_pid else None,
        }
        for name in operations
    }
    out["redis server us per script call"] = float(stats.get("usec_per_call", 0.0))
    out["hiredis"] = bool(redis.utils.HIREDIS_AVAILABLE)
    redis_py.close()
    if unix is not None:
        unix.close()
    return out


async def _async_claims(url: str, repeat: int, batch: int) -> dict[str, Any]:
    """The asyncio store, sequential and 64 concurrent claims, in paired rounds: claims on its
    own asyncio protocol (``_resp``, now) and on redis.asyncio connections (previous); wall
    and this process's CPU per claim."""
    from rpcsec.session._redis_store import _redis_py_connections

    now = AsyncRedisReplayStore(url, timeout=2.0, prefix="bench:")
    previous = AsyncRedisReplayStore(url, timeout=2.0, prefix="bench:")
    previous._resp = None
    previous._connections = _redis_py_connections(previous.client, 32, 2.0)
    stores = {"own asyncio protocol (now)": now, "redis.asyncio connection (previous)": previous}
    claims = _Claims()

    async def concurrent(store: AsyncRedisReplayStore) -> None:
        await asyncio.gather(*(store.claim(*claims.next()) for _ in range(64)))

    shapes: dict[str, tuple[Callable[[AsyncRedisReplayStore], Awaitable[object]], int]] = {
        "sequential": (lambda store: store.claim(*claims.next()), 1),
        "64 concurrent": (concurrent, 64),
    }
    samples: dict[str, dict[str, list[float]]] = {}
    for operation, per in shapes.values():
        for store in stores.values():
            for _ in range(max(batch // per, 3)):  # warm up, connections opened
                await operation(store)
    for _ in range(repeat):
        for shape, (operation, per) in shapes.items():
            count = max(batch // per, 3)
            for name, store in stores.items():
                started, started_cpu = time.perf_counter(), time.process_time()
                for _ in range(count):
                    await operation(store)
                record = samples.setdefault(f"claim (redis, aio, {shape}): {name}", {})
                done = count * per
                record.setdefault("wall", []).append((time.perf_counter() - started) / done * 1e6)
                record.setdefault("cpu", []).append(
                    (time.process_time() - started_cpu) / done * 1e6
                )
    for store in stores.values():
        await store.aclose()
    return {
        key: {metric: statistics.median(values) for metric, values in record.items()}
        for key, record in samples.items()
    }


# -- where the replica overhead goes (``--topologies``) ----------------------------------------

TOPOLOGY_CALLS = 400


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (``/proc/PID/stat``, 10 ms ticks)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _MetadataRecorder(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """A client interceptor under rpcsec's channel: the sizes of the ``rpcsec-*`` metadata
    entries its last call carried (the ticket, the call entry), so a plain gRPC channel can
    send the same bytes through the same proxy."""

    def __init__(self) -> None:
        self.sizes: list[tuple[str, int]] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.sizes = [
            (str(key), len(value))
            for key, value in (details.metadata or ())
            if str(key).startswith("rpcsec-")
        ]
        return continuation(details, request)


TOPOLOGY_LAYOUTS = {
    "1 process, memory store": ("single", "memory", False),
    "Envoy RR -> 3 processes, ring dir + memory stores (replays NOT refused cluster-wide)": (
        "three",
        "memory",
        True,
    ),
    "Envoy RR -> 3 processes, ring dir + Redis (TCP)": ("three", "tcp", True),
    "Envoy RR -> 3 processes, ring dir + Redis (unix socket)": ("three", "unix", True),
}
"""Name -> (processes, replay store, behind Envoy). The memory-store replica row is a
measurement only: each replica refuses only the replays it saw itself, never a deployment."""


def topologies(rounds: int, calls: int = TOPOLOGY_CALLS) -> dict[str, Any]:
    """Paired unary calls in topologies that add one thing at a time: one server process with
    the memory store (the suite's single-process row); Envoy round-robin over three processes
    sharing a ticket key ring but each with its own memory store (what the replicas cost without
    any shared store); the same with the Redis store over TCP (the suite's ``envoy_rr3`` row),
    and over a unix socket. Kinds: plain gRPC, plain gRPC carrying random bytes of the sizes of
    rpcsec's per-call metadata (what the ticket costs gRPC and Envoy, no security), rpcsec x509
    INTEGRITY. Per call: median latency, server CPU (the handler pools), Envoy CPU, Redis CPU,
    and the bytes Envoy moved on each direction of both legs (HPACK-compressed headers plus
    frames). Rounds interleave every (topology, kind)."""

    from . import _configs
    from ._alternatives import replica_interceptor_kwargs
    from ._pki import make_pki
    from ._proxies import ENVOY_BYTES, envoy_bytes
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
        socket_path = directory / "redis.sock"
        redis = RedisServer(
            directory / "redis",
            extra_args=("--unixsocket", str(socket_path), "--unixsocketperm", "700"),
        ).start()
        stack.callback(redis.stop)
        assert redis.process is not None
        redis_pid = redis.process.pid
        env = dict(os.environ)
        store_urls = {"memory": None, "tcp": redis.url, "unix": f"unix://{socket_path}"}

        def processes(count: int, store: str) -> list[ServerProcess]:
            spec = _configs.server_spec(pki, [identity])
            spec["interceptor_kwargs"] = replica_interceptor_kwargs(directory, store_urls[store])
            if store == "memory" and count == 1:
                spec["interceptor_kwargs"] = {}
            started = []
            for _ in range(count):
                server = ServerProcess(spec, env)
                stack.callback(server.stop)
                started.append(server)
            return started

        groups: dict[tuple[str, str], list[ServerProcess]] = {}
        for processes_kind, store, _proxied in TOPOLOGY_LAYOUTS.values():
            if (processes_kind, store) not in groups:
                groups[(processes_kind, store)] = processes(
                    3 if processes_kind == "three" else 1, store
                )

        def envoy(servers: list[ServerProcess], port_kind: str) -> Any:
            upstreams = [f"127.0.0.1:{server.ports[port_kind]}" for server in servers]
            proxy = proxies.envoy_proxy(upstreams, directory / "envoy", concurrency=2)
            stack.callback(proxy.stop)
            return proxy

        targets: dict[tuple[str, str], tuple[Any, Any, list[ServerProcess], str]] = {}
        recorder = _MetadataRecorder()
        for name, (processes_kind, store, proxied) in TOPOLOGY_LAYOUTS.items():
            servers = groups[(processes_kind, store)]
            kinds = (
                ("plain", "plain + rpcsec's metadata bytes", "rpcsec")
                if proxied
                else ("plain", "rpcsec")
            )
            balancers: dict[str, Any] = {}
            for kind in kinds:
                port_kind = "rpcsec" if kind == "rpcsec" else "plain"
                if proxied and port_kind not in balancers:
                    balancers[port_kind] = envoy(servers, port_kind)
                proxy = balancers.get(port_kind)
                address = proxy.address if proxy else f"127.0.0.1:{servers[0].ports[port_kind]}"
                if kind == "rpcsec":
                    channel = secure_channel(
                        address,
                        identity.client(),
                        target_name=identity.target,
                        requirements=ContextReq(identity.requirements),
                        protection=ProtectionLevel.INTEGRITY,
                        options=_configs.FRESH,
                    )
                else:
                    channel = grpc.insecure_channel(address, options=_configs.FRESH)
                stack.callback(channel.close)
                targets[(name, kind)] = (
                    channel.unary_unary(UNARY_METHOD),
                    proxy,
                    servers,
                    port_kind,
                )

        # The sizes of rpcsec's per-call metadata, from a channel of its own (an intercepted
        # channel costs a few microseconds per call: the measured ones are not intercepted).
        first = next(target for key, target in targets.items() if key[1] == "rpcsec")
        address = first[1].address if first[1] else f"127.0.0.1:{first[2][0].ports['rpcsec']}"
        with grpc.intercept_channel(grpc.insecure_channel(address), recorder) as base:
            recording = secure_channel(
                base,
                identity.client(),
                target_name=identity.target,
                requirements=ContextReq(identity.requirements),
                protection=ProtectionLevel.INTEGRITY,
            )
            for _ in range(2):  # the second call: a bound channel's
                recording.unary_unary(UNARY_METHOD)(PAYLOAD)
        sizes = list(recorder.sizes)
        out["rpcsec metadata per call"] = sizes
        metadata = tuple((key, os.urandom(size)) for key, size in sizes)
        for key, (call, proxy, servers, port_kind) in list(targets.items()):
            if key[1] == "plain + rpcsec's metadata bytes":
                plain_call = call
                targets[key] = (
                    lambda payload, c=plain_call: c(payload, metadata=metadata),
                    proxy,
                    servers,
                    port_kind,
                )

        samples: dict[tuple[str, str], dict[str, list[float]]] = {
            key: {
                "latency": [],
                "server_cpu": [],
                "envoy_cpu": [],
                "redis_cpu": [],
                **{k: [] for k in ENVOY_BYTES},
            }
            for key in targets
        }
        for call, _proxy, _servers, _port_kind in targets.values():
            for _ in range(50):  # bind, open tickets on every replica, fill HPACK tables
                call(PAYLOAD)
        for _ in range(rounds):
            for key, (call, proxy, servers, port_kind) in targets.items():
                cpu = sum(server.cpu_seconds()[port_kind] for server in servers)
                envoy_cpu = proxy.cpu_seconds() if proxy else 0.0
                redis_cpu = _process_cpu_seconds(redis_pid)
                moved = envoy_bytes(proxy) if proxy else {}
                latencies = []
                for _ in range(calls):
                    started = time.perf_counter()
                    call(PAYLOAD)
                    latencies.append(time.perf_counter() - started)
                record = samples[key]
                record["latency"].append(statistics.median(latencies) * 1e6)
                spent = sum(server.cpu_seconds()[port_kind] for server in servers) - cpu
                record["server_cpu"].append(spent / calls * 1e6)
                record["redis_cpu"].append(
                    (_process_cpu_seconds(redis_pid) - redis_cpu) / calls * 1e6
                )
                if proxy:
                    record["envoy_cpu"].append((proxy.cpu_seconds() - envoy_cpu) / calls * 1e6)
                    for direction, total in envoy_bytes(proxy).items():
                        record[direction].append((total - moved[direction]) / calls)
        for (name, kind), record in samples.items():
            out.setdefault(name, {})[kind] = {
                metric: statistics.median(values) if values else None
                for metric, values in record.items()
            }
    return out


def _print_topologies(results: dict[str, Any]) -> None:
    print("unary 100 B, medians of paired rounds, per call; ratio = to plain in the same row:")
    sizes = results.get("rpcsec metadata per call", [])
    print("  rpcsec's metadata per call: " + ", ".join(f"{k} {n} B" for k, n in sizes))
    header = f"  {'topology / kind':60s} {'latency us':>10s} {'ratio':>6s} {'server cpu':>10s}"
    print(
        header + f" {'envoy cpu':>9s} {'redis cpu':>9s} {'cl->envoy B':>11s} {'envoy->up B':>11s}"
        f" {'up->envoy B':>11s} {'envoy->cl B':>11s}"
    )

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    for name, kinds in results.items():
        if not isinstance(kinds, dict):
            continue
        print(f"  {name}")
        plain = kinds["plain"]["latency"]
        for kind, row in kinds.items():
            print(
                f"    {kind:58s} {cell(row['latency']):>10s} {row['latency'] / plain:5.2f}x"
                f" {cell(row['server_cpu']):>10s} {cell(row['envoy_cpu']):>9s}"
                f" {cell(row['redis_cpu']):>9s} {cell(row['rx']):>11s} {cell(row['tx']):>11s}"
                f" {cell(row['up_rx']):>11s} {cell(row['down_tx']):>11s}"
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
    parser.add_argument(
        "--calls",
        type=int,
        default=TOPOLOGY_CALLS,
        help=f"calls per (topology, kind) per round (default {TOPOLOGY_CALLS}); more calls "
        "resolve the CPU columns finer (10 ms ticks)",
    )
    args = parser.parse_args(argv)
    if args.topologies:
        found = topologies(args.topologies, args.calls)
        _print_topologies(found)
        if args.json:
            args.json.write_text(json.dumps(found, indent=2))
        return 0
    results = run(quick=args.quick, state_bytes=args.state_bytes, redis_url=args.redis)
    print(f"ticket: {results['ticket_bytes']} B for {results['state_bytes']} B of state")
    for key, value in results.items():
        if isinstance(value, dict) and "median" in value:
            print(f"  {key:44s} median {value['median']:9.2f} us  (min {value['min']:.2f})")
    print("asyncio claims, paired rounds (median us per claim):")
    for key, value in results.items():
        if isinstance(value, dict) and "wall" in value and key.startswith("claim (redis, aio"):
            print(f"  {key:72s} wall {value['wall']:8.1f}   cpu {value['cpu']:7.1f}")
    paired = results.get("claim paired (wall | cpu us)", {})
    print("sync claim, paired rounds (median us per claim):")
    for key, value in paired.items():
        if isinstance(value, dict):
            redis_cpu = value.get("redis_cpu")
            server = "" if redis_cpu is None else f"   redis cpu {redis_cpu:7.1f}"
            print(f"  {key:48s} wall {value['wall']:8.1f}   cpu {value['cpu']:7.1f}{server}")
    if paired:
        print(f"  Redis' own time per script call: {paired['redis server us per script call']} us")
        print(f"  hiredis (redis-py's parser): {paired['hiredis']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
