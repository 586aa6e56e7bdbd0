"""Recovery nobody can steer (issue 9 item 4): what a client does when a call is refused.

A man in the middle lets a call run on the server, then replaces the answer with an unsigned
``context-unknown`` / ``expired`` / ``busy`` refusal. The handler must have run exactly once
and the application must see an error: nothing is re-sent on the word of a trailer nobody
signed. Re-binding for the *next* call is always allowed (the channel recovers, whatever kind
of call it makes), and methods the application declares idempotent are re-sent.
"""

from __future__ import annotations

import time

import echo_pb2
import echo_pb2_grpc
import grpc
import grpc.aio
import pytest
from helpers.echo import AsyncEchoServicer, EchoServicer
from helpers.grpc_setup import forget_contexts
from helpers.wiretap import AioForger, Wiretap, craft_call

from rpcsec.grpc import SecurityInterceptor, reason_of, secure_channel
from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.sspi import ProtectionLevel

SAY = "/rpcsec.test.v1.Echo/Say"
REPEAT = "/rpcsec.test.v1.Echo/Repeat"
REASONS = ["context-unknown", "expired", "busy"]
LEVELS = [ProtectionLevel.INTEGRITY, ProtectionLevel.PRIVACY]


def _request(text: str, repeat: int = 0) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(text=text, repeat=repeat)


def _calls(stub):
    """One call of each kind (sync), each forcing its whole response."""
    return {
        "unary-unary": lambda: stub.Say(_request("u")),
        "with_call": lambda: stub.Say.with_call(_request("w")),
        "future": lambda: stub.Say.future(_request("f")).result(),
        "unary-stream": lambda: list(stub.Repeat(_request("r", 2))),
        "stream-unary": lambda: stub.Collect(iter([_request("a"), _request("b")])),
        "stream-stream": lambda: list(stub.Chat(iter([_request("c")]))),
    }


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.name)
@pytest.mark.parametrize("reason", REASONS)
def test_forged_refusal_after_the_handler_ran_never_runs_it_twice(
    x509_setup, serve, reason, level
) -> None:
    setup = x509_setup
    echo = EchoServicer()
    address = serve([SecurityInterceptor(setup.server())], [echo])
    tap = Wiretap()
    raw = grpc.intercept_channel(grpc.insecure_channel(address), tap)
    with secure_channel(
        raw, setup.client(), protection=level, **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        stub.Say(_request("bind"))
        tap.forge = lambda method: reason
        for kind, call in _calls(stub).items():
            before = echo.calls
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert reason_of(info.value) == reason, kind
            assert echo.calls == before + 1, f"{kind}: the handler ran {echo.calls - before}x"
        tap.forge = None
        assert stub.Say(_request("after")).text == "after"  # the channel still works


@pytest.mark.parametrize("reason", REASONS)
async def test_forged_refusal_on_an_aio_channel_never_runs_the_handler_twice(
    x509_setup, aio_serve, reason
) -> None:
    setup = x509_setup
    echo = AsyncEchoServicer()
    address = await aio_serve([rpcsec_aio.SecurityInterceptor(setup.server())], [echo])
    forger = AioForger(reason)
    raw = grpc.aio.insecure_channel(address, interceptors=forger.interceptors)
    async with rpcsec_aio.secure_channel(raw, setup.client(), **setup.channel_options()) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)

        async def drain(call):
            return [message async for message in call]

        kinds = {
            "unary-unary": lambda: stub.Say(_request("u")),
            "unary-stream": lambda: drain(stub.Repeat(_request("r", 2))),
            "stream-unary": lambda: stub.Collect(iter([_request("a")])),
            "stream-stream": lambda: drain(stub.Chat(iter([_request("c")]))),
        }
        for kind, call in kinds.items():
            before = echo.calls
            with pytest.raises(grpc.RpcError) as info:
                await call()
            assert reason_of(info.value) == reason, kind
            assert echo.calls == before + 1, f"{kind}: the handler ran {echo.calls - before}x"


def test_stream_only_channel_rebinds_after_the_server_forgets(x509_setup, serve) -> None:
    # Regression: a channel making only request-streaming calls never re-bound after a
    # restart or eviction; every later call failed with context-unknown.
    setup = x509_setup
    echo = EchoServicer()
    interceptor = SecurityInterceptor(setup.server())
    address = serve([interceptor], [echo])
    with secure_channel(address, setup.client(), **setup.channel_options()) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for call in (
            lambda: stub.Collect(iter([_request("a")])).text,
            lambda: [r.text for r in stub.Chat(iter([_request("b")]))],
        ):
            assert call()
            forget_contexts(interceptor)
            before = echo.calls
            with pytest.raises(grpc.RpcError) as info:
                call()  # cannot be sent again: its requests are gone
            assert reason_of(info.value) == "context-unknown"
            assert call()  # ... but the next call re-binds
            assert echo.calls == before + 1


async def test_aio_stream_only_channel_rebinds_after_the_server_forgets(
    x509_setup, aio_serve
) -> None:
    setup = x509_setup
    echo = AsyncEchoServicer()
    interceptor = rpcsec_aio.SecurityInterceptor(setup.server())
    address = await aio_serve([interceptor], [echo])
    async with rpcsec_aio.secure_channel(
        address, setup.client(), **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)

        async def collect():
            return (await stub.Collect(iter([_request("a")]))).text

        async def chat():
            return [r.text async for r in stub.Chat(iter([_request("b")]))]

        for call in (collect, chat):
            assert await call()
            forget_contexts(interceptor)
            before = echo.calls
            with pytest.raises(grpc.RpcError) as info:
                await call()
            # grpc.aio may lose the server's status when a request write races the refusal;
            # the client then reports status-lost, and re-binds all the same.
            assert reason_of(info.value) in ("context-unknown", "status-lost")
            assert await call()
            assert echo.calls == before + 1


def test_only_declared_idempotent_methods_are_sent_again(x509_setup, serve) -> None:
    setup = x509_setup
    echo = EchoServicer()
    interceptor = SecurityInterceptor(setup.server())
    address = serve([interceptor], [echo])

    def forget() -> None:
        forget_contexts(interceptor)

    with secure_channel(
        address, setup.client(), idempotent_methods=[REPEAT], **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        stub.Say(_request("bind"))
        forget()
        before = echo.calls
        with pytest.raises(grpc.RpcError) as info:
            stub.Say(_request("not idempotent"))
        assert reason_of(info.value) == "context-unknown" and echo.calls == before
        forget_now = channel.security_context
        assert stub.Say(_request("next")).text == "next"  # re-bound
        assert channel.security_context is not forget_now
        forget()
        assert [r.text for r in stub.Repeat(_request("r", 2))] == ["r0", "r1"]  # re-sent
        assert echo.calls == before + 2


async def test_aio_declared_idempotent_method_is_sent_again(x509_setup, aio_serve) -> None:
    setup = x509_setup
    echo = AsyncEchoServicer()
    interceptor = rpcsec_aio.SecurityInterceptor(setup.server())
    address = await aio_serve([interceptor], [echo])
    async with rpcsec_aio.secure_channel(
        address, setup.client(), idempotent_methods=[SAY], **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        await stub.Say(_request("bind"))
        forget_contexts(interceptor)
        assert (await stub.Say(_request("again"))).text == "again"
        forget_contexts(interceptor)
        with pytest.raises(grpc.RpcError):
            [r async for r in stub.Repeat(_request("r", 1))]  # not declared: not re-sent
        assert [r.text async for r in stub.Repeat(_request("r", 1))] == ["r0"]


def test_idempotent_methods_is_checked(x509_setup) -> None:
    with pytest.raises(TypeError):
        secure_channel("127.0.0.1:1", x509_setup.client(), idempotent_methods="/a/B")
    with pytest.raises(ValueError):
        secure_channel("127.0.0.1:1", x509_setup.client(), idempotent_methods=["no-slash"])


# -- the rule itself (sans-IO) ---------------------------------------------------------------


def test_recovery_rule() -> None:
    from rpcsec.grpc._recovery import Action, decide

    def act(reason, idempotent=False, resendable=True, attempt=0, proof=None):
        return decide(
            reason,
            idempotent=idempotent,
            resendable=resendable,
            attempt=attempt,
            proven_not_run=proof,
        )

    assert act("access-denied", idempotent=True) is Action.RAISE
    assert act(None, idempotent=True) is Action.RAISE
    assert act("busy", idempotent=True) is Action.RAISE  # busy on a call: nothing to re-bind
    assert act("context-unknown") is Action.REBIND
    assert act("expired", proof=lambda: False) is Action.REBIND
    assert act("expired", proof=lambda: True) is Action.RESEND
    assert act("context-unknown", idempotent=True) is Action.RESEND
    assert act("context-unknown", idempotent=True, attempt=1) is Action.REBIND  # at most twice
    assert act("context-unknown", idempotent=True, resendable=False) is Action.REBIND
    asked = []
    assert act("context-unknown", resendable=False, proof=lambda: asked.append(1)) is (
        Action.REBIND
    )
    assert not asked  # the proof is verified only when it could matter
    # A transport failure (UNAVAILABLE, no rpcsec reason: a proxy found its replica gone):
    # an idempotent call is sent again a bounded number of times, anything else never.
    assert decide(None, idempotent=True, resendable=True, attempt=0, unavailable=True) is (
        Action.RETRY
    )
    assert decide(None, idempotent=True, resendable=True, attempt=3, unavailable=True) is (
        Action.RAISE
    )
    assert decide(None, idempotent=False, resendable=True, attempt=0, unavailable=True) is (
        Action.RAISE
    )
    assert decide(None, idempotent=True, resendable=False, attempt=0, unavailable=True) is (
        Action.RAISE
    )
    assert act("replay", idempotent=True) is Action.RETRY  # gRPC's retry re-sent our bytes
    assert act("replay") is Action.RAISE


def test_rebind_backoff_is_capped_and_resets() -> None:
    from rpcsec.grpc._recovery import RebindBackoff, busy_delay

    backoff = RebindBackoff(base=0.1, cap=1.0, random_source=lambda: 1.0)
    delays = [backoff.before_rebind() for _ in range(8)]
    assert delays[0] == 0.0  # the first re-bind after a good call is immediate
    assert delays[1:4] == [0.1, 0.2, 0.4]
    assert max(delays) == 1.0  # capped: never a handshake storm, never an unbounded wait
    backoff.succeeded()
    assert backoff.before_rebind() == 0.0
    assert busy_delay(0, jitter=1.0) < busy_delay(3, jitter=1.0) <= 1.0
    assert busy_delay(30, jitter=0.5) == 0.5


def test_idempotent_methods_from_the_proto() -> None:
    from google.protobuf import descriptor_pb2, descriptor_pool

    from rpcsec.grpc._recovery import IdempotentMethods

    pool = descriptor_pool.Default()
    proto = descriptor_pb2.FileDescriptorProto(name="rpcsec_test_idem.proto", package="idem.v1")
    proto.message_type.add(name="M")
    service = proto.service.add(name="S")
    for name, level in (("Get", "NO_SIDE_EFFECTS"), ("Put", "IDEMPOTENT"), ("Post", None)):
        method = service.method.add(name=name, input_type=".idem.v1.M", output_type=".idem.v1.M")
        if level is not None:
            method.options.idempotency_level = getattr(descriptor_pb2.MethodOptions, level)
    pool.Add(proto)
    methods = IdempotentMethods(["/other.v1.X/"])
    assert "/idem.v1.S/Get" in methods and "/idem.v1.S/Put" in methods
    assert "/idem.v1.S/Post" not in methods
    assert "/other.v1.X/Anything" in methods and "/nosuch.S/M" not in methods


def test_a_not_run_statement_for_another_call_proves_nothing(x509_setup, serve) -> None:
    # The attacker keeps a genuine signed "did not run" from one refused call and attaches it
    # to another call's forged refusal: it is bound to that call's sequence, so it fails.
    setup = x509_setup
    clock = [time.time()]
    echo = EchoServicer()
    interceptor = SecurityInterceptor(setup.server(), max_lifetime=60.0, clock=lambda: clock[0])
    address = serve([interceptor], [echo])
    tap = Wiretap()
    raw = grpc.intercept_channel(grpc.insecure_channel(address), tap)
    with secure_channel(raw, setup.client(), **setup.channel_options()) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        context = channel.bind()
        stub.Say(_request("bind"))
        handle = tap.app_calls()[-1].value("rpcsec-context-bin")
        clock[0] += 61  # expired: a call now is refused with a signed "did not run"
        attacker = grpc.insecure_channel(address)
        metadata, token, _ = craft_call(context, handle, SAY, _request("x").SerializeToString())
        with pytest.raises(grpc.RpcError) as info:
            attacker.unary_unary(SAY)(token, metadata=metadata)
        proof = dict(info.value.trailing_metadata())["rpcsec-not-run-bin"]
        attacker.close()
        with pytest.raises(grpc.RpcError):  # forgotten; unknown proves nothing: not re-sent
            stub.Say(_request("lost"))
        assert stub.Say(_request("rebound")).text == "rebound"  # ... but re-bound

        tap.forge = lambda method: "expired"
        tap.forge_trailers = (("rpcsec-not-run-bin", proof),)
        before = echo.calls
        with pytest.raises(grpc.RpcError) as info:
            stub.Say(_request("once"))
        assert reason_of(info.value) == "expired"
        assert echo.calls == before + 1  # not sent again on a proof for another call


def test_reasons_from_the_server_are_bounded_and_sanitised() -> None:
    # Issue 10 item 7: 5 030 characters or embedded newlines came through verbatim.
    from helpers.wiretap import ForgedRefusal

    from rpcsec.grpc._status import error_from_rpc

    for forged in ("x" * 5030, "expired\nInjected: log line", "ctx\x1b[31m", "", "UPPER"):
        refusal = ForgedRefusal(forged)
        assert reason_of(refusal) == "unknown-reason"
        error = error_from_rpc(refusal)
        assert error is not None and len(str(error)) < 100 and "\n" not in str(error)
    assert reason_of(ForgedRefusal("context-unknown")) == "context-unknown"


def test_session_core_state_machine(x509_setup) -> None:
    # The sans-IO binding state both clients share: table-driven, CLOSED is final, a dropped
    # binding makes the next bind a (backed-off) re-bind.
    from helpers.pair import handshake

    from rpcsec.grpc._binding import ChannelSecurity, ClientBound
    from rpcsec.grpc._session import SessionCore, SessionState
    from rpcsec.sspi import ClientContext, ImpersonationLevel, ServerContext

    setup = x509_setup
    security = ChannelSecurity(
        setup.client(),
        target_name=setup.target(),
        requirements=setup.requirements,
        impersonation=ImpersonationLevel.IMPERSONATE,
        protection=ProtectionLevel.INTEGRITY,
        package_options=None,
    )
    from rpcsec.grpc._recovery import RebindBackoff

    security.backoff = RebindBackoff(random_source=lambda: 1.0)

    def new_bound(generation: int) -> ClientBound:
        client = ClientContext(setup.client(), setup.target(), setup.requirements)
        handshake(client, ServerContext(setup.server()))
        return ClientBound(
            client, b"h" * 16, ProtectionLevel.INTEGRITY, generation, security.backoff.succeeded
        )

    core = SessionCore(security, random_source=lambda: 1.0)
    assert core.state is SessionState.UNBOUND and core.usable() is None
    assert core.before_bind() == 0.0
    first = new_bound(1)
    core.established(first)
    assert core.state is SessionState.BOUND and core.usable() is first
    assert core.usable(stale=first) is None
    core.invalidate(new_bound(2))  # not the current binding: nothing happens
    assert core.state is SessionState.BOUND
    core.invalidate(first)
    assert core.state is SessionState.STALE and core.current is None
    core.invalidate(first)  # idempotent
    assert core.before_bind() == 0.0  # the first re-bind after a good call: at once
    second = new_bound(3)
    core.established(second)
    core.invalidate(second)
    assert core.before_bind() > 0.0  # a second re-bind with no call succeeding: backs off
    core.established(new_bound(4))
    assert core.busy(0, remaining=10.0) is not None and core.busy(0, remaining=0.0) is None
    assert core.close() is not None and core.state is SessionState.CLOSED
    assert core.close() is None  # closing again is fine
    with pytest.raises(ValueError):
        core.before_bind()
    with pytest.raises(ValueError):
        core.established(new_bound(5))


def test_client_detected_failures_are_rpc_errors_too(x509_setup, serve) -> None:
    # Issue 10 item 6: a tampered response is a grpc.RpcError (code, details, trailers with
    # the reason) *and* the SecurityError subclass, for every call kind.
    from helpers.wiretap import flip

    from rpcsec.sspi import MessageAlteredError

    setup = x509_setup
    echo = EchoServicer()
    address = serve([SecurityInterceptor(setup.server())], [echo])
    tap = Wiretap()
    raw = grpc.intercept_channel(grpc.insecure_channel(address), tap)
    with secure_channel(raw, setup.client(), **setup.channel_options()) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        stub.Say(_request("bind"))
        tap.responses = lambda method, messages: [flip(m, 3) for m in messages]
        for kind, call in _calls(stub).items():
            with pytest.raises(grpc.RpcError) as info:
                call()
            error = info.value
            assert isinstance(error, MessageAlteredError), kind
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED, kind
            assert error.details() == "rpcsec: message-altered", kind
            assert reason_of(error) == "message-altered", kind
        # Truncated stream (the end marker dropped): the same, as an RpcError.
        tap.responses = lambda method, messages: messages[:-1]
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Repeat(_request("r", 2)))
        assert isinstance(info.value, MessageAlteredError)
        tap.responses = None
        assert stub.Say(_request("fine")).text == "fine"


def test_a_verified_call_resets_only_its_own_identity_s_rebind_backoff(x509_setup) -> None:
    # A cloaked channel keeps one re-bind backoff per caller. A verified call must reset the
    # backoff of the identity whose binding carried it -- not whichever caller used the channel
    # last (it did: ``peek()``), which left a re-binding caller's backoff growing and reset
    # another's.
    from helpers.pair import handshake

    from rpcsec.grpc._binding import ChannelSecurity
    from rpcsec.sspi import ImpersonationLevel, ServerContext

    setup = x509_setup
    template = ChannelSecurity(
        setup.client(),
        target_name=setup.target(),
        requirements=setup.requirements,
        impersonation=ImpersonationLevel.IMPERSONATE,
        protection=ProtectionLevel.INTEGRITY,
        package_options=None,
    )
    alice = template.for_caller(setup.client(), None)
    bob = template.for_caller(setup.client(), None)
    for caller in (alice, bob):
        caller.backoff.before_rebind()
        caller.backoff.before_rebind()
    negotiation = alice.negotiation()
    handshake(negotiation.context, ServerContext(setup.server()))
    negotiation.handle = b"h" * 16
    bound = alice.established(negotiation)
    bound.succeeded()
    assert alice.backoff.failures == 0
    assert bob.backoff.failures == 2
