"""The asyncio gRPC binding: aio clients and servers, mixed with sync ones, on real servers.

Async handlers (coroutines, async generators, the reader/writer API) and sync handlers on an
aio server all run as the caller; the aio call objects behave like grpc.aio's.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent import futures

import echo_pb2
import echo_pb2_grpc
import grpc
import grpc.aio
import pytest
from helpers.echo import AsyncAdminServicer, AsyncEchoServicer, EchoServicer
from helpers.grpc_setup import SERVER_STYLES, forget_contexts

import rpcsec
from rpcsec.grpc import (
    AuthorizationPolicy,
    AuthorizationRule,
    SecurityInterceptor,
    reason_of,
    secure_channel,
)
from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.grpc._proto import handshake_pb2
from rpcsec.grpc._wire import NEGOTIATE_METHOD
from rpcsec.sspi import (
    ClientContext,
    InsufficientAttributesError,
    ProtectionLevel,
)

LEVELS = [ProtectionLevel.INTEGRITY, ProtectionLevel.PRIVACY]
NEGOTIATE = "/rpcsec.v1.SecurityHandshake/Negotiate"
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture(params=SERVER_STYLES)
def server_style(request: pytest.FixtureRequest) -> str:
    """Every test here runs against a SecurityInterceptor and against handlers protected
    when registered (``secure_server``'s way)."""
    return request.param


def _request(text: str, repeat: int = 0) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(text=text, repeat=repeat)


async def _aiter(*texts: str):
    for text in texts:
        yield _request(text)


async def _refused(awaitable, code=grpc.StatusCode.UNAUTHENTICATED) -> str | None:
    with pytest.raises(grpc.RpcError) as info:
        await awaitable
    assert info.value.code() is code, info.value
    return reason_of(info.value)


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.name)
async def test_all_four_kinds_with_async_handlers(any_package_setup, aio_serve, level) -> None:
    setup = any_package_setup
    echo = AsyncEchoServicer()
    interceptor = rpcsec_aio.SecurityInterceptor(setup.server())
    address = await aio_serve([interceptor], [echo])
    alice = setup.principal("alice")
    async with rpcsec_aio.secure_channel(
        address, setup.client(), protection=level, **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        said = await stub.Say(_request("hello"))
        assert (said.text, said.principal, said.protection_level) == ("hello", alice, level.name)

        repeat = stub.Repeat(_request("r", 3))
        assert [r.text async for r in repeat] == ["r0", "r1", "r2"]
        assert await repeat.code() is grpc.StatusCode.OK

        collected = await stub.Collect(_aiter("a", "b"))
        assert (collected.text, collected.principal) == ("ab", alice)
        collected = await stub.Collect(iter([_request("c")]))  # a sync iterator works too
        assert collected.text == "c"

        chat = stub.Chat()  # write() / read() / done_writing()
        await chat.write(_request("x"))
        first = await chat.read()
        await chat.write(_request("y"))
        await chat.done_writing()
        second = await chat.read()
        assert (first.text, second.text, first.principal) == ("X", "Y", alice)
        assert await chat.read() is grpc.aio.EOF
        assert await chat.code() is grpc.StatusCode.OK

        writer = stub.Collect()
        for text in "pqr":
            await writer.write(_request(text))
        await writer.done_writing()
        assert (await writer).text == "pqr"
        assert len(interceptor.contexts) == 1
    assert len(interceptor.contexts) == 0
    assert echo.calls == 6


async def test_sync_handlers_on_an_aio_server_run_as_the_caller(package_setup, aio_serve) -> None:
    setup = package_setup
    pool = futures.ThreadPoolExecutor(max_workers=2)
    address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server())],
        [EchoServicer(readable_by=setup.principal("alice"))],
        migration_thread_pool=pool,
    )
    alice = setup.principal("alice")
    async with rpcsec_aio.secure_channel(
        address, setup.client(), **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        assert (await stub.Say(_request("check"))).principal == alice  # access_check as alice
        assert [r.principal async for r in stub.Repeat(_request("r", 2))] == [alice, alice]
        assert (await stub.Collect(_aiter("a", "b"))).text == "ab"
        assert [r.text async for r in stub.Chat(_aiter("m", "n"))] == ["M", "N"]
        assert await _refused(stub.Say(_request("deny")), grpc.StatusCode.PERMISSION_DENIED) == (
            "access-denied"
        )
    # The pool threads that ran the handlers hold no token afterwards.
    for _ in range(2):
        assert pool.submit(rpcsec.current_token).result() is None
    pool.shutdown()


async def test_sync_client_with_aio_server(package_setup, aio_serve) -> None:
    setup = package_setup
    address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server())], [AsyncEchoServicer()]
    )

    def sync_client() -> list[str]:
        with secure_channel(address, setup.client(), **setup.channel_options()) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            return [
                stub.Say(_request("s")).text,
                *[r.text for r in stub.Repeat(_request("r", 2))],
                stub.Collect(iter([_request("c")])).text,
                *[r.text for r in stub.Chat(iter([_request("q")]))],
            ]

    assert await asyncio.to_thread(sync_client) == ["s", "r0", "r1", "c", "Q"]


async def test_aio_client_with_sync_server(package_setup, serve) -> None:
    setup = package_setup
    address = serve([SecurityInterceptor(setup.server())], [EchoServicer()])
    async with rpcsec_aio.secure_channel(
        address, setup.client(), **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        assert (await stub.Say(_request("s"))).principal == setup.principal("alice")
        assert [r.text async for r in stub.Repeat(_request("r", 2))] == ["r0", "r1"]
        assert (await stub.Collect(_aiter("a", "b"))).text == "ab"
        assert [r.text async for r in stub.Chat(_aiter("x"))] == ["X"]


async def test_call_objects(package_setup, aio_serve) -> None:
    setup = package_setup
    address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server())], [AsyncEchoServicer()]
    )
    channel = rpcsec_aio.secure_channel(address, setup.client(), **setup.channel_options())
    stub = echo_pb2_grpc.EchoStub(channel)
    assert channel.security_context is None
    call = stub.Say(_request("first"))  # made before the channel is bound
    done: list[object] = []
    call.add_done_callback(done.append)
    assert not call.done()
    assert (await call).text == "first"
    assert (await call).text == "first"  # awaiting again gives the same response
    assert await call.code() is grpc.StatusCode.OK
    assert await call.details() in ("", None)
    assert await call.initial_metadata() is not None
    assert await call.trailing_metadata() is not None
    assert call.done() and done == [call]
    context = await channel.bind()
    assert channel.security_context is context

    never = stub.Say(_request("cancelled"))
    assert never.cancel()
    with pytest.raises(asyncio.CancelledError):
        await never
    await channel.close()


async def test_concurrent_first_calls_share_one_handshake(package_setup, aio_serve) -> None:
    setup = package_setup
    interceptor = rpcsec_aio.SecurityInterceptor(setup.server())
    address = await aio_serve([interceptor], [AsyncEchoServicer()])
    async with rpcsec_aio.secure_channel(
        address, setup.client(), **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        replies = await asyncio.gather(*(stub.Say(_request(str(i))) for i in range(20)))
        assert [r.text for r in replies] == [str(i) for i in range(20)]
        assert len(interceptor.contexts) == 1


async def test_unmet_requirements_fail_before_any_call(ntlm_setup, aio_serve) -> None:
    setup = ntlm_setup
    echo = AsyncEchoServicer()
    interceptor = rpcsec_aio.SecurityInterceptor(setup.server())
    address = await aio_serve([interceptor], [echo])
    async with rpcsec_aio.secure_channel(
        address, setup.client(), target_name=setup.target()
    ) as channel:
        with pytest.raises(InsufficientAttributesError):
            await echo_pb2_grpc.EchoStub(channel).Say(_request("never"))
    assert echo.calls == 0 and len(interceptor.contexts) == 0


async def test_refusals_and_policy_on_an_aio_server(package_setup, aio_serve) -> None:
    setup = package_setup
    alice, bob = setup.principal("alice"), setup.principal("bob")
    policy = AuthorizationPolicy(
        [
            AuthorizationRule("/rpcsec.test.v1.Echo/*", allow={alice, bob}),
            AuthorizationRule("/rpcsec.test.v1.Echo/Repeat", deny={bob}),
        ]
    )
    echo, admin = AsyncEchoServicer(readable_by=alice), AsyncAdminServicer()
    address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server(), policy)], [echo, admin]
    )
    async with (
        rpcsec_aio.secure_channel(address, setup.client("alice"), **setup.channel_options()) as a,
        rpcsec_aio.secure_channel(address, setup.client("bob"), **setup.channel_options()) as b,
    ):
        alice_stub, bob_stub = echo_pb2_grpc.EchoStub(a), echo_pb2_grpc.EchoStub(b)
        denied = grpc.StatusCode.PERMISSION_DENIED
        assert (await alice_stub.Say(_request("check"))).principal == alice
        assert await _refused(bob_stub.Say(_request("check")), denied) == "access-denied"
        assert await _refused(alice_stub.Say(_request("deny")), denied) == "access-denied"
        assert await _refused(alice_stub.Say(_request("abort")), grpc.StatusCode.NOT_FOUND) is None

        async def drain(call) -> list:
            return [r async for r in call]

        assert await _refused(drain(bob_stub.Repeat(_request("r", 1))), denied) == ("access-denied")
        shutdown = echo_pb2_grpc.AdminStub(a).Shutdown(_request("x"))
        assert await _refused(shutdown, denied) == "access-denied"
    assert admin.counter.calls == 0


async def test_bad_calls_on_an_aio_server(package_setup, aio_serve) -> None:
    setup = package_setup
    echo = AsyncEchoServicer()
    interceptor = rpcsec_aio.SecurityInterceptor(setup.server())
    address = await aio_serve([interceptor], [echo])
    async with rpcsec_aio.secure_channel(
        address, setup.client(), **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        await stub.Say(_request("bind"))
        before = echo.calls
        async with grpc.aio.insecure_channel(address) as raw:
            say = raw.unary_unary("/rpcsec.test.v1.Echo/Say")
            request = _request("x").SerializeToString()
            assert await _refused(say(request)) == "context-unknown"
            unknown = (("rpcsec-context-bin", os.urandom(16)), ("rpcsec-call-bin", b"\x05\x4d"))
            assert await _refused(say(request, metadata=unknown)) in {
                "context-unknown",
                "invalid-token",
            }
            collect = raw.stream_unary("/rpcsec.test.v1.Echo/Collect")
            assert await _refused(collect(iter([request]))) == "context-unknown"
            chat = raw.stream_stream("/rpcsec.test.v1.Echo/Chat")

            async def drain(call) -> list:
                return [r async for r in call]

            assert await _refused(drain(chat(iter([request])))) == "context-unknown"
        assert echo.calls == before
        assert (await stub.Say(_request("still"))).text == "still"


async def test_transparent_rebind(package_setup, aio_serve) -> None:
    setup = package_setup
    echo = AsyncEchoServicer()
    interceptor = rpcsec_aio.SecurityInterceptor(setup.server())
    address = await aio_serve([interceptor], [echo])
    async with rpcsec_aio.secure_channel(
        address,
        setup.client(),
        idempotent_methods=["/rpcsec.test.v1.Echo/"],  # the whole service
        **setup.channel_options(),
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        await stub.Say(_request("bind"))
        for attempt in ("unary", "server-streaming"):
            forget_contexts(interceptor)  # the server forgot (restart with a fresh ring)
            calls = echo.calls
            if attempt == "unary":
                assert (await stub.Say(_request("again"))).text == "again"
            else:
                assert [r.text async for r in stub.Repeat(_request("r", 2))] == ["r0", "r1"]
            assert echo.calls == calls + 1
            assert len(interceptor.contexts) == 1


async def test_half_open_handshakes_on_an_aio_server(ntlm_setup, aio_serve) -> None:
    setup = ntlm_setup
    clock_now = [time.time()]
    interceptor = rpcsec_aio.SecurityInterceptor(
        setup.server(),
        max_handshakes=16,
        max_handshakes_per_peer=4,
        handshake_timeout=30.0,
        clock=lambda: clock_now[0],
    )
    address = await aio_serve([interceptor], [AsyncEchoServicer()])
    first = handshake_pb2.NegotiateRequest(
        package="ntlm",
        token=ClientContext(setup.client(), setup.target(), setup.requirements).step(None).token,
    ).SerializeToString()

    async def attempt(call) -> str:
        try:
            await call.write(first)
            raw = await call.read()
        except grpc.RpcError as exc:
            return exc.code().name
        reply = handshake_pb2.NegotiateResponse.FromString(raw)
        return "admitted" if reply.token else reply.error.reason

    # The attacker's own connection (grpc would otherwise share one between channels).
    async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as flood:
        negotiate = flood.stream_stream(NEGOTIATE)
        calls = [negotiate() for _ in range(1000)]
        outcomes = await asyncio.gather(*(attempt(call) for call in calls))
        assert outcomes.count("admitted") == 4
        assert len(interceptor.handshakes) == 4 and interceptor.handshakes.refused == 996
        assert len(interceptor.contexts) == 0
        # The limit is per client host: this host's next handshake waits for the reaper (a
        # client of another host binds at once: test_grpc_admission).
        # Past the timeout, the next handshake cancels the half-open ones.
        clock_now[0] += 31
        async with rpcsec_aio.secure_channel(
            address, setup.client("bob"), **setup.channel_options()
        ) as legit:
            await echo_pb2_grpc.EchoStub(legit).Say(_request("legit again"))
        assert interceptor.handshakes.timed_out == 4
        assert await asyncio.to_thread(interceptor.handshakes.wait_idle, 5)


async def test_half_open_handshake_times_out_by_itself(ntlm_setup, aio_serve) -> None:
    # On an aio server each leg also has a real deadline: an idle half-open stream ends alone.
    setup = ntlm_setup
    interceptor = rpcsec_aio.SecurityInterceptor(setup.server(), handshake_timeout=0.2)
    address = await aio_serve([interceptor], [AsyncEchoServicer()])
    first = handshake_pb2.NegotiateRequest(
        package="ntlm",
        token=ClientContext(setup.client(), setup.target(), setup.requirements).step(None).token,
    ).SerializeToString()
    async with grpc.aio.insecure_channel(address) as raw:
        call = raw.stream_stream(NEGOTIATE)()
        await call.write(first)
        assert handshake_pb2.NegotiateResponse.FromString(await call.read()).token
        with pytest.raises(grpc.RpcError) as info:
            await call.read()  # we never send the next leg
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert reason_of(info.value) == "expired"
    assert await asyncio.to_thread(interceptor.handshakes.wait_idle, 5)


async def test_a_completed_handshake_never_half_closed_ends_by_itself(ntlm_setup, aio_serve):
    # The server waits for the client's half-close after the last leg (haproxy, below); a
    # client that never sends it holds its handshake slot only until the handshake timeout.
    setup = ntlm_setup
    interceptor = rpcsec_aio.SecurityInterceptor(setup.server(), handshake_timeout=0.3)
    address = await aio_serve([interceptor], [AsyncEchoServicer()])
    client = ClientContext(setup.client(), setup.target(), setup.requirements)
    async with grpc.aio.insecure_channel(address) as raw:
        call = raw.stream_stream(NEGOTIATE)()
        request = handshake_pb2.NegotiateRequest(package="ntlm", token=client.step(None).token)
        while True:
            await call.write(request.SerializeToString())
            reply = handshake_pb2.NegotiateResponse.FromString(await call.read())
            out = client.step(reply.token).token if reply.token else None
            if reply.complete:
                break
            request = handshake_pb2.NegotiateRequest(token=out)
        assert client.complete and reply.context_handle
        started = time.monotonic()
        assert await call.read() is grpc.aio.EOF  # never half-closed: the server ends it
        assert await call.code() is grpc.StatusCode.OK
        assert time.monotonic() - started < 5
    assert await asyncio.to_thread(interceptor.handshakes.wait_idle, 5)


class _Outcomes:
    """The outcomes a probe recorded, and a bounded wait for them: a handshake's stream ends
    on the server (and is recorded) only after the client's half-close, which may come after
    the client's own call already returned."""

    def __init__(self) -> None:
        self.ended_open: list[str] = []
        self._recorded = threading.Condition()

    def record(self, outcome: str) -> None:
        with self._recorded:
            self.ended_open.append(outcome)
            self._recorded.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        with self._recorded:
            return self._recorded.wait_for(lambda: len(self.ended_open) >= count, timeout)


class _EndedOpen(_Outcomes, grpc.aio.ServerInterceptor):
    """Records, for each handshake, whether the server ended the Negotiate stream with the
    client's request side still open -- what haproxy 2.6 answers with RST_STREAM CANCEL, a
    reset that can overtake the handshake's last leg."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler_call_details.method != NEGOTIATE_METHOD:
            return handler
        inner = handler.stream_stream

        async def negotiate(request_iterator, context):
            closed = []

            async def requests():
                async for raw in request_iterator:
                    yield raw
                closed.append(True)

            outcome = "cancelled"  # by the client (its channel closed): not the server's end
            try:
                async for reply in inner(requests(), context):
                    yield reply
                outcome = "ended open" if not closed else "ended after half-close"
            finally:
                self.record(outcome)

        return grpc.stream_stream_rpc_method_handler(negotiate)


class _SyncEndedOpen(_Outcomes, grpc.ServerInterceptor):
    """``_EndedOpen`` for a sync server."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler_call_details.method != NEGOTIATE_METHOD:
            return handler
        inner = handler.stream_stream

        def negotiate(request_iterator, context):
            closed = []

            def requests():
                try:
                    yield from request_iterator
                except grpc.RpcError:
                    closed.append("cancelled")  # the client's channel closed first
                    raise
                closed.append("half-closed")

            outcome = "cancelled"
            try:
                yield from inner(requests(), context)
                if not closed:
                    outcome = "ended open"
                elif closed[0] == "half-closed":
                    outcome = "ended after half-close"
            finally:
                self.record(outcome)

        return grpc.stream_stream_rpc_method_handler(negotiate)


async def test_the_handshake_stream_ends_only_after_the_client_half_closed(package_setup) -> None:
    """Regression (haproxy, 1 run in 15 under load: the bind failed CANCELLED): the server
    ended the Negotiate stream right after its last leg, while the client's side was still
    open. Now both servers wait for the client's half-close (sync and aio clients)."""
    setup = package_setup
    aio_probe, sync_probe = _EndedOpen(), _SyncEndedOpen()
    aio_server = grpc.aio.server(
        interceptors=[aio_probe, rpcsec_aio.SecurityInterceptor(setup.server())]
    )
    echo_pb2_grpc.add_EchoServicer_to_server(AsyncEchoServicer(), aio_server)
    aio_address = f"127.0.0.1:{aio_server.add_insecure_port('127.0.0.1:0')}"
    await aio_server.start()
    sync_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[sync_probe, SecurityInterceptor(setup.server(), max_handshakes=4)],
    )
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), sync_server)
    sync_address = f"127.0.0.1:{sync_server.add_insecure_port('127.0.0.1:0')}"
    sync_server.start()

    def sync_client(address: str) -> str:
        with secure_channel(address, setup.client(), **setup.channel_options()) as channel:
            return echo_pb2_grpc.EchoStub(channel).Say(_request("sync"), timeout=10).principal

    try:
        for address in (aio_address, sync_address):
            async with rpcsec_aio.secure_channel(
                address, setup.client(), **setup.channel_options()
            ) as channel:
                said = await echo_pb2_grpc.EchoStub(channel).Say(_request("aio"), timeout=10)
                assert said.principal == setup.principal("alice")
            assert await asyncio.to_thread(sync_client, address) == setup.principal("alice")
        # Each handshake stream ends by itself once its client half-closed (no server stop
        # needed, which would cut a stream still waiting and record it "cancelled").
        for probe in (aio_probe, sync_probe):
            assert await asyncio.to_thread(probe.wait_for, 2), probe.ended_open
    finally:
        await aio_server.stop(None)
        sync_server.stop(None)
    for probe in (aio_probe, sync_probe):
        assert len(probe.ended_open) == 2
        assert "ended open" not in probe.ended_open
        assert "ended after half-close" in probe.ended_open
