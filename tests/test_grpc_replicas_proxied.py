"""Three replica *processes* of a secured service (x509) sharing a ticket key ring directory
and a real Redis replay store, behind Envoy, nginx ``grpc_pass``, haproxy and gRPC's own
``round_robin`` (issue 9, "Tests that must exist").

Every call of every kind succeeds through every front, a channel binds at most once, a request
captured once is refused by each replica, and a rolling restart of every replica under
continuous traffic of all four kinds fails no call and runs none twice (the replicas' own
execution logs say so).
"""

from __future__ import annotations

from collections.abc import Iterator

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers import proxies
from helpers.pki import make_authority
from helpers.redis_server import RedisServer, require_redis
from helpers.replicas import ContinuousTraffic, ReplicaGroup, ReplicaSecurity, start_replicas
from helpers.wiretap import Wiretap

from rpcsec.grpc import reason_of, secure_channel
from rpcsec.session import TicketKeyRing
from rpcsec.sspi import ProtectionLevel

FRONTS = ["envoy", "nginx", "haproxy", "round_robin"]
SAY = "/rpcsec.test.v1.Echo/Say"
NEGOTIATE = "/rpcsec.v1.SecurityHandshake/Negotiate"
ECHO_SERVICE = "/rpcsec.test.v1.Echo/"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return make_authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(pki, redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaGroup]:
    ring = tmp_path_factory.mktemp("ring") / "keys"
    TicketKeyRing.create(ring)
    with start_replicas(
        3,
        tmp_path_factory.mktemp("replicas"),
        security=ReplicaSecurity.x509(pki, "documents"),
        interceptor_kwargs={"ticket_keys": str(ring), "replay_store": redis.url},
    ) as group:
        yield group


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest, cluster: ReplicaGroup, tmp_path) -> Iterator[str]:
    if request.param == "round_robin":
        yield proxies.round_robin_target(cluster.addresses)
        return
    proxies.require_proxy(request.param)
    with proxies.start_proxy(request.param, cluster.addresses, tmp_path) as running:
        yield running.address


def _channel(pki, target: str, tap: Wiretap | None = None, retry: bool = False, **options):
    config = proxies.service_config_options(
        round_robin=True, retry_services=["rpcsec.test.v1.Echo"] if retry else ()
    )
    raw = grpc.insecure_channel(target, options=config)
    if tap is not None:
        raw = grpc.intercept_channel(raw, tap)
    return secure_channel(raw, pki.credentials("alice"), target_name=pki.id("documents"), **options)


def _request(text: str, repeat: int = 0) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(text=text, repeat=repeat)


def _all_kinds(stub, tag: str) -> None:
    _unary_kinds(stub, tag)
    _stream_kinds(stub, tag)


def _unary_kinds(stub, tag: str) -> None:
    assert stub.Say(_request(f"{tag}-u"), timeout=10).text == f"{tag}-u"
    assert [r.text for r in stub.Repeat(_request(f"{tag}-r", 2), timeout=10)] == [
        f"{tag}-r0",
        f"{tag}-r1",
    ]


def _stream_kinds(stub, tag: str) -> None:
    assert stub.Collect(iter([_request(f"{tag}-c")]), timeout=10).text == f"{tag}-c"
    assert [r.text for r in stub.Chat(iter([_request(f"{tag}-b")]), timeout=10)] == [
        f"{tag}-b".upper()
    ]


@pytest.mark.parametrize("level", [ProtectionLevel.INTEGRITY, ProtectionLevel.PRIVACY])
def test_every_kind_through_every_front_binds_once(pki, cluster, front, level) -> None:
    tag = f"front-{abs(hash((front, level.name))) % 10**8}"
    tap = Wiretap()
    with _channel(pki, front, tap, protection=level) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for index in range(6):
            _all_kinds(stub, f"{tag}-{index}")
    assert sum(1 for call in tap.calls if call.method == NEGOTIATE) == 1
    ran = [e for e in cluster.executions() if e.id.startswith(tag)]
    assert len(ran) == 24
    assert len({e.replica for e in ran}) >= 2  # served by several replicas
    assert cluster.max_executions() == 1

    # A captured request, sent again to each replica directly: refused by every one.
    captured = next(c for c in tap.app_calls() if c.method == SAY)
    for address in cluster.addresses:
        attacker = grpc.insecure_channel(address)
        with pytest.raises(grpc.RpcError) as info:
            attacker.unary_unary(SAY)(captured.requests[0], metadata=captured.metadata)
        assert reason_of(info.value) in {"replay", "context-unknown"}  # released at close
        attacker.close()
    assert cluster.max_executions() == 1


def test_a_draining_replica_says_not_serving_and_still_serves(pki, redis, tmp_path) -> None:
    """The drain's first step, seen from outside: the replica's health service (its own
    plaintext port, no context needed) turns NOT_SERVING, the replica answers DRAINING only
    after health checks found it quiet, and its secured port still serves every call that
    comes meanwhile -- nothing is refused or cut before the stop."""
    import threading

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ring = tmp_path / "ring"
    TicketKeyRing.create(ring)
    with start_replicas(
        1,
        tmp_path / "replica",
        security=ReplicaSecurity.x509(pki, "documents"),
        interceptor_kwargs={"ticket_keys": str(ring), "replay_store": redis.url},
        prefix="drain",
    ) as group:
        replica = group[0]
        probe = grpc.insecure_channel(replica.health_address)
        check = health_pb2_grpc.HealthStub(probe).Check
        serving = health_pb2.HealthCheckResponse.SERVING
        assert check(health_pb2.HealthCheckRequest(), timeout=10).status == serving
        statuses: list[int] = []
        stop = threading.Event()

        def checker() -> None:  # the balancer's part: checks every so often
            while not stop.is_set():
                statuses.append(check(health_pb2.HealthCheckRequest(), timeout=10).status)
                stop.wait(0.05)

        thread = threading.Thread(target=checker)
        with _channel(pki, replica.address) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            _all_kinds(stub, "before-drain")
            thread.start()
            try:
                replica.drain()
            finally:
                stop.set()
                thread.join()
            assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
            _all_kinds(stub, "while-draining")  # still served, verified, once
        probe.close()
        assert group.counts()[("Say", "while-draining-u")] == 1
        assert group.max_executions() == 1


def test_a_request_resent_through_envoy_is_refused_by_the_replay_store(pki, cluster, tmp_path):
    """Envoy re-sends only what never reached an upstream (``UNSENT_RETRY_ON``); should a
    re-send ever reach a replica -- Envoy's, gRPC's retry policy, an attacker's -- it is the
    same sealed request with the same call sequence, and whichever replica round robin picks
    refuses it as ``replay``: the handler ran once."""
    proxies.require_proxy("envoy")
    with proxies.start_proxy(
        "envoy", cluster.addresses, tmp_path, health_ports=cluster.health_ports, retry_unsent=True
    ) as envoy:
        tap = Wiretap()
        with _channel(pki, envoy.address, tap) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            assert stub.Say(_request("resent-once"), timeout=10).text == "resent-once"
            captured = next(c for c in tap.app_calls() if c.method == SAY)
            attacker = grpc.insecure_channel(envoy.address)
            for _ in range(2 * len(cluster)):  # round robin: every replica gets a copy
                with pytest.raises(grpc.RpcError) as info:
                    attacker.unary_unary(SAY)(captured.requests[0], metadata=captured.metadata)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert reason_of(info.value) == "replay"
            attacker.close()
    assert cluster.counts()[("Say", "resent-once")] == 1


def test_rolling_restart_under_traffic_of_all_four_kinds(pki, cluster, tmp_path) -> None:
    """A rolling restart as a deployment does it: each replica drains (health NOT_SERVING,
    Envoy's active health check takes it out, then ``server.stop(grace)``), restarts, and is
    back in Envoy's rotation before the next one goes. Envoy re-sends only requests that never
    reached a replica. Under continuous traffic of all four kinds: 0 failed calls of the
    methods the client declares idempotent, no call of any kind executed twice, and the calls
    of a client that declares nothing idempotent (never re-sent by rpcsec or gRPC) are counted
    apart: each one that failed is a typed gRPC error and ran at most once."""
    proxies.require_proxy("envoy")
    with proxies.start_proxy(
        "envoy",
        cluster.addresses,
        tmp_path,
        health_ports=cluster.health_ports,
        retry_unsent=True,
        access_log=True,
    ) as envoy:
        # What a deployment declares for idempotent methods: rpcsec's own re-send after a
        # stale context, and gRPC's retry policy (UNAVAILABLE). gRPC re-sends the very same
        # sealed bytes, so the shared replay store makes "ran twice" impossible.
        idempotent = _channel(pki, envoy.address, retry=True, idempotent_methods=[ECHO_SERVICE])
        once_only = _channel(pki, envoy.address)

        def calls(stub):
            def call(request_id: str) -> None:
                try:
                    _unary_kinds(stub, request_id)
                except grpc.RpcError as exc:
                    raise AssertionError(f"unary: {exc.code()} {exc.details()}") from exc
                try:
                    _stream_kinds(stub, request_id)
                except grpc.RpcError as exc:
                    raise AssertionError(f"stream: {exc.code()} {exc.details()}") from exc

            return call

        declared = ContinuousTraffic(
            calls(echo_pb2_grpc.EchoStub(idempotent)), threads=2, prefix="roll-idem"
        )
        undeclared = ContinuousTraffic(
            calls(echo_pb2_grpc.EchoStub(once_only)), threads=1, prefix="roll-once"
        )
        with declared, undeclared:
            declared.wait_for_successes(5)
            undeclared.wait_for_successes(2)
            for index in range(len(cluster)):
                cluster.restart(index, balancers=[envoy])
                declared.wait_for_successes(10)
                undeclared.wait_for_successes(3)
        idempotent.close()
        once_only.close()
        unusual = [line for line in envoy.access_log.splitlines() if "grpc=OK" not in line]
    # Envoy's access log: every request not answered OK (what Envoy and the replicas did)
    envoy_said = "\n".join(unusual[-40:])
    counts = cluster.counts()
    assert cluster.max_executions() == 1  # no call of either client executed twice
    assert declared.failures == [], (declared.failures, envoy_said)  # 0 failed idempotent calls
    for request_id in declared.succeeded:  # ... and each ran exactly once, all four kinds
        assert all(counts[(m, f"{request_id}-{k}")] == 1 for m, k in _KIND_IDS), request_id
    for request_id, exc in undeclared.failures:
        cause = exc.__cause__
        assert isinstance(cause, grpc.RpcError), (request_id, exc)
        assert cause.code() in {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.UNAUTHENTICATED,
        }, (request_id, exc, envoy_said)
    print(
        f"rolling restart: {len(declared.succeeded)} idempotent rounds ok, 0 failed; "
        f"{len(undeclared.succeeded)} undeclared rounds ok, {len(undeclared.failures)} failed"
    )


_KIND_IDS = (("Say", "u"), ("Repeat", "r"), ("Collect", "c"), ("Chat", "b"))
