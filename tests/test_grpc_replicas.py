"""Several replicas of one secured service (issue 9 items 1-3): real gRPC servers on loopback
sharing one ticket key ring directory and one replay store (in memory, or a real Redis).

A channel balanced over every replica (gRPC's own ``round_robin``) binds once and is served by
all of them; a request one replica accepted is refused by every replica; release reaches every
replica; two replicas answering one context never seal under the same key and nonce (the
client, which checks every response, accepts them all); a ticket that was tampered with,
truncated or sealed under a retired key is ``context-unknown``; the store unreachable fails
calls closed with UNAVAILABLE and the handler never runs.
"""

from __future__ import annotations

import logging

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers.echo import AsyncEchoServicer, EchoServicer
from helpers.wiretap import Wiretap, craft_call, flip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.grpc import SecurityInterceptor, reason_of, secure_channel
from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.grpc._wire import CONTEXT_KEY
from rpcsec.session import MemoryReplayStore, TicketKeyRing
from rpcsec.sspi import InvalidHandleError, ProtectionLevel, SecurityError

SAY = "/rpcsec.test.v1.Echo/Say"
NEGOTIATE = "/rpcsec.v1.SecurityHandshake/Negotiate"
ROUND_ROBIN = [("grpc.lb_policy_name", "round_robin")]


def _request(text: str, repeat: int = 0) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(text=text, repeat=repeat)


class Cluster:
    """N replicas: each its own grpc.server and interceptor over the shared ring and store."""

    def __init__(self, setup, serve, ring_dir, store, count: int = 3, **options) -> None:
        self.setup = setup
        self.echoes = [EchoServicer() for _ in range(count)]
        self.interceptors = [
            SecurityInterceptor(
                setup.server(),
                ticket_keys=TicketKeyRing.load(ring_dir, refresh_interval=0),
                replay_store=store,
                **options,
            )
            for _ in range(count)
        ]
        self.addresses = [
            serve([interceptor], [echo])
            for interceptor, echo in zip(self.interceptors, self.echoes, strict=True)
        ]

    @property
    def target(self) -> str:
        return "ipv4:" + ",".join(self.addresses)

    @property
    def calls(self) -> int:
        return sum(echo.calls for echo in self.echoes)

    def channel(self, tap: Wiretap | None = None, **options):
        raw = grpc.insecure_channel(self.target, options=ROUND_ROBIN)
        if tap is not None:
            raw = grpc.intercept_channel(raw, tap)
        return secure_channel(raw, self.setup.client(), **self.setup.channel_options(**options))


@pytest.fixture
def ring_dir(tmp_path):
    directory = tmp_path / "ring"
    TicketKeyRing.create(directory)
    return directory


def _all_kinds(stub) -> None:
    assert stub.Say(_request("u")).text == "u"
    assert stub.Say.with_call(_request("w"))[0].text == "w"
    assert stub.Say.future(_request("f")).result().text == "f"
    assert [r.text for r in stub.Repeat(_request("r", 2))] == ["r0", "r1"]
    assert stub.Collect(iter([_request("a"), _request("b")])).text == "ab"
    assert [r.text for r in stub.Chat(iter([_request("c"), _request("d")]))] == ["C", "D"]


@pytest.mark.parametrize("level", [ProtectionLevel.INTEGRITY, ProtectionLevel.PRIVACY])
def test_round_robin_over_three_replicas_binds_once(package_setup, serve, ring_dir, level) -> None:
    cluster = Cluster(package_setup, serve, ring_dir, MemoryReplayStore())
    tap = Wiretap()
    with cluster.channel(tap, protection=level) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(8):
            _all_kinds(stub)  # every call verified by the client: no failure, no replay
    assert cluster.calls == 8 * 6
    assert all(echo.calls > 0 for echo in cluster.echoes)  # every replica served
    assert sum(1 for call in tap.calls if call.method == NEGOTIATE) == 1


def test_each_replica_opens_a_ticket_once_per_context(x509_setup, serve, ring_dir, monkeypatch):
    """Opening a ticket (AEAD open + context import: ~50 us, ~1.2 ms with delegation) is paid
    once per replica per context, then the table's cached entry serves every call: with 60
    calls per channel over round robin, each (replica, ticket) is opened exactly once, and the
    replica that made the context never opens its ticket."""
    import collections

    from rpcsec.grpc._tickets import ContextTickets

    opened: collections.Counter[tuple[int, bytes]] = collections.Counter()
    real_open = ContextTickets.open

    def counting_open(self, ticket: bytes):  # type: ignore[no-untyped-def]
        opened[(id(self), ticket)] += 1
        return real_open(self, ticket)

    monkeypatch.setattr(ContextTickets, "open", counting_open)
    cluster = Cluster(x509_setup, serve, ring_dir, MemoryReplayStore())
    for _ in range(2):  # two clients, two contexts
        with cluster.channel() as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            for index in range(60):
                assert stub.Say(_request(f"o{index}")).text == f"o{index}"
    assert cluster.calls == 120
    assert all(echo.calls > 0 for echo in cluster.echoes)
    assert len({ticket for _, ticket in opened}) == 2  # one ticket per context
    assert set(opened.values()) == {1}, opened  # once per replica per context
    assert len(opened) == 2 * (len(cluster.echoes) - 1)  # the binding replica never opens


async def test_aio_round_robin_over_three_replicas(x509_setup, aio_serve, ring_dir) -> None:
    setup = x509_setup
    store = MemoryReplayStore()
    echoes = [AsyncEchoServicer() for _ in range(3)]
    addresses = []
    for echo in echoes:
        interceptor = rpcsec_aio.SecurityInterceptor(
            setup.server(),
            ticket_keys=TicketKeyRing.load(ring_dir, refresh_interval=0),
            replay_store=store,
        )
        addresses.append(await aio_serve([interceptor], [echo]))
    raw = grpc.aio.insecure_channel("ipv4:" + ",".join(addresses), options=ROUND_ROBIN)
    async with rpcsec_aio.secure_channel(raw, setup.client(), **setup.channel_options()) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(6):
            assert (await stub.Say(_request("u"))).text == "u"
            assert [r.text async for r in stub.Repeat(_request("r", 2))] == ["r0", "r1"]
            assert (await stub.Collect(iter([_request("a")]))).text == "a"
            assert [r.text async for r in stub.Chat(iter([_request("c")]))] == ["C"]
    assert sum(echo.calls for echo in echoes) == 24
    assert all(echo.calls > 0 for echo in echoes)


def test_a_request_accepted_by_one_replica_is_refused_by_every_replica(
    x509_setup, serve, ring_dir
) -> None:
    cluster = Cluster(x509_setup, serve, ring_dir, MemoryReplayStore())
    tap = Wiretap()
    with cluster.channel(tap) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        stub.Say(_request("once"))
        captured = tap.app_calls()[-1]
        before = cluster.calls
        for address in cluster.addresses:
            attacker = grpc.insecure_channel(address)
            with pytest.raises(grpc.RpcError) as info:
                attacker.unary_unary(SAY)(captured.requests[0], metadata=captured.metadata)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert reason_of(info.value) == "replay"
            attacker.close()
        assert cluster.calls == before


def test_release_reaches_every_replica(x509_setup, serve, ring_dir) -> None:
    cluster = Cluster(x509_setup, serve, ring_dir, MemoryReplayStore())
    tap = Wiretap()
    channel = cluster.channel(tap)
    stub = echo_pb2_grpc.EchoStub(channel)
    stub.Say(_request("bind"))
    handle = tap.app_calls()[-1].value(CONTEXT_KEY)
    context = channel.security_context
    # Calls made correctly with the context, not yet sent, one per replica.
    crafted = [craft_call(context, handle, SAY, b"") for _ in cluster.addresses]
    for address in cluster.addresses:  # every replica has the ticket open and cached
        metadata, token, _ = craft_call(context, handle, SAY, b"")
        grpc.insecure_channel(address).unary_unary(SAY)(token, metadata=metadata)
    before = cluster.calls
    channel.close()  # Release: revoked in the shared store
    for address, (metadata, token, _) in zip(cluster.addresses, crafted, strict=True):
        attacker = grpc.insecure_channel(address)
        with pytest.raises(grpc.RpcError) as info:
            attacker.unary_unary(SAY)(token, metadata=metadata)
        assert reason_of(info.value) == "context-unknown"
        attacker.close()
    assert cluster.calls == before


def test_tampered_or_truncated_tickets_are_unknown_without_a_traceback(
    x509_setup, serve, ring_dir, caplog
) -> None:
    cluster = Cluster(x509_setup, serve, ring_dir, MemoryReplayStore(), count=2)
    tap = Wiretap()
    with cluster.channel(tap) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        stub.Say(_request("bind"))
        handle = tap.app_calls()[-1].value(CONTEXT_KEY)
        context = channel.security_context
        before = cluster.calls
        caplog.set_level(logging.DEBUG)
        for bad in (
            flip(handle, 0),  # version
            flip(handle, 5),  # key name
            flip(handle, 20),  # IV
            flip(handle, len(handle) // 2),  # sealed state
            flip(handle),  # tag
            handle[:-1],
            handle[: len(handle) // 2],
            handle + b"\x00",
        ):
            metadata, token, _ = craft_call(context, bad, SAY, b"")
            for address in cluster.addresses:
                attacker = grpc.insecure_channel(address)
                with pytest.raises(grpc.RpcError) as info:
                    attacker.unary_unary(SAY)(token, metadata=metadata)
                assert reason_of(info.value) == "context-unknown"
                attacker.close()
        assert cluster.calls == before
        assert "Traceback" not in caplog.text
        assert stub.Say(_request("still")).text == "still"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_ticket_parsing_under_hypothesis(data) -> None:
    # Whatever a peer puts where the handle goes, admission raises InvalidHandleError (or
    # another typed SecurityError), never anything else, and never admits.
    security = _TICKET_SECURITY["security"]
    ticket = _TICKET_SECURITY["ticket"]
    choice = data.draw(st.sampled_from(["random", "flip", "truncate", "extend"]))
    if choice == "random":
        handle = data.draw(st.binary(min_size=0, max_size=2048))
    elif choice == "flip":
        index = data.draw(st.integers(0, len(ticket) - 1))
        handle = flip(ticket, index)
    elif choice == "truncate":
        handle = ticket[: data.draw(st.integers(0, len(ticket) - 1))]
    else:
        handle = ticket + data.draw(st.binary(min_size=1, max_size=64))
    with pytest.raises(SecurityError) as info:
        security._find([(CONTEXT_KEY, handle)])
    assert isinstance(info.value, InvalidHandleError) or info.value.reason in {"expired"}


def _ticket_security() -> dict:
    """One server with one real ticket (a real x509 handshake), made once for hypothesis."""
    import pathlib
    import tempfile

    from helpers import grpc_setup
    from helpers.pair import handshake

    from rpcsec.grpc._server_core import ServerSecurity
    from rpcsec.sspi import ClientContext

    setup = grpc_setup.x509_setup(pathlib.Path(tempfile.mkdtemp()))
    security = ServerSecurity(setup.server())
    client = ClientContext(setup.client(), setup.target(), setup.requirements)
    server = security._new_context(setup.server())
    handshake(client, server)
    return {"security": security, "ticket": security.register(server, "test")}


class _Lazy(dict):
    def __missing__(self, key):
        self.update(_ticket_security())
        return self[key]


_TICKET_SECURITY: dict = _Lazy()


@pytest.mark.parametrize("idempotent", [True, False])
def test_rotation_under_traffic_and_a_retired_key(x509_setup, serve, ring_dir, idempotent) -> None:
    cluster = Cluster(x509_setup, serve, ring_dir, MemoryReplayStore())
    options = {"idempotent_methods": [SAY]} if idempotent else {}
    with cluster.channel(**options) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        stub.Say(_request("bind"))
        first = channel.security_context
        for _ in range(2):  # rotation keeps the older keys: no live context is dropped
            TicketKeyRing.rotate(ring_dir, keep=3)
            for _ in range(6):
                _all_kinds(stub)
        assert channel.security_context is first
        fresh = secure_channel(cluster.target, x509_setup.client(), **x509_setup.channel_options())
        assert echo_pb2_grpc.EchoStub(fresh).Say(_request("new key")).text == "new key"
        fresh.close()
        TicketKeyRing.rotate(ring_dir, keep=1)  # the first key is retired now
        before = cluster.calls
        if idempotent:
            assert stub.Say(_request("rebound")).text == "rebound"  # re-bound, sent again
        else:
            with pytest.raises(grpc.RpcError) as info:
                stub.Say(_request("lost"))
            assert reason_of(info.value) == "context-unknown"
            assert stub.Say(_request("rebound")).text == "rebound"
        assert cluster.calls == before + 1
        assert channel.security_context is not first


def test_redis_killed_mid_traffic_fails_closed_then_recovers(
    x509_setup, serve, ring_dir, tmp_path
) -> None:
    from helpers.redis_server import RedisServer, require_redis

    require_redis()
    from rpcsec.session import RedisReplayStore

    redis = RedisServer(tmp_path / "redis").start()
    try:
        store = RedisReplayStore(redis.url, timeout=0.5, max_clock_skew=0.2)
        cluster = Cluster(x509_setup, serve, ring_dir, store)
        tap = Wiretap()
        with cluster.channel(tap) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            for _ in range(3):
                _all_kinds(stub)
            captured = tap.app_calls()[0]
            for address in cluster.addresses:  # the shared store refuses it everywhere
                attacker = grpc.insecure_channel(address)
                with pytest.raises(grpc.RpcError) as info:
                    attacker.unary_unary(SAY)(captured.requests[0], metadata=captured.metadata)
                assert reason_of(info.value) == "replay"
                attacker.close()

            redis.kill()
            before = cluster.calls
            for call in (
                lambda: stub.Say(_request("u")),
                lambda: list(stub.Repeat(_request("r", 1))),
                lambda: stub.Collect(iter([_request("a")])),
                lambda: list(stub.Chat(iter([_request("c")]))),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() is grpc.StatusCode.UNAVAILABLE
                assert reason_of(info.value) == "replay-store-unavailable"
            assert cluster.calls == before  # fail closed: no handler ran

            redis.start()  # back, empty: the store refuses tickets issued before it restarted
            # (plus its clock skew allowance), and channels re-bind until they hold new ones.
            recovered = refused = 0
            while recovered < 2:
                try:
                    _all_kinds(stub)
                    recovered += 1
                except grpc.RpcError as exc:
                    assert reason_of(exc) == "context-unknown"
                    refused += 1
                    assert refused < 50
            assert cluster.calls > before
    finally:
        redis.stop()


def test_replicas_sharing_redis_over_a_unix_socket(x509_setup, serve, ring_dir, tmp_path) -> None:
    """Each replica given only ``replay_store="unix:///path"`` (its own store, as replicas in
    separate processes have): all four kinds through round-robin, a captured request refused
    by every replica, and Release reaching them all."""
    import redis as redis_py
    from helpers.redis_server import RedisServer, require_redis

    require_redis()
    path = tmp_path / "redis.sock"
    redis = RedisServer(
        tmp_path / "redis", extra_args=("--unixsocket", str(path), "--unixsocketperm", "700")
    ).start()
    try:
        cluster = Cluster(x509_setup, serve, ring_dir, f"unix://{path}")
        tap = Wiretap()
        channel = cluster.channel(tap)
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(2):
            _all_kinds(stub)
        with redis_py.Redis(port=redis.port) as admin:  # the claims came over the socket
            over_unix = [c for c in admin.client_list() if c["addr"].startswith(str(path))]
        assert len(over_unix) >= 3, over_unix  # one per replica at least
        captured = tap.app_calls()[0]
        handle = captured.value(CONTEXT_KEY)
        crafted = [craft_call(channel.security_context, handle, SAY, b"") for _ in range(3)]
        before = cluster.calls
        for address in cluster.addresses:
            attacker = grpc.insecure_channel(address)
            with pytest.raises(grpc.RpcError) as info:
                attacker.unary_unary(SAY)(captured.requests[0], metadata=captured.metadata)
            assert reason_of(info.value) == "replay"
            attacker.close()
        assert cluster.calls == before
        channel.close()  # Release: revoked in the one Redis, through any replica's socket
        for address, (metadata, token, _) in zip(cluster.addresses, crafted, strict=True):
            attacker = grpc.insecure_channel(address)
            with pytest.raises(grpc.RpcError) as info:
                attacker.unary_unary(SAY)(token, metadata=metadata)
            assert reason_of(info.value) == "context-unknown"
            attacker.close()
        assert cluster.calls == before
    finally:
        redis.stop()


def test_server_options_are_checked(x509_setup, tmp_path) -> None:
    from rpcsec.session import AsyncMemoryReplayStore, KeyRingError

    with pytest.raises(TypeError):
        SecurityInterceptor(x509_setup.server(), replay_store=AsyncMemoryReplayStore())
    with pytest.raises(TypeError):
        SecurityInterceptor(x509_setup.server(), replay_store=object())
    with pytest.raises(KeyRingError):  # no ring there
        SecurityInterceptor(x509_setup.server(), ticket_keys=tmp_path / "nothing")
    with pytest.raises(TypeError):
        SecurityInterceptor(x509_setup.server(), trusted_proxies="10.0.0.1")
