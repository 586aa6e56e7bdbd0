"""``secure_server()``: handlers protected once, when registered -- no interceptor per call.

Real servers on loopback. Every way a handler can be registered through the returned server
(generated ``add_XServicer_to_server``, which uses both ``add_generic_rpc_handlers`` and
``add_registered_method_handlers``; a hand-written ``GenericRpcHandler``; a service table from
``grpc.method_handlers_generic_handler``) is refused without a context, and served with one.
"""

from __future__ import annotations

import echo_pb2
import echo_pb2_grpc
import grpc
import grpc.aio
import pytest
from helpers.echo import AsyncEchoServicer, EchoServicer

from rpcsec import current_token
from rpcsec.grpc import SecurityInterceptor, reason_of, secure_channel, secure_server
from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.grpc._server import HandlerCache

SAY = "/rpcsec.test.v1.Echo/Say"


def _who(request: bytes, context: object) -> bytes:
    token = current_token()
    return (token.principal if token else "nobody").encode()


class _AnyMethod(grpc.GenericRpcHandler):
    """A generic handler answering every method under /custom.v1.Any/ (asked per call)."""

    def service(self, handler_call_details):
        if handler_call_details.method.startswith("/custom.v1.Any/"):
            return grpc.unary_unary_rpc_method_handler(_who)
        return None


def _raw_unary(address: str, method: str, payload: bytes = b"x") -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(method)(payload, timeout=10)
    return info.value


@pytest.fixture
def registered(package_setup):
    server = secure_server(package_setup.server(), max_workers=8)
    echo = EchoServicer()
    echo_pb2_grpc.add_EchoServicer_to_server(echo, server)  # generic + registered handlers
    server.add_generic_rpc_handlers((_AnyMethod(),))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "custom.v1.Table", {"Who": grpc.unary_unary_rpc_method_handler(_who)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield package_setup, server, echo, f"127.0.0.1:{port}"
    server.stop(None).wait()


def test_secure_server_runs_no_interceptor_per_call(registered, monkeypatch) -> None:
    setup, server, echo, address = registered
    calls = {"intercept": 0, "cache": 0}
    original_intercept = SecurityInterceptor.intercept_service
    original_get = HandlerCache.get

    def counting_intercept(self, continuation, details):
        calls["intercept"] += 1
        return original_intercept(self, continuation, details)

    def counting_get(self, method, handler, build):
        calls["cache"] += 1
        return original_get(self, method, handler, build)

    monkeypatch.setattr(SecurityInterceptor, "intercept_service", counting_intercept)
    monkeypatch.setattr(HandlerCache, "get", counting_get)
    with secure_channel(address, setup.client(), **setup.channel_options()) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for index in range(5):
            assert stub.Say(echo_pb2.EchoRequest(text=f"hi {index}")).text == f"hi {index}"
        assert [r.text for r in stub.Repeat(echo_pb2.EchoRequest(text="r", repeat=2))] == [
            "r0",
            "r1",
        ]
        table = channel.unary_unary("/custom.v1.Table/Who")
        assert table(b"") == setup.principal().encode()
        assert len(server.security_interceptor.contexts) == 1  # one handshake, one context
    # Registered handlers were wrapped once: no interceptor, no per-call wrapping lookup.
    assert calls == {"intercept": 0, "cache": 0}
    assert echo.calls == 6


def test_a_generic_handler_asked_per_call_is_protected_too(registered) -> None:
    setup, _server, _echo, address = registered
    with secure_channel(address, setup.client(), **setup.channel_options()) as channel:
        assert channel.unary_unary("/custom.v1.Any/Who")(b"") == setup.principal().encode()


@pytest.mark.parametrize(
    "method",
    [
        SAY,  # generated: add_registered_method_handlers (and the generic table)
        "/rpcsec.test.v1.Echo/Repeat",
        "/custom.v1.Any/Who",  # a hand-written GenericRpcHandler
        "/custom.v1.Table/Who",  # grpc.method_handlers_generic_handler
    ],
)
def test_every_registered_handler_is_refused_without_a_context(registered, method) -> None:
    _setup, _server, echo, address = registered
    with grpc.insecure_channel(address) as channel:
        call = (
            channel.unary_stream(method)
            if method.endswith("Repeat")
            else channel.unary_unary(method)
        )
        with pytest.raises(grpc.RpcError) as info:
            result = call(b"\x0a\x02hi", timeout=10)
            list(result) if method.endswith("Repeat") else result
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(info.value) == "context-unknown"
    assert echo.calls == 0


def test_an_unregistered_method_is_unimplemented(registered) -> None:
    _setup, _server, _echo, address = registered
    assert _raw_unary(address, "/nobody.v1.X/Y").code() is grpc.StatusCode.UNIMPLEMENTED


def test_the_handshake_service_cannot_be_taken(package_setup) -> None:
    server = secure_server(package_setup.server(), max_workers=4)
    with pytest.raises(ValueError, match="handshake"):
        server.add_registered_method_handlers(
            "rpcsec.v1.SecurityHandshake",
            {"Negotiate": grpc.unary_unary_rpc_method_handler(_who)},
        )
    # A generic handler claiming it is never asked: the real handshake still binds.
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "rpcsec.v1.SecurityHandshake",
                {"Release": grpc.unary_unary_rpc_method_handler(_who)},
            ),
        )
    )
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        address = f"127.0.0.1:{port}"
        assert _raw_unary(address, "/rpcsec.v1.SecurityHandshake/Release").code() is (
            grpc.StatusCode.UNAUTHENTICATED
        )
        with secure_channel(
            address, package_setup.client(), **package_setup.channel_options()
        ) as channel:
            assert echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="ok")).text == "ok"
    finally:
        server.stop(None).wait()


async def test_aio_secure_server_registers_protected_handlers(package_setup, monkeypatch) -> None:
    calls = []
    original = rpcsec_aio.SecurityInterceptor.intercept_service

    async def counting(self, continuation, details):
        calls.append(details.method)
        return await original(self, continuation, details)

    monkeypatch.setattr(rpcsec_aio.SecurityInterceptor, "intercept_service", counting)
    server = rpcsec_aio.secure_server(package_setup.server())
    echo = AsyncEchoServicer()
    echo_pb2_grpc.add_EchoServicer_to_server(echo, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        address = f"127.0.0.1:{port}"
        async with grpc.aio.insecure_channel(address) as raw:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await raw.unary_unary(SAY)(b"\x0a\x02hi", timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        channel = rpcsec_aio.secure_channel(
            address, package_setup.client(), **package_setup.channel_options()
        )
        try:
            stub = echo_pb2_grpc.EchoStub(channel)
            assert (await stub.Say(echo_pb2.EchoRequest(text="aio"))).text == "aio"
        finally:
            await channel.close()
        assert echo.calls == 1
        assert calls == []
    finally:
        await server.stop(None)
