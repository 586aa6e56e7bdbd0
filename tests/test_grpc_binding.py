"""The sync gRPC binding end to end: real ``grpc.server`` on loopback, generated stubs unchanged.

Every test runs over each security package (``package_setup``: ntlm, x509; the first one also
kerberos when a KDC is available).
"""

from __future__ import annotations

import threading

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers.echo import AdminServicer, EchoServicer

import rpcsec
from rpcsec.grpc import (
    AuthorizationPolicy,
    AuthorizationRule,
    Decision,
    SecurityInterceptor,
    reason_of,
    secure_channel,
)
from rpcsec.sspi import (
    ContextReq,
    ImpersonationLevel,
    InsufficientAttributesError,
    ProtectionLevel,
)

LEVELS = [ProtectionLevel.INTEGRITY, ProtectionLevel.PRIVACY]


def _requests(*texts: str):
    return iter([echo_pb2.EchoRequest(text=text) for text in texts])


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.name)
def test_all_four_kinds_run_as_the_caller(any_package_setup, serve, level) -> None:
    setup = any_package_setup
    echo = EchoServicer()
    address = serve([SecurityInterceptor(setup.server())], [echo])
    alice = setup.principal("alice")
    with secure_channel(
        address, setup.client("alice"), protection=level, **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)  # a generated stub, unchanged

        said = stub.Say(echo_pb2.EchoRequest(text="hello"))
        assert (said.text, said.principal, said.protection_level) == ("hello", alice, level.name)

        repeated = list(stub.Repeat(echo_pb2.EchoRequest(text="r", repeat=4)))
        assert [r.text for r in repeated] == ["r0", "r1", "r2", "r3"]
        assert {r.principal for r in repeated} == {alice}

        collected = stub.Collect(_requests("a", "b", "c"))
        assert (collected.text, collected.index, collected.principal) == ("abc", 3, alice)

        chat = stub.Chat(_requests("x", "y"))
        assert [(r.text, r.principal) for r in chat] == [("X", alice), ("Y", alice)]
        assert chat.code() is grpc.StatusCode.OK

        # Empty streams: still signed end markers in both directions.
        assert stub.Collect(iter([])).index == 0
        assert list(stub.Chat(iter([]))) == []
        assert list(stub.Repeat(echo_pb2.EchoRequest(text="none", repeat=0))) == []
    assert echo.calls == 7


def test_with_call_and_future(package_setup, serve) -> None:
    setup = package_setup
    address = serve([SecurityInterceptor(setup.server())], [EchoServicer()])
    with secure_channel(address, setup.client(), **setup.channel_options()) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        response, call = stub.Say.with_call(echo_pb2.EchoRequest(text="wc"))
        assert response.text == "wc" and call.code() is grpc.StatusCode.OK
        future = stub.Say.future(echo_pb2.EchoRequest(text="fut"))
        done = threading.Event()
        future.add_done_callback(lambda f: done.set())
        assert future.result(timeout=10).text == "fut"
        assert done.wait(10) and future.exception() is None and future.code() is grpc.StatusCode.OK
        response, call = stub.Collect.with_call(_requests("p", "q"))
        assert response.text == "pq"
        assert stub.Collect.future(_requests("s")).result(timeout=10).text == "s"


def test_the_established_context_is_exposed(package_setup, serve) -> None:
    setup = package_setup
    interceptor = SecurityInterceptor(setup.server())
    address = serve([interceptor], [EchoServicer()])
    channel = secure_channel(address, setup.client(), **setup.channel_options())
    assert channel.security_context is None  # nothing happens until the first call
    context = channel.bind()
    assert channel.security_context is context
    assert context.attributes & setup.requirements == setup.requirements
    assert context.attributes & ContextReq.REPLAY_DETECT
    if setup.package == "x509":
        assert context.attributes & ContextReq.MUTUAL_AUTH
        assert context.peer.principal == setup.target()  # the proven server identity
    else:
        assert not context.attributes & ContextReq.MUTUAL_AUTH  # ntlm never proves the server
    assert len(interceptor.contexts) == 1
    channel.close()


def test_concurrent_first_calls_share_one_handshake(package_setup, serve) -> None:
    setup = package_setup
    interceptor = SecurityInterceptor(setup.server())
    address = serve([interceptor], [EchoServicer()])
    with secure_channel(address, setup.client(), **setup.channel_options()) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        start = threading.Barrier(8)
        results: list[str] = []

        def first_call(index: int) -> None:
            start.wait()
            results.append(stub.Say(echo_pb2.EchoRequest(text=str(index))).text)

        threads = [threading.Thread(target=first_call, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == [str(i) for i in range(8)]
        assert len(interceptor.contexts) == 1  # one handshake served all eight


def test_close_releases_the_server_context(package_setup, serve) -> None:
    setup = package_setup
    interceptor = SecurityInterceptor(setup.server())
    address = serve([interceptor], [EchoServicer()])
    channel = secure_channel(address, setup.client(), **setup.channel_options())
    stub = echo_pb2_grpc.EchoStub(channel)
    stub.Say(echo_pb2.EchoRequest(text="x"))
    assert len(interceptor.contexts) == 1
    channel.close()
    assert len(interceptor.contexts) == 0
    with pytest.raises(ValueError):
        stub.Say(echo_pb2.EchoRequest(text="after close"))


def test_unmet_requirements_fail_before_any_call(ntlm_setup, serve) -> None:
    # The default requirements include MUTUAL_AUTH, which NTLM cannot give: the caller decides
    # the context is not acceptable (seed, "Context Requirements") and sends nothing.
    setup = ntlm_setup
    echo = EchoServicer()
    interceptor = SecurityInterceptor(setup.server())
    address = serve([interceptor], [echo])
    with secure_channel(address, setup.client(), target_name=setup.target()) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        with pytest.raises(InsufficientAttributesError):
            stub.Say(echo_pb2.EchoRequest(text="never sent"))
        assert channel.security_context is None
    assert echo.calls == 0
    assert len(interceptor.contexts) == 0  # the refused context was released on the server


def test_refusals_carry_status_and_reason(package_setup, serve) -> None:
    setup = package_setup
    echo = EchoServicer(readable_by=setup.principal("alice"))
    address = serve([SecurityInterceptor(setup.server())], [echo])
    for name, text, code, reason in [
        ("alice", "deny", grpc.StatusCode.PERMISSION_DENIED, "access-denied"),
        ("alice", "abort", grpc.StatusCode.NOT_FOUND, None),  # an application error, untouched
        ("alice", "check", grpc.StatusCode.OK, None),
        ("bob", "check", grpc.StatusCode.PERMISSION_DENIED, "access-denied"),
    ]:
        with secure_channel(address, setup.client(name), **setup.channel_options()) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            if code is grpc.StatusCode.OK:
                assert stub.Say(echo_pb2.EchoRequest(text=text)).principal == setup.principal(name)
                continue
            with pytest.raises(grpc.RpcError) as info:
                stub.Say(echo_pb2.EchoRequest(text=text))
            assert info.value.code() is code
            assert reason_of(info.value) == reason
            if reason is not None:
                assert info.value.details() == f"rpcsec: {reason}"  # nothing more for the peer


def test_identify_level_callers_cannot_pass_access_checks(package_setup, serve) -> None:
    setup = package_setup
    echo = EchoServicer(readable_by=setup.principal("alice"))
    address = serve([SecurityInterceptor(setup.server())], [echo])
    with secure_channel(
        address,
        setup.client("alice"),
        impersonation=ImpersonationLevel.IDENTIFY,
        **setup.channel_options(),
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        assert stub.Say(echo_pb2.EchoRequest(text="who")).principal == setup.principal("alice")
        with pytest.raises(grpc.RpcError) as info:
            stub.Say(echo_pb2.EchoRequest(text="check"))
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(info.value) == "no-impersonation"


def test_authorization_policy(package_setup, serve) -> None:
    setup = package_setup
    alice, bob = setup.principal("alice"), setup.principal("bob")
    policy = AuthorizationPolicy(
        [
            AuthorizationRule("/rpcsec.test.v1.Echo/*", allow={alice, bob}),
            AuthorizationRule("/rpcsec.test.v1.Echo/Chat", deny={bob}),  # deny before allow
            AuthorizationRule(
                "/rpcsec.test.v1.Echo/Collect", min_protection=ProtectionLevel.PRIVACY
            ),
            AuthorizationRule(
                "/rpcsec.test.v1.Echo/Repeat", min_impersonation=ImpersonationLevel.IMPERSONATE
            ),
            # Admin is not mentioned: the default (DENY) applies.
        ]
    )
    assert policy.default is Decision.DENY
    echo, admin = EchoServicer(), AdminServicer()
    address = serve([SecurityInterceptor(setup.server(), policy)], [echo, admin])

    def refused(call) -> str | None:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        return reason_of(info.value)

    with (
        secure_channel(address, setup.client("alice"), **setup.channel_options()) as integrity,
        secure_channel(
            address,
            setup.client("alice"),
            protection=ProtectionLevel.PRIVACY,
            **setup.channel_options(),
        ) as privacy,
        secure_channel(address, setup.client("bob"), **setup.channel_options()) as as_bob,
        secure_channel(
            address,
            setup.client("bob"),
            impersonation=ImpersonationLevel.IDENTIFY,
            **setup.channel_options(),
        ) as identify,
    ):
        stub = echo_pb2_grpc.EchoStub(integrity)
        assert stub.Say(echo_pb2.EchoRequest(text="ok")).text == "ok"
        assert [r.text for r in stub.Chat(_requests("a"))] == ["A"]
        assert refused(lambda: stub.Collect(_requests("a"))) == "access-denied"
        assert echo_pb2_grpc.EchoStub(privacy).Collect(_requests("a", "b")).text == "ab"
        assert (
            refused(lambda: echo_pb2_grpc.AdminStub(integrity).Shutdown(echo_pb2.EchoRequest()))
            == "access-denied"
        )

        bob_stub = echo_pb2_grpc.EchoStub(as_bob)
        assert bob_stub.Say(echo_pb2.EchoRequest(text="hi")).principal == bob
        assert refused(lambda: list(bob_stub.Chat(_requests("a")))) == "access-denied"

        identify_stub = echo_pb2_grpc.EchoStub(identify)
        assert identify_stub.Say(echo_pb2.EchoRequest(text="hi")).principal == bob
        assert (
            refused(lambda: list(identify_stub.Repeat(echo_pb2.EchoRequest(text="r", repeat=1))))
            == "access-denied"
        )
    assert admin.counter.calls == 0
    # Refused calls never reached a handler: Say x3, Chat x1, Collect x1 (privacy).
    assert echo.calls == 5


def test_default_allow_policy_still_honours_denies(package_setup, serve) -> None:
    setup = package_setup
    policy = AuthorizationPolicy(
        [AuthorizationRule("*", deny={setup.principal("bob")})], default=Decision.ALLOW
    )
    address = serve([SecurityInterceptor(setup.server(), policy)], [EchoServicer()])
    for name, allowed in [("alice", True), ("bob", False)]:
        with secure_channel(address, setup.client(name), **setup.channel_options()) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            if allowed:
                assert stub.Say(echo_pb2.EchoRequest(text="x")).text == "x"
            else:
                with pytest.raises(grpc.RpcError) as info:
                    stub.Say(echo_pb2.EchoRequest(text="x"))
                assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_no_token_leaks_into_the_worker_thread(package_setup) -> None:
    # The server's own worker thread must not keep the caller's token after a call (the
    # streaming handler runs each step in a context of its own).
    from concurrent import futures

    from helpers.grpc_setup import add_services

    setup = package_setup
    pool = futures.ThreadPoolExecutor(max_workers=1)
    server = grpc.server(pool, interceptors=[SecurityInterceptor(setup.server())])
    add_services(server, [EchoServicer()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with secure_channel(
            f"127.0.0.1:{port}", setup.client(), **setup.channel_options()
        ) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            stub.Say(echo_pb2.EchoRequest(text="x"))
            list(stub.Repeat(echo_pb2.EchoRequest(text="r", repeat=2)))
            list(stub.Chat(_requests("a", "b")))
        assert pool.submit(rpcsec.current_token).result() is None
    finally:
        server.stop(None).wait()
