"""The control: plain gRPC (no rpcsec) to three replicas through Envoy, nginx ``grpc_pass``,
haproxy and gRPC's own ``round_robin``.

Every topology here must give 100 % success for all four RPC kinds, with the calls spread over
all three replicas and each call executed exactly once (counted by the replicas themselves).
It is what the rpcsec multi-replica tests compare against (issue 9): a failure there that
also shows here is the proxy setup's, not rpcsec's.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import echo_pb2
import echo_pb2_grpc
import grpc
import grpc.aio
import pytest
from helpers import proxies
from helpers.replicas import ContinuousTraffic, ReplicaGroup, start_replicas

TOPOLOGIES = ["envoy", "nginx", "haproxy", "round_robin"]
CALLS = 12  # per RPC kind: four times round each of the three replicas


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaGroup]:
    with start_replicas(3, tmp_path_factory.mktemp("replicas")) as replicas:
        yield replicas


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest, group: ReplicaGroup, tmp_path) -> Iterator[tuple]:
    """(name, target, channel options) of one way to reach the three replicas."""
    name = request.param
    if name == "round_robin":
        yield name, proxies.round_robin_target(group.addresses), list(proxies.ROUND_ROBIN_OPTIONS)
        return
    proxies.require_proxy(name)
    with proxies.start_proxy(name, group.addresses, tmp_path) as proxy:
        yield name, proxy.address, []


def _request(text: str, repeat: int = 0) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(text=text, repeat=repeat)


def test_all_four_kinds_succeed_spread_over_three_replicas(topology, group) -> None:
    name, target, options = topology
    tag = f"plain-{name}"
    with grpc.insecure_channel(target, options=options) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        grpc.channel_ready_future(channel).result(timeout=10)
        for index in range(CALLS):
            said = stub.Say(_request(f"{tag}-say-{index}"), timeout=10)
            assert said.text == f"{tag}-say-{index}"
            repeated = [r.text for r in stub.Repeat(_request(f"{tag}-rep-{index}", 3), timeout=10)]
            assert repeated == [f"{tag}-rep-{index}{i}" for i in range(3)]
            parts = [f"{tag}-col-{index}", "b", "c"]
            collected = stub.Collect(iter(_request(p) for p in parts), timeout=10)
            assert (collected.text, collected.index) == ("".join(parts), 3)
            chat = [r.text for r in stub.Chat(iter([_request(f"{tag}-chat-{index}")] * 2))]
            assert chat == [f"{tag}-chat-{index}".upper()] * 2

    mine = [e for e in group.executions() if e.id.startswith(f"{tag}-")]
    counts: dict[tuple[str, str], int] = {}
    for execution in mine:
        counts[execution.method, execution.id] = counts.get((execution.method, execution.id), 0) + 1
    assert len(counts) == 4 * CALLS, "every call ran"
    assert set(counts.values()) == {1}, "no call ran twice"
    for method in ("Say", "Repeat", "Collect", "Chat"):
        served = {e.replica for e in mine if e.method == method}
        assert served == {"r0", "r1", "r2"}, f"{name} sent every {method} to {served}"


@pytest.mark.parametrize("topology", proxies.KINDS, indirect=True)
def test_proxy_added_headers_reach_the_replicas(topology, group) -> None:
    name, target, options = topology
    tag = f"plain-headers-{name}"
    with grpc.insecure_channel(target, options=options) as channel:
        _said, call = echo_pb2_grpc.EchoStub(channel).Say.with_call(_request(tag), timeout=10)
    assert dict(call.initial_metadata()).get(proxies.TEST_HEADER) == name
    (execution,) = [e for e in group.executions() if e.id == tag]
    assert execution.metadata.get(proxies.TEST_HEADER) == name
    assert execution.metadata.get("x-forwarded-for"), "each proxy appends x-forwarded-for"


@pytest.mark.parametrize("topology", proxies.KINDS, indirect=True)
def test_client_sent_forwarded_for_survives_each_proxy(topology, group) -> None:
    """x-forwarded-for is client-controlled on its left: Envoy and nginx keep what the client
    sent and append their own hop, haproxy 2.6 (``option forwardfor``) replaces it. Either
    way the rightmost entry is the proxy's, never the client's, so only the entries trusted
    proxies appended may say who the client is (issue 9: admission behind trusted proxies)."""
    name, target, options = topology
    tag = f"plain-xff-{name}"
    with grpc.insecure_channel(target, options=options) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        stub.Say(_request(tag), metadata=[("x-forwarded-for", "203.0.113.9")], timeout=10)
    (execution,) = [e for e in group.executions() if e.id == tag]
    hops = [hop.strip() for hop in execution.metadata["x-forwarded-for"].split(",")]
    assert hops[-1] != "203.0.113.9", hops
    if name == "haproxy":
        assert hops == ["127.0.0.1"]
    else:
        assert hops[0] == "203.0.113.9" and len(hops) == 2, hops


def test_concurrent_calls_on_one_pooled_channel(topology, group) -> None:
    """8 threads on one channel: the proxies multiplex them onto pooled upstream connections."""
    name, target, options = topology
    tag = f"plain-many-{name}"
    failures: list[BaseException] = []
    with grpc.insecure_channel(target, options=options) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)

        def client(worker: int) -> None:
            try:
                for index in range(15):
                    text = f"{tag}-{worker}-{index}"
                    assert stub.Say(_request(text), timeout=10).text == text
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
    mine = [e for e in group.executions() if e.id.startswith(f"{tag}-")]
    assert len(mine) == len({e.id for e in mine}) == 8 * 15
    assert {e.replica for e in mine} == {"r0", "r1", "r2"}


async def test_aio_client_through_each_topology(topology, group) -> None:
    name, target, options = topology
    tag = f"plain-aio-{name}"
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for index in range(6):
            said = await stub.Say(_request(f"{tag}-{index}"), timeout=10)
            assert said.text == f"{tag}-{index}"
        chat = stub.Chat()
        await chat.write(_request(f"{tag}-chat"))
        assert (await chat.read()).text == f"{tag}-chat".upper()
        await chat.done_writing()
        assert await chat.read() is grpc.aio.EOF
    mine = [e for e in group.executions() if e.id.startswith(f"{tag}-")]
    assert len(mine) == 7
    assert {e.replica for e in mine if e.method == "Say"} == {"r0", "r1", "r2"}


def test_restarted_replica_takes_traffic_again(tmp_path) -> None:
    """The launcher's restart keeps the port, so a proxy's static upstream list stays right."""
    proxies.require_proxy("envoy")
    with start_replicas(3, tmp_path / "group") as replicas:
        with proxies.envoy_grpc_proxy(replicas.addresses, tmp_path) as proxy:
            before = replicas.addresses
            replicas.restart(1)
            assert replicas.addresses == before
            with grpc.insecure_channel(proxy.address) as channel:
                stub = echo_pb2_grpc.EchoStub(channel)
                for index in range(9):
                    stub.Say(_request(f"restart-{index}"), timeout=10)
        assert replicas.served_by("Say")["r1"] >= 1
        assert replicas.max_executions() == 1


def test_launcher_and_configs_refuse_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError):
        proxies.round_robin_target([])
    with pytest.raises(ValueError):
        proxies.envoy_config(["no-port"])
    with pytest.raises(ValueError):
        proxies.haproxy_config(1, ["127.0.0.1:x"])
    with pytest.raises(ValueError):
        start_replicas(0, tmp_path)
    with pytest.raises(ValueError):
        start_replicas(1, tmp_path, interceptor_kwargs={"ticket_keys": "x"})
    with pytest.raises(ValueError):
        proxies.start_proxy("envoy", [], tmp_path)
    with pytest.raises(ValueError):
        proxies.start_proxy("squid", ["127.0.0.1:1"], tmp_path)


@pytest.mark.parametrize(
    "header",
    [
        {"x-a": "v; return 200"},  # would end an nginx directive
        {"x-a": 'v" http-request deny'},  # would end haproxy's quoted string
        {"x-a": "v}\n}"},
        {"x-a": "$remote_addr"},  # an nginx variable, not a literal
        {"X A": "v"},
        {"": "v"},
    ],
)
def test_header_text_that_could_rewrite_a_proxy_config_is_refused(header, tmp_path) -> None:
    with pytest.raises(ValueError):
        proxies.nginx_config(1, ["127.0.0.1:1"], tmp_path, extra_headers=header)
    with pytest.raises(ValueError):
        proxies.haproxy_config(1, ["127.0.0.1:1"], extra_headers=header)
    with pytest.raises(ValueError):
        proxies.envoy_config(["127.0.0.1:1"], extra_headers=header)


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_rolling_restart_under_traffic(name, tmp_path) -> None:
    """Every replica restarted in turn (graceful drain) under continuous unary traffic, with
    gRPC's own retry policy for the idempotent method (retry on UNAVAILABLE): traffic goes on
    after every restart, and no call ran twice. What may still fail, and only calls that never
    reached a handler: grpc-python's shutdown race (a call the stopping server accepted but
    never started ends CANCELLED, which no retry policy retries) and, through a proxy, a call
    whose every attempt the proxy sent to the replica still starting (UNAVAILABLE)."""
    if name != "round_robin":
        proxies.require_proxy(name)
    with start_replicas(3, tmp_path / "group") as replicas:
        with contextlib.ExitStack() as stack:
            if name == "round_robin":
                target = proxies.round_robin_target(replicas.addresses)
            else:
                proxy = stack.enter_context(proxies.start_proxy(name, replicas.addresses, tmp_path))
                target = proxy.address
            options = proxies.service_config_options(
                round_robin=name == "round_robin", retry_services=["rpcsec.test.v1.Echo"]
            )
            channel = stack.enter_context(grpc.insecure_channel(target, options=options))
            stub = echo_pb2_grpc.EchoStub(channel)

            def call(request_id: str) -> None:
                assert stub.Say(_request(request_id), timeout=10).text == request_id

            with ContinuousTraffic(call, threads=2, prefix=f"roll-{name}") as traffic:
                traffic.wait_for_successes(10)
                for index in range(len(replicas)):
                    replicas.restart(index)
                    traffic.wait_for_successes(20)
        ran = replicas.counts()
    assert max(ran.values()) == 1, "no call ran twice"
    assert {replica.name for replica in replicas} == set(replicas.served_by())
    for request_id, error in traffic.failures:
        assert isinstance(error, grpc.RpcError), error
        assert error.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), error
        assert ran[("Say", request_id)] == 0, f"{request_id} failed after its handler ran"
    assert len(traffic.failures) <= 0.05 * traffic.attempted


def test_rolling_restart_through_envoy_with_a_graceful_drain_fails_nothing(tmp_path) -> None:
    """The same rolling restart as a deployment that drains (health NOT_SERVING until quiet,
    Envoy's active health checks, then the stop) and lets Envoy re-send only what never
    reached a replica: 0 failed calls even without any client-side retry policy, none ran
    twice. The 5 % above is what the drain removes, not something gRPC needs."""
    proxies.require_proxy("envoy")
    with start_replicas(3, tmp_path / "group") as replicas:
        with proxies.start_proxy(
            "envoy",
            replicas.addresses,
            tmp_path,
            health_ports=replicas.health_ports,
            retry_unsent=True,
        ) as envoy:
            with grpc.insecure_channel(envoy.address) as channel:
                stub = echo_pb2_grpc.EchoStub(channel)

                def call(request_id: str) -> None:
                    assert stub.Say(_request(request_id), timeout=10).text == request_id

                with ContinuousTraffic(call, threads=2, prefix="drained") as traffic:
                    traffic.wait_for_successes(10)
                    for index in range(len(replicas)):
                        replicas.restart(index, balancers=[envoy])
                        traffic.wait_for_successes(20)
        ran = replicas.counts()
    assert traffic.failures == []
    assert max(ran.values()) == 1
    assert {replica.name for replica in replicas} == set(replicas.served_by())


def test_envoy_drain_configuration_retries_only_what_never_reached_a_replica() -> None:
    """The retry conditions a graceful-drain Envoy gets: only those after which the request
    provably never reached an upstream handler (connect failure, refused stream, reset before
    any request byte); none that can follow a handler's run. Health checks on the health
    ports, one per upstream."""
    config = proxies.envoy_config(
        ["127.0.0.1:1", "127.0.0.1:2"], health_ports=[11, 12], retry_unsent=True
    )
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    route = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    conditions = set(route["retry_policy"]["retry_on"].split(","))
    assert conditions == {"connect-failure", "refused-stream", "reset-before-request"}
    assert "retriable_status_codes" not in route["retry_policy"]
    cluster = config["static_resources"]["clusters"][0]
    assert cluster["health_checks"][0]["grpc_health_check"] == {}
    ports = [
        e["endpoint"]["health_check_config"]["port_value"]
        for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert ports == [11, 12]
    plain = proxies.envoy_config(["127.0.0.1:1"])  # the default: no retries, no health checks
    plain_route = plain["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    assert (
        "retry_policy"
        not in (
            plain_route["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
        )
    )
    assert "health_checks" not in plain["static_resources"]["clusters"][0]
    with pytest.raises(ValueError):
        proxies.envoy_config(["127.0.0.1:1"], health_ports=[1, 2])


FORGED_REFUSAL = {"grpc-status": "16", "grpc-message": "forged", "rpcsec-reason": "context-unknown"}


def test_forging_proxy_rewrites_answers_after_the_handler_ran(group, tmp_path) -> None:
    """The man in the middle of issue 9 (``proxies.Forgery``, an Envoy Lua filter): every
    call reaches its handler, and the client gets a refusal nobody signed instead of the
    answer -- all four kinds. The rpcsec version of this (the handler must run exactly once)
    is the session layer's test."""
    proxies.require_proxy("envoy")
    forge = proxies.Forgery(FORGED_REFUSAL, path_prefix="/rpcsec.test.v1.Echo/")
    tag = "plain-forged"
    calls = {
        "Say": lambda stub: stub.Say(_request(f"{tag}-say"), timeout=10),
        "Repeat": lambda stub: list(stub.Repeat(_request(f"{tag}-rep", 2), timeout=10)),
        "Collect": lambda stub: stub.Collect(iter([_request(f"{tag}-col")]), timeout=10),
        "Chat": lambda stub: list(stub.Chat(iter([_request(f"{tag}-chat")]), timeout=10)),
    }
    with proxies.envoy_grpc_proxy(group.addresses, tmp_path, forge=forge) as proxy:
        with grpc.insecure_channel(proxy.address) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            for method, call in calls.items():
                with pytest.raises(grpc.RpcError) as refused:
                    call(stub)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
                trailers = dict(refused.value.trailing_metadata() or ())
                assert trailers.get("rpcsec-reason") == "context-unknown", method
    ran = [e for e in group.executions() if e.id.startswith(f"{tag}-")]
    assert sorted(e.method for e in ran) == sorted(calls), "each handler ran exactly once"


def test_forgery_text_is_checked() -> None:
    with pytest.raises(ValueError):
        proxies.Forgery({"grpc-status": '16" end'}).filter()
    with pytest.raises(ValueError):
        proxies.Forgery({"grpc-status": "16"}, path_prefix='x"]').filter()
    lua = proxies.Forgery(FORGED_REFUSAL).filter()["typed_config"]["default_source_code"]
    assert '["rpcsec-reason"] = "context-unknown"' in lua["inline_string"]
