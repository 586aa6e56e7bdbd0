"""Hostile input against a real gRPC server on loopback: each attempt fails with the right
status and reason, never reaches a handler, and leaves the server serving everyone else.

The attacker sits on the raw channel under a secure channel (``helpers.wiretap``) or speaks
raw gRPC with crafted bytes and metadata; calls a correct client would make are crafted from
the documented wire format.
"""

from __future__ import annotations

import asyncio
import os
import time

import echo_pb2
import echo_pb2_grpc
import grpc
import grpc.aio
import pytest
from helpers.echo import AdminServicer, EchoServicer
from helpers.grpc_setup import SERVER_STYLES, forget_contexts
from helpers.wiretap import Wiretap, craft_call, craft_stream_call, flip

from rpcsec.grpc import SecurityInterceptor, reason_of, secure_channel
from rpcsec.grpc._proto import handshake_pb2
from rpcsec.sspi import (
    ClientContext,
    MessageAlteredError,
    SecurityError,
)

SAY = "/rpcsec.test.v1.Echo/Say"
REPEAT = "/rpcsec.test.v1.Echo/Repeat"
COLLECT = "/rpcsec.test.v1.Echo/Collect"
NEGOTIATE = "/rpcsec.v1.SecurityHandshake/Negotiate"
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
RELEASE = "/rpcsec.v1.SecurityHandshake/Release"


@pytest.fixture(params=SERVER_STYLES)
def server_style(request: pytest.FixtureRequest) -> str:
    """Every test here runs against a SecurityInterceptor and against handlers protected
    when registered (``secure_server``'s way)."""
    return request.param


class Clock:
    """Real time until a test moves it (certificates must stay valid)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _say(text: str) -> bytes:
    return echo_pb2.EchoRequest(text=text).SerializeToString()


def _refused(call, code=grpc.StatusCode.UNAUTHENTICATED) -> str | None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() is code, info.value
    return reason_of(info.value)


@pytest.fixture
def tapped(package_setup, serve):
    """(setup, echo servicer, interceptor, address, wiretap, secure channel over the tap)."""
    setup = package_setup
    echo = EchoServicer()
    interceptor = SecurityInterceptor(setup.server())
    address = serve([interceptor], [echo, AdminServicer()])
    tap = Wiretap()
    raw = grpc.intercept_channel(grpc.insecure_channel(address), tap)
    channel = secure_channel(raw, setup.client(), **setup.channel_options())
    yield setup, echo, interceptor, address, tap, channel
    channel.close()


def _still_serves(setup, address) -> None:
    with secure_channel(address, setup.client("bob"), **setup.channel_options()) as channel:
        reply = echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="still here"))
        assert reply.principal == setup.principal("bob")


def test_missing_unknown_and_malformed_handles(tapped) -> None:
    setup, echo, _, address, tap, channel = tapped
    stub = echo_pb2_grpc.EchoStub(channel)
    stub.Say(echo_pb2.EchoRequest(text="bind"))
    stub.Collect(iter([echo_pb2.EchoRequest(text="bind")]))
    calls_before = echo.calls
    said, collected = tap.app_calls()[-2:]
    handle = said.value("rpcsec-context-bin")
    header = collected.value("rpcsec-call-bin")
    raw = grpc.insecure_channel(address)
    say = raw.unary_unary(SAY)
    collect = raw.stream_unary(COLLECT)
    assert _refused(lambda: say(_say("no metadata"))) == "context-unknown"
    assert _refused(lambda: collect(iter([_say("x")]))) == "context-unknown"
    for bad_handle in (os.urandom(16), b"\x01\x02", handle + b"\x00"):
        metadata = (("rpcsec-context-bin", bad_handle), ("rpcsec-call-bin", header))
        assert _refused(lambda m=metadata: say(said.requests[0], metadata=m)) == "context-unknown"
        assert (
            _refused(lambda m=metadata: collect(iter(collected.requests), metadata=m))
            == "context-unknown"
        )
    # A known handle, but no call opening: an unprotected request, or no valid call header.
    known = (("rpcsec-context-bin", handle),)
    for request in (b"", _say("plain"), b"\x4d" + os.urandom(30)):
        assert _refused(lambda r=request: say(r, metadata=known)) == "invalid-token"
    for bad_header in (b"", b"\x05", b"\x05" + b"\x4d" * 3, flip(header, 0), b"\x05" + header[2:]):
        metadata = (*known, ("rpcsec-call-bin", bad_header))
        assert _refused(lambda m=metadata: collect(iter(collected.requests), metadata=m)) in {
            "invalid-token",
            "message-altered",
        }
    assert _refused(lambda: collect(iter(collected.requests), metadata=known)) == "invalid-token"
    assert echo.calls == calls_before  # nothing reached the handler
    raw.close()
    _still_serves(setup, address)


def test_expired_and_idle_contexts(package_setup, serve) -> None:
    setup = package_setup
    clock = Clock()
    echo = EchoServicer()
    interceptor = SecurityInterceptor(
        setup.server(), max_lifetime=60.0, idle_timeout=30.0, clock=clock
    )
    address = serve([interceptor], [echo])
    tap = Wiretap()
    raw = grpc.intercept_channel(grpc.insecure_channel(address), tap)
    with secure_channel(raw, setup.client(), **setup.channel_options()) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        stub.Say(echo_pb2.EchoRequest(text="bind"))
        handle = tap.app_calls()[-1].value("rpcsec-context-bin")
        context = channel.security_context
        attacker = grpc.insecure_channel(address)
        say = attacker.unary_unary(SAY)

        clock.now += 20  # not idle yet: a correctly made call goes through
        metadata, token, _ = craft_call(context, handle, SAY, _say("fresh"))
        say(token, metadata=metadata)

        clock.now += 25  # 25 s idle > nothing; lifetime 45 s of 60: still fine
        metadata, token, _ = craft_call(context, handle, SAY, _say("fresh"))
        say(token, metadata=metadata)

        clock.now += 20  # 65 s > max_lifetime: the server refuses the context as expired,
        # signing that the channel's call did not run: the channel re-binds and sends it again
        # (the handler runs once).
        calls = echo.calls
        assert stub.Say(echo_pb2.EchoRequest(text="again")).text == "again"
        assert echo.calls == calls + 1
        assert len(interceptor.contexts) == 1
        handle2 = tap.app_calls()[-1].value("rpcsec-context-bin")
        assert handle2 != handle
        # The expired context stays expired: its ticket says so, on any replica.
        metadata, token, _ = craft_call(context, handle, SAY, _say("late"))
        assert _refused(lambda: say(token, metadata=metadata)) == "expired"

        for _ in range(2):  # keep it from idling until its lifetime ends
            clock.now += 25
            stub.Say(echo_pb2.EchoRequest(text="keep"))
        clock.now += 11  # 61 s > max_lifetime
        metadata, token, _ = craft_call(channel.security_context, handle2, SAY, _say("late"))
        with pytest.raises(grpc.RpcError) as info:
            say(token, metadata=metadata)
        assert reason_of(info.value) == "expired"
        # A fresh call made with the context gets the signed "did not run" (the crafted call
        # is the client's own); the server has forgotten the context now.
        assert any(key == "rpcsec-not-run-bin" for key, _ in info.value.trailing_metadata())
        assert len(interceptor.contexts) == 0
        # That call never reached the channel: its next call meets the expired ticket with no
        # cached entry to sign with, which proves nothing about whether it ran: it fails, and
        # the one after re-binds.
        assert _refused(lambda: stub.Say(echo_pb2.EchoRequest(text="x"))) == "expired"
        assert stub.Say(echo_pb2.EchoRequest(text="rebound")).text == "rebound"
        handle3 = tap.app_calls()[-1].value("rpcsec-context-bin")

        # Idle too long: the cache forgets the entry, but the ticket still opens (idle_timeout
        # bounds memory; max_lifetime bounds the context's life).
        # A replica re-opens the ticket, unless its credentials handle opens an export once
        # (then context-unknown: the client re-binds). Either way nothing runs twice.
        clock.now += 31
        calls = echo.calls
        metadata, token, _ = craft_call(channel.security_context, handle3, SAY, _say("idle"))
        try:
            say(token, metadata=metadata)
            reopened = True
        except grpc.RpcError as exc:
            assert reason_of(exc) == "context-unknown"
            reopened = False
        assert echo.calls == calls + int(reopened)
        if reopened:
            # The replay store refuses that request a second time, even when the ticket is
            # opened afresh (a new entry has a new window of its own).
            interceptor.contexts.discard(interceptor.contexts._entries[handle3])
            assert _refused(lambda: say(token, metadata=metadata)) in {"replay", "context-unknown"}
            assert echo.calls == calls + 1
        attacker.close()


def test_altered_requests(tapped) -> None:
    setup, echo, _, address, tap, channel = tapped
    stub = echo_pb2_grpc.EchoStub(channel)
    stub.Say(echo_pb2.EchoRequest(text="bind"))
    requests = [echo_pb2.EchoRequest(text=t) for t in "ab"]
    before = echo.calls
    # The message that opens a unary call: tag, payload, sequence number, token kind (the
    # kind is the call's protection level, so flipping it is a downgrade attempt).
    for position in (-1, -17, 12, 0):
        tap.requests = lambda method, messages, p=position: [flip(messages[0], p)]
        reason = _refused(lambda: stub.Say(echo_pb2.EchoRequest(text="altered")))
        assert reason in {"message-altered", "invalid-token"}
    level_swapped = {0x53: 0x57, 0x57: 0x53}
    tap.requests = lambda method, messages: [
        bytes([level_swapped[messages[0][0]]]) + messages[0][1:]
    ]
    assert _refused(lambda: stub.Say(echo_pb2.EchoRequest(text="x"))) == "message-altered"
    tap.requests = None

    # A request stream's call header: its signature, and the protection level it names.
    def alter_header(method: str, metadata: tuple) -> tuple:
        return tuple((k, flip(v, -3) if k == "rpcsec-call-bin" else v) for k, v in metadata)

    def downgrade(method: str, metadata: tuple) -> tuple:
        return tuple(
            (k, bytes([11 - v[0]]) + v[1:] if k == "rpcsec-call-bin" else v) for k, v in metadata
        )

    for tamper in (alter_header, downgrade):
        tap.metadata = tamper
        assert _refused(lambda: stub.Collect(iter(requests))) == "message-altered"
    tap.metadata = None
    tap.requests = lambda method, messages: [flip(messages[0], -1), *messages[1:]]
    assert _refused(lambda: stub.Collect(iter(requests))) == "message-altered"
    tap.requests = None
    assert echo.calls == before + 1  # the stream's handler starts; the others never ran
    assert stub.Say(echo_pb2.EchoRequest(text="fine")).text == "fine"
    _still_serves(setup, address)


def test_replayed_calls_and_messages(tapped) -> None:
    setup, echo, _, address, tap, channel = tapped
    stub = echo_pb2_grpc.EchoStub(channel)
    stub.Say(echo_pb2.EchoRequest(text="first"))
    first = tap.app_calls()[-1]
    requests = [echo_pb2.EchoRequest(text=t) for t in "ab"]
    stub.Collect(iter(requests))
    stream = tap.app_calls()[-1]
    before = echo.calls
    attacker = grpc.insecure_channel(address)

    # Whole calls again, to the same method and to another one: their opening token (the
    # request message, or the stream's call header) was seen before. Moved to another method
    # it does not even verify (the AAD binds the method), and the replay store is asked only
    # about requests that verified: refused as altered before any replay check.
    say = attacker.unary_unary(SAY)
    assert _refused(lambda: say(first.requests[0], metadata=first.metadata)) == "replay"
    admin = attacker.unary_unary("/rpcsec.test.v1.Admin/Shutdown")
    assert _refused(lambda: admin(first.requests[0], metadata=first.metadata)) == (
        "message-altered"
    )
    collect = attacker.stream_unary(COLLECT)
    assert _refused(lambda: collect(iter(stream.requests), metadata=stream.metadata)) == "replay"

    # An earlier call's request message inside a new, legitimate call.
    tap.requests = lambda method, messages: [first.requests[0]]
    assert _refused(lambda: stub.Say(echo_pb2.EchoRequest(text="second"))) == "replay"
    # An in-stream message is checked by its (call, position), not by the replay window: an
    # earlier stream's message is protected for another call.
    tap.requests = lambda method, messages: [stream.requests[0], *messages[1:]]
    assert _refused(lambda: stub.Collect(iter(requests))) == "message-altered"

    # A stream message that was never delivered (the attacker swallowed it) pasted into the
    # next stream: fresh sequence number, but protected for another call.
    swallowed: list[bytes] = []

    def swallow(method: str, messages: list[bytes]) -> list[bytes]:
        swallowed.append(messages[0])
        return [b"\x53" + os.urandom(40), *messages[1:]]

    tap.requests = swallow
    assert _refused(lambda: stub.Collect(iter(requests))) == "message-altered"
    tap.requests = lambda method, messages: [swallowed[0], *messages[1:]]
    assert _refused(lambda: stub.Collect(iter(requests))) == "message-altered"
    tap.requests = None
    assert echo.calls == before + 3  # the stream handlers started; no unary handler ran
    attacker.close()
    _still_serves(setup, address)


def test_a_withheld_unary_call_is_only_ever_itself(tapped) -> None:
    # A unary call's request message *is* the call. An attacker who withholds it and delivers
    # it later runs exactly that call (same method, same argument, once); it cannot make it
    # answer another call: the client refuses a response that belongs to a different call.
    _setup, echo, _, _address, tap, channel = tapped
    stub = echo_pb2_grpc.EchoStub(channel)
    stub.Say(echo_pb2.EchoRequest(text="bind"))
    before = echo.calls
    withheld: list[bytes] = []

    def withhold(method: str, messages: list[bytes]) -> list[bytes]:
        withheld.append(messages[0])
        return [b"\x53" + os.urandom(40)]

    tap.requests = withhold
    assert _refused(lambda: stub.Say(echo_pb2.EchoRequest(text="withheld"))) == ("message-altered")
    tap.requests = lambda method, messages: [withheld[0]]
    with pytest.raises(MessageAlteredError):
        stub.Say(echo_pb2.EchoRequest(text="next"))  # answered for the withheld call: refused
    tap.requests = lambda method, messages: [withheld[0]]
    assert _refused(lambda: stub.Say(echo_pb2.EchoRequest(text="again"))) == "replay"
    tap.requests = None
    assert echo.calls == before + 1  # the withheld call ran once, as itself


def test_calls_are_bound_to_their_method(tapped) -> None:
    _setup, echo, _, address, tap, channel = tapped
    echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="bind"))
    handle = tap.app_calls()[-1].value("rpcsec-context-bin")
    context = channel.security_context
    before = echo.calls
    attacker = grpc.insecure_channel(address)
    say = attacker.unary_unary(SAY)
    collect = attacker.stream_unary(COLLECT)
    shutdown = "/rpcsec.test.v1.Admin/Shutdown"
    metadata, token, _ = craft_call(context, handle, SAY, _say("x"), aad_method=shutdown)
    assert _refused(lambda: say(token, metadata=metadata)) == "message-altered"
    metadata, tokens, _ = craft_stream_call(
        context, handle, COLLECT, [_say("x")], header_method=shutdown
    )
    assert _refused(lambda: collect(iter(tokens), metadata=metadata)) == "message-altered"
    assert echo.calls == before
    # The same crafting done right is accepted: the test's wire format is the real one.
    metadata, token, _ = craft_call(context, handle, SAY, _say("ok"))
    assert say(token, metadata=metadata)
    metadata, tokens, _ = craft_stream_call(context, handle, COLLECT, [_say("a"), _say("b")])
    assert collect(iter(tokens), metadata=metadata)
    assert echo.calls == before + 2
    attacker.close()


def test_responses_replayed_or_pasted_into_another_call(tapped) -> None:
    _setup, _echo, _, _address, tap, channel = tapped
    stub = echo_pb2_grpc.EchoStub(channel)
    stub.Say(echo_pb2.EchoRequest(text="one"))
    first_response = tap.app_calls()[-1].responses[0]

    tap.responses = lambda method, messages: [first_response]
    # Bound to the call it answers (its per-call nonce and AAD): wrong for any other call.
    with pytest.raises(MessageAlteredError):
        stub.Say(echo_pb2.EchoRequest(text="two"))

    # A response the client never saw, delivered as the answer to the next call.
    held: list[bytes] = []

    def hold(method: str, messages: list[bytes]) -> list[bytes]:
        if not held:
            held.append(messages[0])
            return [b"\x53" + os.urandom(30)]
        return [held[0]]

    tap.responses = hold
    with pytest.raises(SecurityError):
        stub.Say(echo_pb2.EchoRequest(text="three"))
    with pytest.raises(MessageAlteredError):
        stub.Say(echo_pb2.EchoRequest(text="four"))
    tap.responses = lambda method, messages: [flip(messages[0], 20)]
    with pytest.raises(MessageAlteredError):
        stub.Say(echo_pb2.EchoRequest(text="five"))
    tap.responses = None
    assert stub.Say(echo_pb2.EchoRequest(text="six")).text == "six"


def test_stream_messages_cannot_move_or_be_cut(tapped) -> None:
    setup, _echo, _, address, tap, channel = tapped
    stub = echo_pb2_grpc.EchoStub(channel)
    requests = [echo_pb2.EchoRequest(text=t) for t in "abc"]
    assert stub.Collect(iter(requests)).text == "abc"

    # Requests: swap two messages, drop the end marker, drop a message, add one after the end.
    for rewrite in (
        lambda m: [m[1], m[0], *m[2:]],
        lambda m: m[:-1],
        lambda m: [m[0], *m[2:]],
        lambda m: [*m, m[0]],
    ):
        tap.requests = lambda method, messages, r=rewrite: r(messages)
        assert _refused(lambda: stub.Collect(iter(requests))) in {"message-altered", "replay"}
    tap.requests = None

    # Responses: the same on the way back; the client never returns unverified data.
    repeat = echo_pb2.EchoRequest(text="r", repeat=3)
    assert [r.text for r in stub.Repeat(repeat)] == ["r0", "r1", "r2"]
    for rewrite in (
        lambda m: [m[1], m[0], *m[2:]],
        lambda m: m[:-1],  # end marker cut: truncation
        lambda m: m[:2],  # last message and end marker cut
        lambda m: [m[0], *m[2:]],
    ):
        tap.responses = lambda method, messages, r=rewrite: r(messages)
        got: list[str] = []
        with pytest.raises(MessageAlteredError):
            for response in stub.Repeat(repeat):
                got.append(response.text)
        assert got == ["r0", "r1", "r2"][: len(got)]  # only verified messages came out
    tap.responses = None
    assert [r.text for r in stub.Chat(iter(requests))] == ["A", "B", "C"]
    _still_serves(setup, address)


def test_release_must_be_signed(tapped) -> None:
    _setup, _, interceptor, address, tap, channel = tapped
    echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="bind"))
    recorded = tap.app_calls()[-1]
    handle = recorded.value("rpcsec-context-bin")
    attacker = grpc.insecure_channel(address)
    release = attacker.unary_unary(RELEASE)
    assert _refused(lambda: release(b"", metadata=(("rpcsec-context-bin", handle),))) == (
        "invalid-token"
    )
    # Another call's opening token, replayed (it is bound to its own method: it does not
    # verify here, before any replay check), or protected for another method.
    assert _refused(lambda: release(recorded.requests[0], metadata=recorded.metadata)) == (
        "message-altered"
    )
    metadata, token, _ = craft_call(channel.security_context, handle, SAY, b"")
    assert _refused(lambda: release(token, metadata=metadata)) == "message-altered"
    assert len(interceptor.contexts) == 1
    channel.close()  # the real, signed release
    assert len(interceptor.contexts) == 0
    release_call = next(c for c in tap.calls if c.method == RELEASE)
    assert _refused(lambda: release(release_call.requests[0], metadata=release_call.metadata)) == (
        "context-unknown"
    )
    attacker.close()


def test_transparent_rebind_after_the_server_forgets(package_setup, serve) -> None:
    setup = package_setup
    echo = EchoServicer()
    interceptor = SecurityInterceptor(setup.server())
    address = serve([interceptor], [echo])
    with secure_channel(
        address, setup.client(), idempotent_methods=[SAY, REPEAT], **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        stub.Say(echo_pb2.EchoRequest(text="bind"))
        first = channel.security_context
        for call in (
            lambda: stub.Say(echo_pb2.EchoRequest(text="x")).text,
            lambda: [r.text for r in stub.Repeat(echo_pb2.EchoRequest(text="r", repeat=2))],
        ):
            interceptor.contexts.purge()  # nothing is stale yet: nothing dropped
            assert len(interceptor.contexts) == 1
            # The server forgets the context (restart, eviction): the next call of a method
            # declared idempotent re-binds and is sent once more; the handler runs once.
            forget_contexts(interceptor)
            calls = echo.calls
            assert call()
            assert echo.calls == calls + 1
            assert channel.security_context is not first
            first = channel.security_context

        # A request-streaming call cannot be sent again: it fails, the next call re-binds.
        forget_contexts(interceptor)
        assert (
            _refused(lambda: stub.Collect(iter([echo_pb2.EchoRequest(text="a")])))
            == "context-unknown"
        )
        assert stub.Say(echo_pb2.EchoRequest(text="y")).text == "y"


def test_real_server_restart(package_setup) -> None:
    # A new server process on the same port knows no context: the channel re-binds by itself.
    from concurrent import futures

    from helpers.grpc_setup import add_services

    setup = package_setup

    def start(port: int = 0) -> tuple[grpc.Server, int]:
        server = grpc.server(
            futures.ThreadPoolExecutor(4), interceptors=[SecurityInterceptor(setup.server())]
        )
        add_services(server, [EchoServicer()])
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        return server, bound

    server, port = start()
    channel = secure_channel(
        f"127.0.0.1:{port}", setup.client(), idempotent_methods=[SAY], **setup.channel_options()
    )
    stub = echo_pb2_grpc.EchoStub(channel)
    try:
        assert stub.Say(echo_pb2.EchoRequest(text="before")).text == "before"
        first = channel.security_context
        server.stop(None).wait()
        server, again = start(port)
        assert again == port
        reply = stub.Say(echo_pb2.EchoRequest(text="after"), wait_for_ready=True, timeout=10)
        assert reply.text == "after"
        assert channel.security_context is not first
    finally:
        channel.close()
        server.stop(None).wait()


def test_eviction_keeps_the_table_bounded(package_setup, serve) -> None:
    setup = package_setup
    interceptor = SecurityInterceptor(setup.server(), max_contexts=2)
    address = serve([interceptor], [EchoServicer()])
    channels = [
        secure_channel(address, setup.client(), idempotent_methods=[SAY], **setup.channel_options())
        for _ in range(4)
    ]
    stubs = [echo_pb2_grpc.EchoStub(c) for c in channels]
    for _ in range(2):
        for index, stub in enumerate(stubs):
            assert stub.Say(echo_pb2.EchoRequest(text=str(index))).text == str(index)
            assert len(interceptor.contexts) <= 2
    assert interceptor.contexts.evictions >= 6
    for channel in channels:
        channel.close()


def test_client_context_expiry_rebinds(package_setup, serve) -> None:
    setup = package_setup
    clock = Clock()
    interceptor = SecurityInterceptor(setup.server())
    address = serve([interceptor], [EchoServicer()])
    with secure_channel(
        address, setup.client(), lifetime=60.0, clock=clock, **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        stub.Say(echo_pb2.EchoRequest(text="a"))
        first = channel.security_context
        clock.now += 61
        stub.Say(echo_pb2.EchoRequest(text="b"))
        assert channel.security_context is not first
        assert len(interceptor.contexts) == 2  # the old one idles out on the server


def _negotiate_raw(address: str):
    channel = grpc.insecure_channel(address)
    return channel, channel.stream_stream(NEGOTIATE)


def test_bad_handshakes(package_setup, serve) -> None:
    setup = package_setup
    interceptor = SecurityInterceptor(setup.server())
    address = serve([interceptor], [EchoServicer()])
    channel, negotiate = _negotiate_raw(address)

    def one_leg(message: bytes) -> tuple[handshake_pb2.NegotiateResponse, str | None]:
        call = negotiate(iter([message]))
        replies = []
        with pytest.raises(grpc.RpcError) as info:
            for raw in call:
                replies.append(handshake_pb2.NegotiateResponse.FromString(raw))
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        return replies[-1], reason_of(info.value)

    for message, reason in [
        (b"\xff\xff\xff", "invalid-token"),
        (
            handshake_pb2.NegotiateRequest(package="nosuch", token=b"x").SerializeToString(),
            "no-credentials",
        ),
        (
            handshake_pb2.NegotiateRequest(package=setup.package).SerializeToString(),
            "invalid-token",
        ),
        (
            handshake_pb2.NegotiateRequest(
                package=setup.package, token=os.urandom(64)
            ).SerializeToString(),
            None,
        ),
    ]:
        reply, got = one_leg(message)
        assert reply.error.reason == got
        if reason is not None:
            assert got == reason
    assert interceptor.handshakes.wait_idle(5)
    assert len(interceptor.contexts) == 0
    channel.close()
    _still_serves(setup, address)


def test_handshake_abandoned_halfway(package_setup, serve) -> None:
    setup = package_setup
    interceptor = SecurityInterceptor(setup.server())
    address = serve([interceptor], [EchoServicer()])
    channel, negotiate = _negotiate_raw(address)
    for abandon in ("cancel", "half-close"):
        context = ClientContext(setup.client(), setup.target(), setup.requirements)
        first = handshake_pb2.NegotiateRequest(
            package=setup.package, token=context.step(None).token
        ).SerializeToString()
        if abandon == "cancel":
            import queue

            outbox: queue.SimpleQueue = queue.SimpleQueue()
            outbox.put(first)
            call = negotiate(iter(outbox.get, None))
            reply = handshake_pb2.NegotiateResponse.FromString(next(call))
            assert reply.token and not reply.complete
            assert len(interceptor.handshakes) == 1
            call.cancel()
            outbox.put(None)
        else:
            replies = list(negotiate(iter([first])))  # the client stops after one leg
            assert len(replies) == 1
        assert interceptor.handshakes.wait_idle(5)
        assert len(interceptor.contexts) == 0
    channel.close()
    _still_serves(setup, address)


def test_half_open_handshake_flood_from_one_peer(ntlm_setup, serve) -> None:
    setup = ntlm_setup
    clock = Clock()
    interceptor = SecurityInterceptor(
        setup.server(),
        max_handshakes=8,
        max_handshakes_per_peer=4,
        handshake_timeout=10.0,
        clock=clock,
    )
    address = serve([interceptor], [EchoServicer()], max_workers=12)
    first = handshake_pb2.NegotiateRequest(
        package="ntlm",
        token=ClientContext(setup.client(), setup.target(), setup.requirements).step(None).token,
    ).SerializeToString()

    async def attempt(call) -> str:
        # The server refuses at once (before reading anything), so the write may find the
        # stream already closed; the outcome is what read() reports.
        try:
            await call.write(first)
        except grpc.RpcError:
            # The write raced the refusal; grpc then reports its local send failure instead
            # of the server's status. The server-side counters below are authoritative.
            return "write-failed"
        try:
            raw = await call.read()
        except grpc.RpcError as exc:
            return f"{exc.code().name}:{reason_of(exc)}"
        reply = handshake_pb2.NegotiateResponse.FromString(raw)
        return "admitted" if reply.token else f"error:{reply.error.reason}"

    async def flood() -> tuple[int, int, list]:
        # The attacker's own connection (grpc would otherwise share one between channels).
        channel = grpc.aio.insecure_channel(address, options=OWN_CONNECTION)
        negotiate = channel.stream_stream(NEGOTIATE)
        calls = [negotiate() for _ in range(1000)]
        outcomes = await asyncio.gather(*(attempt(call) for call in calls))
        admitted = outcomes.count("admitted")
        busy = outcomes.count("RESOURCE_EXHAUSTED:busy") + outcomes.count("write-failed")
        return admitted, busy, [channel, calls]

    async def run() -> None:
        admitted, busy, (flood_channel, calls) = await flood()
        assert admitted == 4 and busy == 996
        # Bounded: four half-open handshakes held, no context, the rest refused at once.
        assert len(interceptor.handshakes) == 4
        assert interceptor.handshakes.peers == 1
        assert len(interceptor.contexts) == 0
        assert interceptor.handshakes.refused == 996
        # The limit is per client *host*: another connection of the flooding host is the same
        # client (a client of another host binds at once: test_grpc_admission).
        # Past the timeout, the next handshake reaps the half-open ones (their streams are
        # cancelled, freeing the server threads they held).
        clock.now += 11
        await asyncio.to_thread(_still_serves, setup, address)
        assert interceptor.handshakes.timed_out == 4
        assert await asyncio.to_thread(interceptor.handshakes.wait_idle, 5)
        codes = await asyncio.gather(*(c.code() for c in calls))
        assert grpc.StatusCode.OK not in codes
        await flood_channel.close()

    asyncio.run(run())
    assert len(interceptor.contexts) == 0  # the legitimate clients released theirs on close


def test_far_future_sequence_numbers_are_refused_at_once(tapped) -> None:
    # One message naming a sequence number near 2**64 must not make the server derive keys
    # for 2**40 epochs (it did: the core now bounds how far ahead a peer may be).
    _setup, echo, _, _address, tap, channel = tapped
    stub = echo_pb2_grpc.EchoStub(channel)
    stub.Say(echo_pb2.EchoRequest(text="bind"))
    before = echo.calls
    for kind in (0x57, 0x53):
        forged = bytes([kind]) + (2**63 + 5).to_bytes(8, "big") + os.urandom(48)
        tap.requests = lambda method, messages, f=forged: [f]
        started = time.perf_counter()
        assert _refused(lambda: stub.Say(echo_pb2.EchoRequest(text="x"))) == "message-altered"
        assert time.perf_counter() - started < 5
    tap.requests = None
    assert echo.calls == before
    assert stub.Say(echo_pb2.EchoRequest(text="fine")).text == "fine"


def test_server_identity_must_match_the_target_name(x509_setup, serve) -> None:
    setup = x509_setup
    echo = EchoServicer()
    interceptor = SecurityInterceptor(setup.server("documents"))
    address = serve([interceptor], [echo])
    # The client wants storage; the server proves it is documents.
    with secure_channel(address, setup.client(), **setup.channel_options("storage")) as channel:
        with pytest.raises(SecurityError) as info:
            echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="to storage"))
        assert info.value.reason == "wrong-principal", info.value.reason
    assert echo.calls == 0
    assert interceptor.handshakes.wait_idle(5)
    assert len(interceptor.contexts) == 0
    _still_serves(setup, address)


def test_client_from_an_untrusted_authority(x509_setup, serve, tmp_path) -> None:
    from helpers.pki import make_authority

    setup = x509_setup
    echo = EchoServicer()
    interceptor = SecurityInterceptor(setup.server())
    address = serve([interceptor], [echo])
    rogue = make_authority(tmp_path / "rogue", trust_domain="rogue.test")
    # The rogue authority's alice trusts the real server (so the failure is the server's
    # refusal of her chain, not hers of the server's).
    from rpcsec.sspi import acquire_credentials_handle

    impostor = acquire_credentials_handle(
        "x509",
        None,
        authority_dir=str(rogue.path),
        name="alice",
        trust=str(setup.pki.trust_bundle),
    )
    with secure_channel(address, impostor, **setup.channel_options()) as channel:
        with pytest.raises(SecurityError) as info:
            echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="let me in"))
        assert info.value.reason == "untrusted-root", info.value.reason
    assert echo.calls == 0
    assert interceptor.handshakes.wait_idle(5)
    assert len(interceptor.contexts) == 0
    _still_serves(setup, address)


def test_half_open_handshake_is_reaped_without_new_traffic(ntlm_setup, serve) -> None:
    # On a sync server a half-open handshake holds a worker thread; a background reaper frees
    # it after the timeout even if no other handshake ever arrives.
    setup = ntlm_setup
    clock = Clock()
    interceptor = SecurityInterceptor(setup.server(), handshake_timeout=1.0, clock=clock)
    address = serve([interceptor], [EchoServicer()])
    channel, negotiate = _negotiate_raw(address)
    first = handshake_pb2.NegotiateRequest(
        package="ntlm",
        token=ClientContext(setup.client(), setup.target(), setup.requirements).step(None).token,
    ).SerializeToString()
    import queue

    outbox: queue.SimpleQueue = queue.SimpleQueue()
    outbox.put(first)
    call = negotiate(iter(outbox.get, None))
    assert handshake_pb2.NegotiateResponse.FromString(next(call)).token
    assert len(interceptor.handshakes) == 1
    assert not interceptor.handshakes.wait_idle(0.1)  # held while the clock stands still
    clock.now += 2
    assert interceptor.handshakes.wait_idle(10)
    assert interceptor.handshakes.timed_out == 1
    with pytest.raises(grpc.RpcError):
        next(call)  # the server cancelled the stream
    outbox.put(None)
    channel.close()


def test_a_completed_handshake_never_half_closed_is_reaped(ntlm_setup, serve) -> None:
    # The sync server waits for the client's half-close after the last leg (a proxy may reset
    # a stream ended while its request side is open); a client that never sends it holds the
    # worker thread and handshake slot only until the reaper's timeout -- and its context
    # stays bound.
    import queue

    setup = ntlm_setup
    clock = Clock()
    interceptor = SecurityInterceptor(setup.server(), handshake_timeout=1.0, clock=clock)
    address = serve([interceptor], [EchoServicer()])
    channel, negotiate = _negotiate_raw(address)
    client = ClientContext(setup.client(), setup.target(), setup.requirements)
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    outbox.put(
        handshake_pb2.NegotiateRequest(
            package="ntlm", token=client.step(None).token
        ).SerializeToString()
    )
    call = negotiate(iter(outbox.get, None))
    while True:
        reply = handshake_pb2.NegotiateResponse.FromString(next(call))
        out = client.step(reply.token).token if reply.token else None
        if reply.complete:
            break
        outbox.put(handshake_pb2.NegotiateRequest(token=out).SerializeToString())
    assert client.complete and reply.context_handle
    assert len(interceptor.handshakes) == 1  # still waiting for our half-close
    assert not interceptor.handshakes.wait_idle(0.1)
    clock.now += 2
    assert interceptor.handshakes.wait_idle(10)
    with pytest.raises((grpc.RpcError, StopIteration)):
        next(call)  # the server ended the stream
    assert len(interceptor.contexts) == 1  # the binding it made stands
    outbox.put(None)
    channel.close()
