"""N replicas of the echo service, each a real process on its own loopback port.

DESIGN §8: services run as replicas behind a load balancer and restart one by one. A test of
that needs processes that share nothing but what a deployment shares (an authority directory,
a keytab, a ticket key ring, a Redis), so each replica is ``python -m helpers.replica_main``
(see there for the child's protocol) and the launcher waits for its ``READY`` line, never a
sleep::

    with start_replicas(3, tmp_path, security=ReplicaSecurity.x509(pki, "documents")) as group:
        channel = grpc.insecure_channel(round_robin_target(group.addresses), ...)
        ...
        group.restart(0)                      # same port: the proxies' upstreams stay valid
        assert group.max_executions() == 1    # no call ran twice, across the restart too
        assert set(group.served_by().values()) ...

A graceful restart behind a balancer that health-checks (``group.restart(i, balancers=[envoy])``)
drains first, as a rolling update does: the replica's health service turns NOT_SERVING, the
restart waits until every balancer's own view of that host says unhealthy (its admin API,
readiness, not a sleep), then stops the server with ``grace`` and starts it again, and waits
until every balancer sees it healthy before returning (so at most one replica is ever out).

Every handler execution is logged by the replica (``counts-NAME.jsonl`` in the group's
directory), so ``executions()`` says how often each (method, request id) ran, where, as whom,
and with which request metadata (what a proxy added). ``ContinuousTraffic`` keeps calls going
from background threads while a test restarts replicas, and waits on their progress.
A stopping replica drains like a pod (``grace``); ``Replica.kill()`` is a crash.

``interceptor_kwargs`` is any JSON object and goes verbatim to ``SecurityInterceptor(**kwargs)``
in every replica: options the session layer adds (a ticket key ring directory, a replay store
URL, trusted proxies) need no change here, e.g.
``interceptor_kwargs={"ticket_keys": str(ring), "replay_store": "redis://127.0.0.1:6390/0"}``.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import pathlib
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ContinuousTraffic",
    "Execution",
    "Replica",
    "ReplicaGroup",
    "ReplicaSecurity",
    "start_replicas",
]

READY = "READY "
DRAINING = "DRAINING"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
TESTS = pathlib.Path(__file__).resolve().parent.parent
ROOT = TESTS.parent


@dataclass(frozen=True)
class ReplicaSecurity:
    """What a secured replica acquires: ``acquire_credentials_handle(package, principal,
    INBOUND, **options)``, plus the environment it needs (``KRB5_CONFIG`` for kerberos)."""

    package: str
    principal: str | None
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def x509(cls, pki: Any, service: str = "documents") -> ReplicaSecurity:
        """A service of a ``helpers.pki`` authority (every replica holds the same identity)."""
        return cls("x509", None, {"authority_dir": str(pki.path), "name": service})

    @classmethod
    def kerberos(
        cls, realm: Any, service: str = "storage", rcache: str | None = None
    ) -> ReplicaSecurity:
        """A service of a ``tests/kdc.py`` realm: its keytab, a replay cache (an MIT name,
        ``file2:PATH``; replicas given the same one share it, RFC 4120 §3.2.3), the lab's
        ``krb5.conf``. Replicas share the keytab (as a Kubernetes secret would be shared)."""
        return cls(
            "kerberos",
            realm.service_principal(service),
            {"keytab": realm.keytab(service), "rcache": rcache or realm.rcache(service)},
            {"KRB5_CONFIG": str(realm.lab.krb5_conf)},
        )

    def to_json(self) -> dict[str, Any]:
        return {"package": self.package, "principal": self.principal, "options": dict(self.options)}


@dataclass(frozen=True)
class Execution:
    """One handler execution a replica logged."""

    replica: str
    method: str
    id: str
    principal: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    # rpcsec servers: the metadata no signature covers (what a proxy added)
    unverified: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, line: str) -> Execution:
        fields = json.loads(line)
        return cls(**{name: fields[name] for name in cls.__dataclass_fields__ if name in fields})


class Replica:
    """One replica process. ``stop()`` / ``start()`` restart it on the same port."""

    def __init__(self, name: str, spec: dict[str, Any], env: Mapping[str, str]) -> None:
        self.name = name
        self._spec = spec
        self._env = dict(env)
        self.port: int = int(spec.get("port", 0))
        self.health_port: int = int(spec.get("health_port", 0))
        self.pid: int | None = None
        self._process: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def health_address(self) -> str:
        """The plaintext port of its ``grpc.health.v1.Health`` service."""
        return f"127.0.0.1:{self.health_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the process (on the port it had before, once it had one) and wait for its
        READY line."""
        if self.running:
            raise RuntimeError(f"replica {self.name} is already running")
        spec = {**self._spec, "port": self.port, "health_port": self.health_port}
        process = subprocess.Popen(
            [sys.executable, "-m", "helpers.replica_main"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=self._env,
            cwd=str(TESTS),
        )
        self._process = process
        try:
            assert process.stdin is not None
            process.stdin.write(json.dumps(spec) + "\n")
            process.stdin.flush()
            line = self._read_line(process, READY)
            ready = json.loads(line[len(READY) :])
        except BaseException:
            self.kill()
            raise
        self.port, self.pid = int(ready["port"]), int(ready["pid"])
        self.health_port = int(ready["health_port"])

    def drain(self) -> None:
        """First step of a graceful stop: its health service says NOT_SERVING (balancers that
        health-check stop sending it new calls) while it still serves whatever arrives.
        Returns once the child confirms (``DRAINING``): once it is quiet, which it learns from
        the health checks it answers -- something (a balancer) must be checking it."""
        process = self._process
        if process is None or process.poll() is not None:
            raise RuntimeError(f"replica {self.name} is not running")
        assert process.stdin is not None
        process.stdin.write("DRAIN\n")
        process.stdin.flush()
        self._read_line(process, DRAINING)

    def _read_line(self, process: subprocess.Popen[str], wanted: str) -> str:
        stdout = process.stdout
        assert stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"replica {self.name}: no {wanted.strip()} within {START_TIMEOUT:.0f} s"
                )
            readable, _, _ = select.select([stdout], [], [], remaining)
            if not readable:
                continue
            line = stdout.readline()
            if not line:
                code = process.wait(STOP_TIMEOUT)
                raise RuntimeError(
                    f"replica {self.name} exited (code {code}) before {wanted.strip()}"
                )
            if line.startswith(wanted):
                return line.rstrip("\n")

    def stop(self) -> None:
        """Graceful stop: close its stdin (the child stops its server and exits)."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.close()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close(process)

    def kill(self) -> None:
        """SIGKILL: a replica that crashes (nothing flushed, nothing released)."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        self._close(process)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _close(self, process: subprocess.Popen[str]) -> None:
        for stream in (process.stdin, process.stdout):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()
        self._process = None


class ReplicaGroup:
    """The replicas of one service, their addresses, and what their handlers executed."""

    def __init__(self, replicas: Sequence[Replica], directory: pathlib.Path) -> None:
        self.replicas = list(replicas)
        self.directory = directory

    def __enter__(self) -> ReplicaGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __len__(self) -> int:
        return len(self.replicas)

    def __getitem__(self, index: int) -> Replica:
        return self.replicas[index]

    @property
    def addresses(self) -> list[str]:
        return [replica.address for replica in self.replicas]

    @property
    def ports(self) -> list[int]:
        return [replica.port for replica in self.replicas]

    @property
    def health_ports(self) -> list[int]:
        """Each replica's health-service port, in the order of ``addresses``."""
        return [replica.health_port for replica in self.replicas]

    def restart(self, index: int, *, balancers: Sequence[Any] = ()) -> None:
        """Stop replica ``index`` and start it again on the same port (a rolling restart is
        ``for i in range(len(group)): group.restart(i)`` between bursts of traffic).

        ``balancers``: proxies that health-check the replicas (``helpers.proxies.Proxy`` with
        ``wait_for_host``); the restart is then a graceful drain: NOT_SERVING, wait until each
        balancer holds the host unhealthy and has no request in flight to it, stop
        (``grace``), start, wait until each holds it healthy again."""
        replica = self.replicas[index]
        if not balancers:
            replica.restart()
            return
        replica.drain()
        for balancer in balancers:
            balancer.wait_for_host(replica.address, healthy=False)
            # What it had already sent is answered before the server stops: a call the
            # server holds unstarted at shutdown is cancelled (gRPC core), not refused.
            balancer.wait_for_idle(replica.address)
        replica.stop()
        replica.start()
        for balancer in balancers:
            balancer.wait_for_host(replica.address, healthy=True)

    def stop(self) -> None:
        errors: list[BaseException] = []
        for replica in self.replicas:
            try:
                replica.stop()
            except BaseException as exc:  # stop every replica, then report
                errors.append(exc)
        if errors:
            raise errors[0]

    def executions(self) -> list[Execution]:
        """Every handler execution logged so far, all replicas, restarts included."""
        found: list[Execution] = []
        for path in sorted(self.directory.glob("counts-*.jsonl")):
            for line in path.read_text().splitlines():
                if line:
                    found.append(Execution.from_json(line))
        return found

    def counts(self) -> collections.Counter[tuple[str, str]]:
        """How often each (method, request id) ran, over all replicas."""
        return collections.Counter((e.method, e.id) for e in self.executions())

    def max_executions(self) -> int:
        """The most times any one (method, request id) ran: 1 when no call ran twice."""
        return max(self.counts().values(), default=0)

    def served_by(self, method: str | None = None) -> collections.Counter[str]:
        """How many handler executions each replica ran (optionally for one method)."""
        return collections.Counter(
            e.replica for e in self.executions() if method is None or e.method == method
        )

    def reset_counts(self) -> None:
        """Forget what ran so far (the readiness probes of a proxy, a warm-up)."""
        for path in self.directory.glob("counts-*.jsonl"):
            with path.open("r+") as handle:
                handle.truncate(0)


def start_replicas(
    count: int,
    directory: os.PathLike[str] | str,
    *,
    security: ReplicaSecurity | None = None,
    interceptor_kwargs: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    max_workers: int = 16,
    grace: float | None = 5.0,
    prefix: str = "r",
) -> ReplicaGroup:
    """Start ``count`` replicas of the echo service (plain gRPC, or behind a
    ``SecurityInterceptor`` when ``security`` is given) and wait until each is READY.

    ``directory`` holds the execution logs. ``interceptor_kwargs`` must be JSON. ``grace``:
    how long a stopping replica lets calls in flight finish (None: cancel them at once, like a
    crash that still closes its sockets; ``Replica.kill()`` is the hard crash)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    if security is None and interceptor_kwargs:
        raise ValueError("interceptor_kwargs need security")
    base = pathlib.Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(TESTS), str(ROOT), child_env.get("PYTHONPATH")])
    )
    if security is not None:
        child_env.update(security.env)
    child_env.update(env or {})
    replicas = []
    for index in range(count):
        name = f"{prefix}{index}"
        spec = {
            "name": name,
            "port": 0,
            "count_file": str(base / f"counts-{name}.jsonl"),
            "security": security.to_json() if security is not None else None,
            "interceptor_kwargs": dict(interceptor_kwargs or {}),
            "max_workers": max_workers,
            "grace": grace,
            "health_port": 0,
        }
        json.dumps(spec)  # fail here, in the caller, when the kwargs are not JSON
        replicas.append(Replica(name, spec, child_env))
    group = ReplicaGroup(replicas, base)
    try:
        for replica in replicas:
            replica.start()
    except BaseException:
        with contextlib.suppress(Exception):
            group.stop()
        raise
    return group


class ContinuousTraffic:
    """Calls in a loop from background threads until stopped, for "under continuous traffic"
    scenarios (rolling restarts, key rotation, a store going away)::

        def call(request_id: str) -> None:
            assert stub.Say(EchoRequest(text=request_id), timeout=5).text == request_id

        with ContinuousTraffic(call, threads=4) as traffic:
            for index in range(len(group)):
                group.restart(index)
                traffic.wait_for_successes(20)   # progress after each restart, not a sleep
        assert traffic.failures == []

    ``call(request_id)`` raises on failure; every request id is unique (``PREFIX-N``), so a
    group's ``counts()`` tells whether any ran twice. Failures are kept as (id, exception).
    """

    def __init__(
        self, call: Callable[[str], object], *, threads: int = 2, prefix: str = "t"
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._call = call
        self._threads = [
            threading.Thread(target=self._run, name=f"traffic-{i}", daemon=True)
            for i in range(threads)
        ]
        self._ids = (f"{prefix}-{n}" for n in itertools.count())
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self.succeeded: list[str] = []
        self.failures: list[tuple[str, BaseException]] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                request_id = next(self._ids)
            try:
                self._call(request_id)
            except Exception as exc:
                with self._lock:
                    self.failures.append((request_id, exc))
                    self._lock.notify_all()
            else:
                with self._lock:
                    self.succeeded.append(request_id)
                    self._lock.notify_all()

    def start(self) -> ContinuousTraffic:
        for thread in self._threads:
            thread.start()
        return self

    def wait_for_successes(self, count: int, timeout: float = 30.0) -> None:
        """Block until ``count`` more calls than now have succeeded."""
        with self._lock:
            target = len(self.succeeded) + count
            if not self._lock.wait_for(lambda: len(self.succeeded) >= target, timeout):
                raise TimeoutError(
                    f"traffic made {len(self.succeeded) - target + count} of {count} successful "
                    f"calls in {timeout:.0f} s ({len(self.failures)} failures so far)"
                )

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()

    @property
    def attempted(self) -> int:
        return len(self.succeeded) + len(self.failures)

    def __enter__(self) -> ContinuousTraffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
