"""The per-call path's precomputed state must not change a single decision.

The server keeps, per (context, method), the AADs and the caller's token at each level the
policy admitted (``_server_core.EntryMethod``). These tests prove what that cache may and may
not remember, against a real server: a refusal is made (and audited) every time, an admitted
level never admits the other, a policy that is not ``AuthorizationPolicy`` itself is asked on
every call, and the cached state of one method never serves another.
"""

from __future__ import annotations

import logging

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers.echo import EchoServicer
from helpers.grpc_setup import SERVER_STYLES
from helpers.wiretap import craft_call

from rpcsec.grpc import (
    AuthorizationPolicy,
    AuthorizationRule,
    SecurityInterceptor,
    reason_of,
    secure_channel,
)
from rpcsec.security import EVERYONE
from rpcsec.sspi import ProtectionLevel

SAY = "/rpcsec.test.v1.Echo/Say"
REPEAT = "/rpcsec.test.v1.Echo/Repeat"


@pytest.fixture(params=SERVER_STYLES)
def server_style(request: pytest.FixtureRequest) -> str:
    return request.param


def _say(stub, text: str = "hi") -> str:
    return stub.Say(echo_pb2.EchoRequest(text=text), timeout=10).text


def test_a_refusal_is_made_and_audited_on_every_call(x509_setup, serve, caplog) -> None:
    setup = x509_setup
    policy = AuthorizationPolicy(
        [
            AuthorizationRule("*", allow={EVERYONE}),
            AuthorizationRule(SAY, deny={setup.principal("alice")}),
        ]
    )
    echo = EchoServicer()
    address = serve([SecurityInterceptor(setup.server(), policy)], [echo])
    caplog.set_level(logging.INFO, logger="rpcsec.audit")
    with secure_channel(address, setup.client(), **setup.channel_options()) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as info:
                _say(stub)
            assert reason_of(info.value) == "access-denied"
        # The same context is admitted to another method: that decision is its own.
        assert [r.text for r in stub.Repeat(echo_pb2.EchoRequest(text="r", repeat=1))] == ["r0"]
    denied = [r for r in caplog.records if "access-denied" in r.getMessage()]
    assert len(denied) == 3
    assert echo.calls == 1


def test_an_admitted_level_never_admits_the_other(x509_setup, serve) -> None:
    setup = x509_setup
    policy = AuthorizationPolicy(
        [AuthorizationRule("*", allow={EVERYONE}, min_protection=ProtectionLevel.PRIVACY)]
    )
    echo = EchoServicer()
    interceptor = SecurityInterceptor(setup.server(), policy)
    address = serve([interceptor], [echo])
    options = setup.channel_options(protection=ProtectionLevel.PRIVACY)
    with secure_channel(address, setup.client(), **options) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        assert _say(stub, "sealed") == "sealed"  # PRIVACY admitted, and remembered
        context = channel.security_context
        handle = channel._session.current.handle
        request = echo_pb2.EchoRequest(text="signed only").SerializeToString()
        # The same context opening a call at INTEGRITY (a signed, not sealed, request).
        metadata, token, _ = craft_call(context, handle, SAY, request, ProtectionLevel.INTEGRITY)
        with grpc.insecure_channel(address) as raw:
            with pytest.raises(grpc.RpcError) as info:
                raw.unary_unary(SAY)(token, metadata=metadata, timeout=10)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(info.value) == "access-denied"
        assert _say(stub, "again") == "again"
    assert echo.calls == 2


class _CountingPolicy(AuthorizationPolicy):
    """A subclass may decide on anything (here: how many calls it has seen)."""

    def __init__(self, allowed_calls: int) -> None:
        super().__init__([AuthorizationRule("*", allow={EVERYONE})])
        self.asked = 0
        self.allowed_calls = allowed_calls

    def check(self, method, token) -> None:
        self.asked += 1
        if self.asked > self.allowed_calls:
            from rpcsec.sspi import AccessDeniedError

            raise AccessDeniedError("quota used up")
        super().check(method, token)


def test_a_policy_subclass_is_asked_on_every_call(x509_setup, serve) -> None:
    setup = x509_setup
    policy = _CountingPolicy(allowed_calls=2)
    echo = EchoServicer()
    address = serve([SecurityInterceptor(setup.server(), policy)], [echo])
    with secure_channel(address, setup.client(), **setup.channel_options()) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        assert _say(stub) == "hi"
        assert _say(stub) == "hi"
        with pytest.raises(grpc.RpcError) as info:
            _say(stub)
        assert reason_of(info.value) == "access-denied"
    assert policy.asked == 3 and echo.calls == 2


def test_the_in_process_server_unary_benchmark_runs() -> None:
    """``benchmarks.server_unary`` drives real x509 ticket calls through the sync server's
    unary behavior; every call must be admitted (a refusal raises there), and it must not rot.
    Timings are never asserted."""
    from benchmarks.server_unary import measure

    results = measure(calls=20, rounds=1)
    assert set(results) == {"INTEGRITY", "PRIVACY"}
    assert all(numbers["best_us"] > 0 for numbers in results.values())
