"""Impersonation levels over every security package (issue 10 item 3): a client that allows
only ANONYMOUS is the anonymous token on the server in x509, ntlm, kerberos and negotiate
alike -- never its real name -- and fails both the authorization policy and access_check
unless they admit anonymous explicitly. Anonymity is a token's level, not a principal name."""

from __future__ import annotations

import pytest
from helpers.packages import PACKAGES, credentials_for
from helpers.pair import handshake

from rpcsec.grpc import AuthorizationPolicy, AuthorizationRule, Decision
from rpcsec.security import (
    ANONYMOUS_PRINCIPAL,
    EVERYONE,
    AccessMask,
    AccessToken,
    Ace,
    SecurityDescriptor,
    access_check,
    impersonate,
)
from rpcsec.sspi import (
    AccessDeniedError,
    ContextAttribute,
    ContextReq,
    ImpersonationLevel,
    InvalidStateError,
    NoImpersonationError,
    accept_security_context,
    import_security_context,
    initialize_security_context,
)

METHOD = "/demo.v1.Documents/Read"


@pytest.fixture(params=PACKAGES)
def package_creds(request, tmp_path):
    return credentials_for(request.param, tmp_path, request)


def _bind(package_creds, level):
    client_creds, server_creds, target = package_creds
    client = initialize_security_context(
        client_creds, target, ContextReq.default(), impersonation=level
    )
    return handshake(client, accept_security_context(server_creds))


def _alice_acl(principal: str) -> SecurityDescriptor:
    return SecurityDescriptor.build(
        principal, [Ace.allow(principal, AccessMask.READ), Ace.allow(EVERYONE, AccessMask.LIST)]
    )


def test_anonymous_level_hides_the_real_identity(package_creds) -> None:
    real = _bind(package_creds, ImpersonationLevel.IMPERSONATE).server.peer
    assert not real.is_anonymous and real.principal != ANONYMOUS_PRINCIPAL
    pair = _bind(package_creds, ImpersonationLevel.ANONYMOUS)
    caller = pair.server.peer
    assert caller.is_anonymous
    assert caller.principal == ANONYMOUS_PRINCIPAL
    assert caller.groups == frozenset() and caller.delegation_chain == ()
    assert caller.delegated_credentials is None
    assert pair.server.impersonation_level is ImpersonationLevel.ANONYMOUS
    names = pair.server.query_attributes(ContextAttribute.NATIVE_NAMES)
    assert real.principal not in names.peer
    assert pair.server.query_attributes(ContextAttribute.ACCESS_TOKEN).is_anonymous


def test_anonymous_caller_fails_the_policy_and_the_access_check(package_creds) -> None:
    real = _bind(package_creds, ImpersonationLevel.IMPERSONATE).server.peer
    caller = _bind(package_creds, ImpersonationLevel.ANONYMOUS).server.peer
    everyone = AuthorizationPolicy.any_authenticated()
    by_name = AuthorizationPolicy([AuthorizationRule("*", allow=[real.principal])])
    open_door = AuthorizationPolicy(default=Decision.ALLOW)
    for policy in (everyone, by_name, open_door):
        policy.check(METHOD, real)
        with pytest.raises(AccessDeniedError):
            policy.check(METHOD, caller)
    AuthorizationPolicy([AuthorizationRule("*", allow=[ANONYMOUS_PRINCIPAL])]).check(METHOD, caller)
    acl = _alice_acl(real.principal)
    with impersonate(real):
        assert access_check(acl, AccessMask.READ | AccessMask.LIST)
    with impersonate(caller), pytest.raises(AccessDeniedError):
        access_check(acl, AccessMask.READ)
    with impersonate(caller), pytest.raises(AccessDeniedError):
        access_check(acl, AccessMask.LIST)  # EVERYONE excludes anonymous


def test_identify_level_is_seen_but_cannot_open_resources(package_creds) -> None:
    pair = _bind(package_creds, ImpersonationLevel.IDENTIFY)
    caller = pair.server.peer
    assert caller.impersonation_level is ImpersonationLevel.IDENTIFY
    assert not caller.is_anonymous and caller.principal != ANONYMOUS_PRINCIPAL
    with impersonate(caller), pytest.raises(NoImpersonationError):
        access_check(_alice_acl(caller.principal), AccessMask.READ)


def test_impersonate_level_opens_what_the_caller_may(package_creds) -> None:
    caller = _bind(package_creds, ImpersonationLevel.IMPERSONATE).server.peer
    assert caller.impersonation_level is ImpersonationLevel.IMPERSONATE
    with impersonate(caller):
        assert access_check(_alice_acl(caller.principal), AccessMask.READ) == AccessMask.READ


def test_an_imported_anonymous_context_stays_anonymous(package_creds) -> None:
    _client_creds, server_creds, _target = package_creds
    pair = _bind(package_creds, ImpersonationLevel.ANONYMOUS)
    try:
        blob = pair.server.export()
    except InvalidStateError:
        assert server_creds.package_name == "kerberos"  # GSS export would destroy the context
        return
    imported = import_security_context(blob, server_creds)
    assert imported.peer.is_anonymous
    assert imported.peer.principal == ANONYMOUS_PRINCIPAL


def test_anonymity_is_the_level_not_the_name() -> None:
    # A token *named* "anonymous" at IMPERSONATE is not the anonymous identity, and a token
    # at ANONYMOUS level is anonymous whatever its name says.
    named = AccessToken(ANONYMOUS_PRINCIPAL, "ntlm")
    level_only = AccessToken("alice", "ntlm", impersonation_level=ImpersonationLevel.ANONYMOUS)
    anon_acl = SecurityDescriptor.build("x", [Ace.allow(ANONYMOUS_PRINCIPAL, AccessMask.READ)])
    alice_acl = SecurityDescriptor.build("x", [Ace.allow("alice", AccessMask.READ)])
    with pytest.raises(AccessDeniedError):
        access_check(anon_acl, AccessMask.READ, named)
    with pytest.raises(AccessDeniedError):
        access_check(alice_acl, AccessMask.READ, level_only)
    assert access_check(anon_acl, AccessMask.READ, level_only)
    everyone = AuthorizationPolicy.any_authenticated()
    everyone.check(METHOD, named)
    with pytest.raises(AccessDeniedError):
        everyone.check(METHOD, level_only)
    with pytest.raises(AccessDeniedError):
        AuthorizationPolicy([AuthorizationRule("*", allow=["alice"])]).check(METHOD, level_only)


def test_anonymous_caller_over_grpc(any_package_setup, serve) -> None:
    """End to end: the default policy refuses an ANONYMOUS caller before the handler runs; a
    policy that names anonymous admits it, and the handler sees "anonymous", never alice."""
    import echo_pb2
    import echo_pb2_grpc
    import grpc
    from helpers.echo import EchoServicer

    from rpcsec.grpc import SecurityInterceptor, reason_of, secure_channel

    setup = any_package_setup
    guarded, admitting = EchoServicer(), EchoServicer(readable_by=setup.principal("alice"))
    anonymous_ok = AuthorizationPolicy([AuthorizationRule("*", allow=[ANONYMOUS_PRINCIPAL])])
    refusing = serve([SecurityInterceptor(setup.server())], [guarded])
    admitting_address = serve([SecurityInterceptor(setup.server(), anonymous_ok)], [admitting])
    options = setup.channel_options()
    level = ImpersonationLevel.ANONYMOUS
    with secure_channel(refusing, setup.client("alice"), impersonation=level, **options) as ch:
        with pytest.raises(grpc.RpcError) as info:
            echo_pb2_grpc.EchoStub(ch).Say(echo_pb2.EchoRequest(text="hi"))
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(info.value) == "access-denied"
    assert guarded.calls == 0
    with secure_channel(
        admitting_address, setup.client("alice"), impersonation=level, **options
    ) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        assert stub.Say(echo_pb2.EchoRequest(text="who")).principal == ANONYMOUS_PRINCIPAL
        with pytest.raises(grpc.RpcError) as info:
            stub.Say(echo_pb2.EchoRequest(text="check"))  # alice's resource, as anonymous
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
