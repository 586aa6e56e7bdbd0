"""The binding's sans-IO parts, in memory: context table, handshake limiter, policy, status
mapping, the Negotiate drivers, call admission and per-call message cursors.

Hostile input (handshake messages, call metadata) is generated with hypothesis: whatever a peer
sends, the server answers with a typed ``SecurityError`` (or an error reply), never anything
else.
"""

from __future__ import annotations

import grpc
import pytest
from helpers.pair import handshake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.grpc import AuthorizationPolicy, AuthorizationRule, Decision, status_for
from rpcsec.grpc._binding import ChannelSecurity
from rpcsec.grpc._calls import CallProtection, Inbound, Outbound
from rpcsec.grpc._cloaking import resolve_credentials
from rpcsec.grpc._handshake import ClientNegotiation, ServerNegotiation
from rpcsec.grpc._proto import handshake_pb2
from rpcsec.grpc._server_core import ServerMethod, ServerSecurity
from rpcsec.grpc._status import passthrough_status, reason_of
from rpcsec.grpc._table import ContextTable, HandshakeLimiter
from rpcsec.grpc._wire import REQUEST, RESPONSE
from rpcsec.security import EVERYONE, AccessToken, impersonate
from rpcsec.session import ReplayStoreUnavailableError
from rpcsec.sspi import (
    AccessDeniedError,
    BusyError,
    ClientContext,
    ContextExpiredError,
    ContextReq,
    DelegationRequiredError,
    ImpersonationLevel,
    InvalidHandleError,
    MessageAlteredError,
    NoCredentialsError,
    ProtectionLevel,
    SecStatus,
    SecurityError,
    ServerContext,
    error_for_status,
)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _pair(setup, clock=None, **client_kwargs):
    kwargs = {"clock": clock} if clock is not None else {}
    client = ClientContext(
        setup.client(),
        setup.target(),
        setup.requirements | ContextReq.CONFIDENTIALITY,
        **client_kwargs,
        **kwargs,
    )
    server = ServerContext(setup.server(), ContextReq.REPLAY_DETECT, **kwargs)
    handshake(client, server)
    return client, server


# -- status mapping ---------------------------------------------------------------------------


def test_every_security_failure_maps_to_a_security_status() -> None:
    allowed = {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
    }
    for status in SecStatus:
        if not status.is_error:
            continue
        assert status_for(error_for_status(status)) in allowed, status
    assert status_for(AccessDeniedError()) is grpc.StatusCode.PERMISSION_DENIED
    assert status_for(DelegationRequiredError()) is grpc.StatusCode.PERMISSION_DENIED
    assert status_for(MessageAlteredError()) is grpc.StatusCode.UNAUTHENTICATED
    assert status_for(InvalidHandleError()) is grpc.StatusCode.UNAUTHENTICATED
    assert status_for(BusyError()) is grpc.StatusCode.RESOURCE_EXHAUSTED
    # The shared replay store did not answer: the handler never ran, the caller may retry.
    assert status_for(ReplayStoreUnavailableError()) is grpc.StatusCode.UNAVAILABLE


def test_reason_and_passthrough_of_rpc_errors() -> None:
    class Refused(grpc.RpcError):
        def __init__(self, code, metadata):
            self._code, self._metadata = code, metadata

        def code(self):
            return self._code

        def trailing_metadata(self):
            return self._metadata

    refused = Refused(grpc.StatusCode.PERMISSION_DENIED, (("rpcsec-reason", "access-denied"),))
    assert reason_of(refused) == "access-denied"
    assert passthrough_status(refused) == (grpc.StatusCode.PERMISSION_DENIED, "access-denied")
    # Not an rpcsec refusal, or a code we never use for one: not passed through.
    assert passthrough_status(Refused(grpc.StatusCode.UNAVAILABLE, ())) is None
    spoof = Refused(grpc.StatusCode.INTERNAL, (("rpcsec-reason", "replay"),))
    assert passthrough_status(spoof) is None
    assert reason_of(grpc.RpcError()) is None
    assert reason_of(ValueError()) is None


# -- context table ----------------------------------------------------------------------------


def test_context_table_lru_idle_and_lifetime(ntlm_setup) -> None:
    clock = Clock()
    table = ContextTable(max_contexts=2, idle_timeout=30, max_lifetime=100, clock=clock)
    servers = [_pair(ntlm_setup, clock)[1] for _ in range(3)]
    a = table.add(servers[0], "peer-a")
    b = table.add(servers[1], "peer-b")
    assert len(table) == 2 and a != b and len(a) == 16
    clock.now += 2  # (the LRU order is refreshed at most once a second per entry)
    table.lookup(a)  # a is now the most recently used
    c = table.add(servers[2], "peer-c")  # evicts b, the least recently used
    assert len(table) == 2 and table.evictions == 1
    with pytest.raises(InvalidHandleError):
        table.lookup(b)
    assert servers[1].state.value == "deleted"
    assert table.lookup(a).peer == "peer-a"
    assert table.lookup(c).tokens[ProtectionLevel.PRIVACY].protection_level is (
        ProtectionLevel.PRIVACY
    )

    clock.now += 32  # idle longer than 30 s: forgotten, and reported as unknown
    with pytest.raises(InvalidHandleError):
        table.lookup(a)
    assert table.purge() == 1  # c idled out too
    assert len(table) == 0

    d = table.add(_pair(ntlm_setup, clock)[1], "peer-d")
    start = clock.now
    while clock.now + 25 < start + 100:
        clock.now += 25
        table.lookup(d)  # used well within the idle timeout...
    clock.now = start + 100  # ...but its lifetime is over
    with pytest.raises(ContextExpiredError):
        table.lookup(d)
    assert not table.release(d)


def test_context_table_release(ntlm_setup) -> None:
    table = ContextTable()
    server = _pair(ntlm_setup)[1]
    handle = table.add(server, "p")
    assert table.release(handle)
    assert not table.release(handle)
    assert server.state.value == "deleted"
    with pytest.raises(ValueError):
        ContextTable(max_contexts=0)


# -- handshake limiter ------------------------------------------------------------------------


def test_handshake_limiter_bounds_and_reaps() -> None:
    clock = Clock()
    limiter = HandshakeLimiter(max_pending=3, max_per_peer=2, timeout=10, clock=clock)
    cancelled: list[str] = []
    a1 = limiter.admit("a", lambda: cancelled.append("a1"))
    limiter.admit("a", lambda: cancelled.append("a2"))
    with pytest.raises(BusyError):
        limiter.admit("a", lambda: None)  # per peer
    clock.now += 5
    limiter.admit("b", lambda: cancelled.append("b1"))
    with pytest.raises(BusyError):
        limiter.admit("c", lambda: None)  # global
    assert len(limiter) == 3 and limiter.refused == 2 and limiter.pending_for("a") == 2
    limiter.done(a1)
    limiter.done(a1)  # idempotent
    assert limiter.pending_for("a") == 1
    clock.now += 6  # a2 is 11 s old, b1 only 6 s
    limiter.admit("c", lambda: None)
    assert cancelled == ["a2"] and limiter.timed_out == 1 and limiter.pending_for("a") == 0
    clock.now += 10
    assert limiter.reap() == 2 and cancelled == ["a2", "b1"]
    assert len(limiter) == 0 and limiter.peers == 0 and limiter.wait_idle(0)


def test_a_failing_cancel_still_frees_the_slot() -> None:
    clock = Clock()
    limiter = HandshakeLimiter(max_pending=1, timeout=1, clock=clock)

    def broken() -> None:
        raise RuntimeError("stream already gone")

    limiter.admit("a", broken)
    clock.now += 2
    limiter.admit("b", lambda: None)
    assert len(limiter) == 1 and limiter.pending_for("b") == 1


# -- authorization policy ---------------------------------------------------------------------


def _token(principal="alice", groups=(), level=ProtectionLevel.INTEGRITY, imp=None):
    return AccessToken(
        principal=principal,
        package="test",
        groups=frozenset(groups),
        protection_level=level,
        impersonation_level=imp or ImpersonationLevel.IMPERSONATE,
    )


def test_policy_rules() -> None:
    policy = AuthorizationPolicy(
        [
            AuthorizationRule("*", allow={EVERYONE}, deny={"mallory"}),
            AuthorizationRule("/a.Svc/*", allow={"group:staff"}, deny={"group:interns"}),
            AuthorizationRule("/a.Svc/Secret", min_protection=ProtectionLevel.PRIVACY),
            AuthorizationRule("/a.Svc/Act", min_impersonation=ImpersonationLevel.IMPERSONATE),
        ]
    )
    check = policy.check
    check("/a.Svc/Get", _token())
    check("/b.Other/Get", _token("bob"))
    with pytest.raises(AccessDeniedError):
        check("/b.Other/Get", _token("mallory"))  # a global deny
    with pytest.raises(AccessDeniedError):
        check("/a.Svc/Get", _token("carol", groups={"staff", "interns"}))  # deny wins
    with pytest.raises(AccessDeniedError):
        check("/a.Svc/Secret", _token())  # a specific rule raises the bar
    check("/a.Svc/Secret", _token(level=ProtectionLevel.PRIVACY))
    with pytest.raises(AccessDeniedError):
        check("/a.Svc/Act", _token(imp=ImpersonationLevel.IDENTIFY))
    with pytest.raises(AccessDeniedError):
        check(
            "/a.Svc/Get", AccessToken.anonymous().replace(protection_level=ProtectionLevel.PRIVACY)
        )


def test_policy_default_is_deny() -> None:
    policy = AuthorizationPolicy([AuthorizationRule("/a.Svc/Get", allow={"alice"})])
    assert policy.default is Decision.DENY
    policy.check("/a.Svc/Get", _token())
    for method, token in [("/a.Svc/Get", _token("bob")), ("/a.Svc/Other", _token())]:
        with pytest.raises(AccessDeniedError):
            policy.check(method, token)
    permissive = AuthorizationPolicy([AuthorizationRule("*", deny={"bob"})], default=Decision.ALLOW)
    permissive.check("/x.Y/Z", _token())
    with pytest.raises(AccessDeniedError):
        permissive.check("/x.Y/Z", _token("bob"))


@pytest.mark.parametrize("method", ["", "Svc/Method", "/Svc", "/a*/M", "/a.Svc/M*", "/a.Svc/"])
def test_policy_rejects_malformed_rules(method) -> None:
    with pytest.raises(ValueError):
        AuthorizationRule(method)


def test_policy_rejects_wrong_types() -> None:
    with pytest.raises(TypeError):
        AuthorizationPolicy(["*"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        AuthorizationRule("*", min_protection=6)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AuthorizationRule("*", allow={""})


# -- credentials resolution (cloaking) --------------------------------------------------------


def test_resolve_credentials(ntlm_setup) -> None:
    alice = ntlm_setup.client()
    assert resolve_credentials(alice) == (alice, None)
    with pytest.raises(TypeError):
        resolve_credentials("alice")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        resolve_credentials(ntlm_setup.server())
    with pytest.raises(NoCredentialsError):
        resolve_credentials(None)
    caller = _token(imp=ImpersonationLevel.DELEGATE)
    with impersonate(caller), pytest.raises(DelegationRequiredError):
        resolve_credentials(None)  # delegation level, but no delegated credentials
    with impersonate(
        caller.replace(
            impersonation_level=ImpersonationLevel.IMPERSONATE, delegated_credentials=alice
        )
    ):
        with pytest.raises(DelegationRequiredError):
            resolve_credentials(None)
    delegating = caller.replace(delegated_credentials=alice)
    with impersonate(delegating):
        assert resolve_credentials(None) == (alice, delegating)


def test_channel_security_flags(ntlm_setup) -> None:
    base = ContextReq.REPLAY_DETECT | ContextReq.INTEGRITY
    security = ChannelSecurity(
        ntlm_setup.client(),
        target_name="host@x",
        requirements=ContextReq.INTEGRITY,
        impersonation=ImpersonationLevel.DELEGATE,
        protection=ProtectionLevel.PRIVACY,
        package_options=None,
    )
    assert security.required == base | ContextReq.CONFIDENTIALITY  # replay always required
    assert security.requested == security.required | ContextReq.DELEGATE  # asked, not required
    with pytest.raises(ValueError):
        ChannelSecurity(
            ntlm_setup.client(),
            target_name=None,
            requirements=None,
            impersonation=ImpersonationLevel.IMPERSONATE,
            protection=ProtectionLevel.NONE,
            package_options=None,
        )


# -- the Negotiate drivers, paired in memory --------------------------------------------------


def _negotiate(setup, register=None) -> tuple[ClientNegotiation, ServerNegotiation, int]:
    client = ClientNegotiation(ClientContext(setup.client(), setup.target(), setup.requirements))
    server = ServerNegotiation(
        {setup.package: setup.server()},
        lambda creds: ServerContext(creds, ContextReq.REPLAY_DETECT),
        register or (lambda context: b"H" * 16),
    )
    message = client.start()
    legs = 1
    while True:
        raw_reply, done = server.receive_bytes(message.SerializeToString())
        legs += 1
        reply = handshake_pb2.NegotiateResponse.FromString(raw_reply)
        following = client.receive(reply)
        if following is None:
            assert done
            return client, server, legs
        assert not done
        message = following
        legs += 1


def test_negotiate_drivers_pair(package_setup) -> None:
    client, server, legs = _negotiate(package_setup)
    assert client.handle == b"H" * 16
    assert client.context.complete and server.context is not None and server.context.complete
    assert legs == 4  # C, S, C, S for both packages
    assert server.context.peer.principal == package_setup.principal()


def test_server_refusal_reaches_the_client_as_its_typed_error(ntlm_setup) -> None:
    client = ClientNegotiation(
        ClientContext(ntlm_setup.client(), ntlm_setup.target(), ntlm_setup.requirements)
    )
    server = ServerNegotiation({}, lambda c: None, lambda c: b"")  # accepts no package
    raw, done = server.receive_bytes(client.start().SerializeToString())
    assert done and isinstance(server.error, NoCredentialsError)
    with pytest.raises(NoCredentialsError):
        client.receive(handshake_pb2.NegotiateResponse.FromString(raw))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300))
def test_garbage_handshake_messages_get_an_error_reply(ntlm_setup, raw) -> None:
    server = ServerNegotiation(
        {"ntlm": ntlm_setup.server()},
        lambda creds: ServerContext(creds, ContextReq.REPLAY_DETECT),
        lambda context: b"H" * 16,
    )
    reply, done = server.receive_bytes(raw)
    parsed = handshake_pb2.NegotiateResponse.FromString(reply)
    if done:
        assert parsed.error.reason and isinstance(server.error, SecurityError)
    else:
        assert parsed.token  # garbage that happened to be a valid first NTLM leg


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    token=st.binary(max_size=200),
    complete=st.booleans(),
    handle=st.binary(max_size=20),
    reason=st.one_of(st.none(), st.text(max_size=20)),
)
def test_garbage_handshake_replies_raise_security_errors(
    ntlm_setup, token, complete, handle, reason
):
    client = ClientNegotiation(
        ClientContext(ntlm_setup.client(), ntlm_setup.target(), ntlm_setup.requirements)
    )
    client.start()
    reply = handshake_pb2.NegotiateResponse(token=token, complete=complete, context_handle=handle)
    if reason is not None:
        reply.error.reason = reason
    with pytest.raises(SecurityError):
        client.receive(reply)


# -- call admission ---------------------------------------------------------------------------


@pytest.fixture
def admitted(ntlm_setup):
    """A ServerSecurity holding one context, and the client half of it."""
    security = ServerSecurity(ntlm_setup.server())
    client, server = _pair(ntlm_setup)
    handle = security.table.add(server, "peer")
    return security, client, handle


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["rpcsec-context-bin", "rpcsec-call-bin", "other"]),
            st.binary(max_size=40),
        ),
        max_size=4,
    )
)
def test_garbage_call_metadata_is_refused_with_security_errors(admitted, metadata) -> None:
    security, _, _ = admitted
    with pytest.raises(SecurityError):
        security.open_call(metadata, ServerMethod("/a.Svc/M", None, None))


def test_admission_and_messages_in_memory(admitted) -> None:
    from helpers.wiretap import craft_call, craft_stream_call, message_aad

    security, client, handle = admitted
    method = ServerMethod("/a.Svc/M", None, None)
    metadata, token, call_seq = craft_call(client, handle, "/a.Svc/M", b"payload")
    call, payload = security.open_unary(metadata, method, token)
    assert payload == b"payload"
    assert call.token.protection_level is ProtectionLevel.INTEGRITY
    response = call.seal_response(b"answer")
    assert client.unwrap(response, aad=message_aad(handle, "/a.Svc/M", call_seq, 0x02, 0)) == (
        b"answer"
    )
    with pytest.raises(SecurityError):
        security.open_unary(metadata, method, token)  # the same call again: replay
    # A privacy call is opened by a sealed message; its stream messages must be sealed too.
    metadata, _, call_seq = craft_stream_call(
        client, handle, "/a.Svc/M", [], ProtectionLevel.PRIVACY
    )
    call = security.open_call(metadata, method)
    assert call.token.protection_level is ProtectionLevel.PRIVACY
    signed = client.wrap(
        b"x", aad=message_aad(handle, "/a.Svc/M", call_seq, 0x01, 0), encrypt=False
    )
    with pytest.raises(MessageAlteredError):
        call.inbound().open(signed)


def test_stream_cursors(ntlm_setup) -> None:
    client, server = _pair(ntlm_setup)
    sender = Outbound(CallProtection(client, b"h" * 16), b"prefix", b"\x00" * 8, REQUEST, True)
    tokens = [sender.seal(f"m{i}".encode()) for i in range(3)] + [sender.end()]

    def receiver() -> Inbound:
        return Inbound(CallProtection(server, b"h" * 16), b"prefix", b"\x00" * 8, REQUEST, True)

    inbound = receiver()
    assert [inbound.open(t) for t in tokens] == [b"m0", b"m1", b"m2", None]
    inbound.finish()
    with pytest.raises(MessageAlteredError):
        inbound.open(tokens[0])  # after the end

    # Fresh contexts for each tampering (the window remembers what it accepted).
    for tamper in ("swap", "truncate", "wrong-direction"):
        client, server = _pair(ntlm_setup)
        sender = Outbound(CallProtection(client, b"h" * 16), b"p", b"\x00" * 8, REQUEST, False)
        tokens = [sender.seal(b"a"), sender.seal(b"b"), sender.end()]
        inbound = Inbound(
            CallProtection(server, b"h" * 16),
            b"p",
            b"\x00" * 8,
            RESPONSE if tamper == "wrong-direction" else REQUEST,
            False,
        )
        with pytest.raises(MessageAlteredError):
            if tamper == "swap":
                inbound.open(tokens[1])
            elif tamper == "truncate":
                inbound.open(tokens[0])
                inbound.open(tokens[1])
                inbound.finish()
            else:
                inbound.open(tokens[0])
        with pytest.raises(MessageAlteredError):
            inbound.finish()  # sticky


def test_import_rpcsec_does_not_import_grpc() -> None:
    import subprocess
    import sys

    code = (
        "import sys, rpcsec\n"
        "assert 'grpc' not in sys.modules, 'import rpcsec pulled in grpc'\n"
        "assert rpcsec.grpc.secure_channel and 'grpc' in sys.modules\n"
        "assert rpcsec.grpc.aio.secure_channel\n"
    )
    import pathlib

    import rpcsec

    root = pathlib.Path(rpcsec.__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=root
    )
    assert done.returncode == 0, done.stderr
