"""Onward calls from a handler: cloaking, delegation, and the seed's "WATCH OUT FOR THIS".

alice calls documents; documents' handler, running as alice, calls storage with no explicit
credentials. With a delegation-level context storage sees alice (through documents); without
one the onward call fails with DELEGATION_REQUIRED and alice is told so (PERMISSION_DENIED,
``delegation-required``), as is any refusal further down the chain.
"""

from __future__ import annotations

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers.echo import AsyncEchoServicer, EchoServicer

import rpcsec
from rpcsec.grpc import (
    AuthorizationPolicy,
    AuthorizationRule,
    SecurityInterceptor,
    reason_of,
    secure_channel,
    set_default_credentials,
)
from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.security import revert_to_self
from rpcsec.sspi import (
    ContextReq,
    DelegationRequiredError,
    ImpersonationLevel,
    NoCredentialsError,
)


class Recorder(EchoServicer):
    """Storage: remembers the token of every caller it ran as."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[rpcsec.AccessToken] = []

    def Say(self, request, context):
        self.tokens.append(rpcsec.current_token())
        return super().Say(request, context)


@pytest.fixture(params=["x509", pytest.param("kerberos", marks=pytest.mark.kerberos)])
def delegating_setup(request, tmp_path):
    from helpers import grpc_setup

    if request.param == "x509":
        return grpc_setup.x509_setup(tmp_path)
    return grpc_setup.kerberos_setup(request.getfixturevalue("kerberos_realm"))


def _delegation_options(setup) -> dict:
    options = setup.channel_options(
        impersonation=ImpersonationLevel.DELEGATE,
        requirements=setup.requirements | ContextReq.DELEGATE,
    )
    if setup.package == "x509":
        options["package_options"] = {"delegate_to": [setup.target("storage")]}
    return options


def _front(setup, storage_address: str, **channel_options):
    """documents: its Say("onward") calls storage as whoever it is running as."""

    def onward(request: echo_pb2.EchoRequest) -> echo_pb2.EchoResponse:
        options = setup.channel_options("storage", **channel_options)
        with secure_channel(storage_address, **options) as channel:  # no credentials: cloaking
            return echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="via front"))

    return EchoServicer(onward=onward)


def test_delegation_reaches_the_next_hop_as_the_caller(delegating_setup, serve) -> None:
    setup = delegating_setup
    storage = Recorder()
    storage_address = serve([SecurityInterceptor(setup.server("storage"))], [storage])
    front_address = serve(
        [SecurityInterceptor(setup.server("documents"))], [_front(setup, storage_address)]
    )
    with secure_channel(front_address, setup.client("alice"), **_delegation_options(setup)) as ch:
        assert ch.bind().attributes & ContextReq.DELEGATE
        reply = echo_pb2_grpc.EchoStub(ch).Say(echo_pb2.EchoRequest(text="onward"))
    assert reply.principal == setup.principal("alice")  # storage ran as alice, not documents
    (token,) = storage.tokens
    assert token.principal == setup.principal("alice")
    assert len(token.delegation_chain) == 1  # C/S2: alice, through documents
    if setup.package == "x509":
        assert token.delegation_chain == (setup.target("documents"),)


@pytest.mark.parametrize("package", ["ntlm", "x509-without-delegation"])
def test_no_delegation_level_context_is_refused_clearly(package, tmp_path, serve) -> None:
    from helpers import grpc_setup

    setup = (grpc_setup.ntlm_setup if package == "ntlm" else grpc_setup.x509_setup)(tmp_path)
    storage = Recorder()
    storage_address = serve([SecurityInterceptor(setup.server("storage"))], [storage])
    front = _front(setup, storage_address)
    front_address = serve([SecurityInterceptor(setup.server("documents"))], [front])
    # ntlm cannot delegate at all (NT 4.0); the x509 caller allows only IMPERSONATE.
    options = setup.channel_options(impersonation=ImpersonationLevel.DELEGATE)
    if package != "ntlm":
        options["impersonation"] = ImpersonationLevel.IMPERSONATE
    with secure_channel(front_address, setup.client("alice"), **options) as channel:
        assert not channel.bind().attributes & ContextReq.DELEGATE
        with pytest.raises(grpc.RpcError) as info:
            echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="onward"))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(info.value) == "delegation-required"
    assert storage.tokens == []  # nothing was sent on alice's behalf


def test_a_refusal_further_down_reaches_the_first_caller(x509_setup, serve) -> None:
    setup = x509_setup
    deny_alice = AuthorizationPolicy(
        [AuthorizationRule("*", allow={"group:everyone"}, deny={setup.principal("alice")})]
    )
    storage = Recorder()
    storage_address = serve([SecurityInterceptor(setup.server("storage"), deny_alice)], [storage])
    front_address = serve(
        [SecurityInterceptor(setup.server("documents"))], [_front(setup, storage_address)]
    )
    with secure_channel(front_address, setup.client("alice"), **_delegation_options(setup)) as ch:
        with pytest.raises(grpc.RpcError) as info:
            echo_pb2_grpc.EchoStub(ch).Say(echo_pb2.EchoRequest(text="onward"))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(info.value) == "access-denied"
    assert storage.tokens == []


def test_a_statically_cloaked_channel_serves_one_caller_only(x509_setup, serve) -> None:
    setup = x509_setup
    storage = Recorder()
    storage_address = serve([SecurityInterceptor(setup.server("storage"))], [storage])
    kept: list[grpc.Channel] = []

    def onward(request: echo_pb2.EchoRequest) -> echo_pb2.EchoResponse:
        if not kept:  # the first caller's static channel, wrongly kept for everyone
            options = setup.channel_options("storage")
            kept.append(secure_channel(storage_address, cloaking="static", **options))
        return echo_pb2_grpc.EchoStub(kept[0]).Say(echo_pb2.EchoRequest(text="shared"))

    front_address = serve(
        [SecurityInterceptor(setup.server("documents"))], [EchoServicer(onward=onward)]
    )
    options = _delegation_options(setup)
    with secure_channel(front_address, setup.client("alice"), **options) as channel:
        reply = echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="onward"))
        assert reply.principal == setup.principal("alice")
    with secure_channel(front_address, setup.client("bob"), **options) as channel:
        with pytest.raises(grpc.RpcError) as info:
            echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="onward"))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(info.value) == "delegation-policy"
    assert [t.principal for t in storage.tokens] == [setup.principal("alice")]
    kept[0].close()


def test_process_credentials_outside_impersonation(ntlm_setup, serve) -> None:
    setup = ntlm_setup
    storage = Recorder()
    storage_address = serve([SecurityInterceptor(setup.server("storage"))], [storage])
    with pytest.raises(NoCredentialsError):
        secure_channel(storage_address, cloaking="static", **setup.channel_options("storage"))
    # Dynamic (the default without credentials): made at once, refused when a call needs an
    # identity outside any handler, before anything is sent.
    with secure_channel(storage_address, **setup.channel_options("storage")) as idle:
        with pytest.raises(NoCredentialsError):
            echo_pb2_grpc.EchoStub(idle).Say(echo_pb2.EchoRequest(text="nobody"))
    assert storage.tokens == []

    def onward(request: echo_pb2.EchoRequest) -> echo_pb2.EchoResponse:
        with revert_to_self():  # the service calls as itself, not as its caller
            options = setup.channel_options("storage")
            with secure_channel(storage_address, **options) as channel:
                return echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="me"))

    front_address = serve(
        [SecurityInterceptor(setup.server("documents"))], [EchoServicer(onward=onward)]
    )
    set_default_credentials(setup.client("bob"))  # "bob" plays the front service's identity
    try:
        with secure_channel(front_address, setup.client("alice"), **setup.channel_options()) as c:
            reply = echo_pb2_grpc.EchoStub(c).Say(echo_pb2.EchoRequest(text="onward"))
        assert reply.principal == setup.principal("bob")
    finally:
        set_default_credentials(None)
    assert [t.principal for t in storage.tokens] == [setup.principal("bob")]


def test_delegation_required_is_raised_before_anything_is_sent() -> None:
    # Impersonating a token that cannot delegate: secure_channel refuses at once.
    token = rpcsec.AccessToken(
        principal="RPCSEC\\alice",
        package="ntlm",
        impersonation_level=ImpersonationLevel.IMPERSONATE,
    )
    with rpcsec.impersonate(token), pytest.raises(DelegationRequiredError):
        secure_channel("127.0.0.1:1")


async def test_delegation_from_an_async_handler(x509_setup, aio_serve) -> None:
    setup = x509_setup
    storage = AsyncEchoServicer()
    storage_address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server("storage"))], [storage]
    )

    async def onward(request: echo_pb2.EchoRequest) -> echo_pb2.EchoResponse:
        options = setup.channel_options("storage")
        async with rpcsec_aio.secure_channel(storage_address, **options) as channel:
            return await echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="async"))

    front_address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server("documents"))],
        [AsyncEchoServicer(onward=onward)],
    )
    async with rpcsec_aio.secure_channel(
        front_address, setup.client("alice"), **_delegation_options(setup)
    ) as channel:
        reply = await echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="onward"))
    assert reply.principal == setup.principal("alice")
    assert storage.calls == 1
