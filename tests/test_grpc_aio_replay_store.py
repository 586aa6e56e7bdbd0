"""The asyncio server awaits an ``AsyncReplayStore`` (issue 9's leftover), against a real Redis.

The claim that makes a request fresh cluster-wide, the claim of a stale call's "did not run"
and the revocation on release are awaited on the server's event loop, so a slow store holds
up only the call waiting for it: other coroutines keep running. Synchronous handlers on the
same server (run in worker threads) have their claims answered on the loop too. Redis is
made slow for real (``CLIENT PAUSE``), never by a sleep in rpcsec.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import echo_pb2
import echo_pb2_grpc
import grpc
import grpc.aio
import pytest
from helpers.echo import AsyncEchoServicer, EchoServicer
from helpers.grpc_setup import SERVER_STYLES
from helpers.wiretap import craft_call

from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.grpc import reason_of
from rpcsec.session import AsyncRedisReplayStore

SAY = "/rpcsec.test.v1.Echo/Say"
PAUSE_MS = 1000


@pytest.fixture(params=SERVER_STYLES)
def server_style(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def redis_server(tmp_path):
    from helpers.redis_server import RedisServer, require_redis

    require_redis()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


async def _serve(setup, aio_serve, redis_server, servicer):
    store = AsyncRedisReplayStore(redis_server.url, timeout=5.0)
    interceptor = rpcsec_aio.SecurityInterceptor(setup.server(), replay_store=store)
    address = await aio_serve([interceptor], [servicer])
    return interceptor, address, store


@pytest.mark.parametrize("handlers", ["async", "sync"])
async def test_a_replay_is_refused_through_an_async_store(
    x509_setup, aio_serve, redis_server, handlers
) -> None:
    setup = x509_setup
    servicer = AsyncEchoServicer() if handlers == "async" else EchoServicer()
    _, address, store = await _serve(setup, aio_serve, redis_server, servicer)
    channel = rpcsec_aio.secure_channel(address, setup.client(), **setup.channel_options())
    try:
        stub = echo_pb2_grpc.EchoStub(channel)
        assert (await stub.Say(echo_pb2.EchoRequest(text="bind"))).text == "bind"
        bound = channel._session.current
        request = echo_pb2.EchoRequest(text="once").SerializeToString()
        metadata, token, _ = craft_call(bound.context, bound.handle, SAY, request)
        async with grpc.aio.insecure_channel(address) as raw:
            say = raw.unary_unary(SAY)
            await say(token, metadata=metadata, timeout=10)  # the first time: runs
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await say(token, metadata=metadata, timeout=10)  # the same request again
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert reason_of(info.value) == "replay"
        assert servicer.calls == 2
        fresh = craft_call(bound.context, bound.handle, SAY, request)  # never sent yet
        await channel.close()  # the release is awaited too: the ticket is revoked in Redis
        async with grpc.aio.insecure_channel(address) as raw:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await raw.unary_unary(SAY)(fresh[1], metadata=fresh[0], timeout=10)
        assert reason_of(info.value) == "context-unknown"
        assert servicer.calls == 2
    finally:
        await channel.close()
        await store.aclose()


@pytest.mark.parametrize("handlers", ["async", "sync"])
async def test_a_slow_store_never_blocks_the_event_loop(
    x509_setup, aio_serve, redis_server, handlers
) -> None:
    import redis

    setup = x509_setup
    servicer = AsyncEchoServicer() if handlers == "async" else EchoServicer()
    _, address, store = await _serve(setup, aio_serve, redis_server, servicer)
    channel = rpcsec_aio.secure_channel(address, setup.client(), **setup.channel_options())
    pauser = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        stub = echo_pb2_grpc.EchoStub(channel)
        assert (await stub.Say(echo_pb2.EchoRequest(text="warm"))).text == "warm"
        ticks: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        pauser.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")  # Redis answers nothing
        started = time.monotonic()
        assert (await stub.Say(echo_pb2.EchoRequest(text="slow"), timeout=30)).text == "slow"
        elapsed = time.monotonic() - started
        done.set()
        await task
        # The call really waited for Redis (its claim) ...
        assert elapsed >= PAUSE_MS / 1000 * 0.8, elapsed
        # ... while the loop the server runs on kept ticking (a blocked loop: one gap of ~1 s).
        during = [t for t in ticks if started <= t <= started + elapsed]
        gaps = [b - a for a, b in itertools.pairwise(ticks) if a >= started - 0.02]
        assert len(during) >= 10, len(during)
        assert max(gaps) < 0.4, max(gaps)
    finally:
        pauser.close()
        await channel.close()
        await store.aclose()


async def test_an_unreachable_async_store_fails_closed(x509_setup, aio_serve, redis_server):
    setup = x509_setup
    servicer = AsyncEchoServicer()
    _, address, store = await _serve(setup, aio_serve, redis_server, servicer)
    channel = rpcsec_aio.secure_channel(address, setup.client(), **setup.channel_options())
    try:
        stub = echo_pb2_grpc.EchoStub(channel)
        await stub.Say(echo_pb2.EchoRequest(text="bind"))
        redis_server.kill()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Say(echo_pb2.EchoRequest(text="lost"), timeout=20)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert reason_of(info.value) == "replay-store-unavailable"
        assert servicer.calls == 1  # the handler never ran
    finally:
        await channel.close()
        await store.aclose()


def test_the_sync_server_refuses_an_async_store(x509_setup) -> None:
    from rpcsec.grpc import SecurityInterceptor
    from rpcsec.session import AsyncMemoryReplayStore

    with pytest.raises(TypeError, match="synchronous"):
        SecurityInterceptor(x509_setup.server(), replay_store=AsyncMemoryReplayStore())
    # ... which the asyncio server takes, as it takes a synchronous one.
    rpcsec_aio.SecurityInterceptor(x509_setup.server(), replay_store=AsyncMemoryReplayStore())
