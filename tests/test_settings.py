"""Process-wide security settings (CoInitializeSecurity): defaults that explicit arguments beat.

Real servers and channels on loopback read ``rpcsec.initialize_security()``'s credentials,
protection, impersonation level and policy when their own arguments are omitted; objects made
before a change keep what they read; a second call without ``replace=True`` is refused; inside
a handler, cloaking (the caller's delegated credentials) is never replaced by the process's own.
"""

from __future__ import annotations

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers.echo import EchoServicer

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
from rpcsec.sspi import (
    CredentialUse,
    ImpersonationLevel,
    InvalidStateError,
    NoCredentialsError,
    ProtectionLevel,
)


@pytest.fixture(autouse=True)
def clean_process():
    rpcsec.uninitialize_security()
    yield
    rpcsec.uninitialize_security()
    set_default_credentials(None)


def _say(channel, text: str = "hi") -> echo_pb2.EchoResponse:
    return echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text=text))


def test_second_call_is_refused_unless_replace(x509_setup):
    first = rpcsec.initialize_security(protection=ProtectionLevel.PRIVACY)
    assert rpcsec.current_security_settings() is first
    with pytest.raises(InvalidStateError):
        rpcsec.initialize_security(protection=ProtectionLevel.INTEGRITY)
    assert rpcsec.current_security_settings() is first  # unchanged by the refused call
    second = rpcsec.initialize_security(protection=ProtectionLevel.INTEGRITY, replace=True)
    assert rpcsec.current_security_settings() is second


def test_arguments_are_checked_at_once(x509_setup):
    with pytest.raises(ValueError):
        rpcsec.initialize_security(protection=ProtectionLevel.NONE)
    with pytest.raises(TypeError):
        rpcsec.initialize_security(impersonation="delegate")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        rpcsec.initialize_security(policy=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        rpcsec.initialize_security(credentials=["alice"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        rpcsec.initialize_security(credentials=[])
    assert rpcsec.current_security_settings() is None  # nothing half-set


def test_defaults_without_any_settings():
    settings = rpcsec.effective_settings()
    assert settings.protection is ProtectionLevel.INTEGRITY
    assert settings.impersonation is ImpersonationLevel.IMPERSONATE
    assert settings.policy is None and settings.credentials == ()
    assert settings.outbound_credentials() is None
    with pytest.raises(NoCredentialsError):
        settings.inbound_credentials()
    with pytest.raises(NoCredentialsError):
        SecurityInterceptor()  # no credentials anywhere: refused at construction


def test_server_reads_process_credentials_policy_and_minimum_protection(x509_setup, serve):
    setup = x509_setup
    alice, bob = setup.principal("alice"), setup.principal("bob")
    only_alice = AuthorizationPolicy([AuthorizationRule("*", allow={alice})])
    rpcsec.initialize_security(
        credentials=setup.server("documents"), policy=only_alice, protection=ProtectionLevel.PRIVACY
    )
    address = serve([SecurityInterceptor()], [EchoServicer()])  # everything from the process
    # An explicit policy wins over the process's; the process's minimum level still applies.
    open_address = serve(
        [SecurityInterceptor(policy=AuthorizationPolicy.any_authenticated())], [EchoServicer()]
    )
    rpcsec.uninitialize_security()  # the interceptors keep what they read when made

    def call(address, who, level):
        options = setup.channel_options(protection=level)
        with secure_channel(address, setup.client(who), **options) as channel:
            return _say(channel)

    assert call(address, "alice", ProtectionLevel.PRIVACY).protection_level == "PRIVACY"
    for target, who, level in (
        (address, "alice", ProtectionLevel.INTEGRITY),  # below the process's minimum
        (address, "bob", ProtectionLevel.PRIVACY),  # the process's policy
        (open_address, "bob", ProtectionLevel.INTEGRITY),  # the minimum, explicit policy
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(target, who, level)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(info.value) == "access-denied"
    assert call(open_address, "bob", ProtectionLevel.PRIVACY).principal == bob


def test_channel_reads_process_identity_and_levels(x509_setup, serve):
    setup = x509_setup
    address = serve([SecurityInterceptor(setup.server("documents"))], [EchoServicer()])
    rpcsec.initialize_security(
        credentials=[setup.server("storage"), setup.client("alice")],  # INBOUND first
        protection=ProtectionLevel.PRIVACY,
        impersonation=ImpersonationLevel.IDENTIFY,
    )
    options = {"target_name": setup.target("documents"), "requirements": setup.requirements}
    with secure_channel(address, **options) as channel:  # no credentials, no levels
        reply = _say(channel)
        assert reply.principal == setup.principal("alice")  # the first OUTBOUND handle
        assert reply.protection_level == "PRIVACY"
        assert channel.security_context.impersonation_level is ImpersonationLevel.IDENTIFY
    # Explicit arguments win, one by one.
    explicit = dict(options, protection=ProtectionLevel.INTEGRITY)
    with secure_channel(address, setup.client("bob"), **explicit) as channel:
        reply = _say(channel)
        assert reply.principal == setup.principal("bob")
        assert reply.protection_level == "INTEGRITY"
        assert channel.security_context.impersonation_level is ImpersonationLevel.IDENTIFY
    # set_default_credentials (the older, narrower call) wins over the process settings.
    set_default_credentials(setup.client("bob"))
    with secure_channel(address, **options) as channel:
        assert _say(channel).principal == setup.principal("bob")


async def test_aio_channel_and_interceptor_read_the_process_settings(x509_setup, aio_serve):
    setup = x509_setup
    rpcsec.initialize_security(
        credentials=[setup.server("documents"), setup.client("alice")],
        protection=ProtectionLevel.PRIVACY,
    )
    address = await aio_serve([rpcsec_aio.SecurityInterceptor()], [EchoServicer()])
    options = {"target_name": setup.target("documents"), "requirements": setup.requirements}
    async with rpcsec_aio.secure_channel(address, **options) as channel:
        reply = await echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="hi"))
    assert reply.principal == setup.principal("alice")
    assert reply.protection_level == "PRIVACY"


def test_process_identity_never_replaces_cloaking(x509_setup, serve):
    # documents' own identity is the process's; its handler, running as a caller who did not
    # allow delegation, must not silently call storage as documents.
    setup = x509_setup
    storage = serve([SecurityInterceptor(setup.server("storage"))], [EchoServicer()])
    rpcsec.initialize_security(credentials=setup.pki.credentials("documents", CredentialUse.BOTH))

    def onward(request):
        with secure_channel(storage, **setup.channel_options("storage")) as channel:
            return _say(channel, "via documents")

    front = serve([SecurityInterceptor()], [EchoServicer(onward=onward)])
    with secure_channel(front, setup.client("alice"), **setup.channel_options()) as channel:
        with pytest.raises(grpc.RpcError) as info:
            _say(channel, "onward")
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(info.value) == "delegation-required"
    # Outside any handler the same channel code speaks as the process (documents).
    with secure_channel(storage, **setup.channel_options("storage")) as channel:
        assert _say(channel).principal == setup.principal("documents")
