"""Per-proxy overrides (issue 12 item 2, DCOM's CoSetProxyBlanket): ``channel.with_blanket()``
gives a channel at another protection or impersonation level, same identity and connection.

Real servers on loopback; the handler reports the level it ran at, and the connection it came
over, so the tests see what the server really got, not what the client asked for.
"""

from __future__ import annotations

from typing import Any

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers.echo import AsyncEchoServicer, EchoServicer
from helpers.wiretap import Wiretap

import rpcsec
from rpcsec.grpc import SecurityInterceptor, reason_of, secure_channel
from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.sspi import ImpersonationLevel, ProtectionLevel

NEGOTIATE = "/rpcsec.v1.SecurityHandshake/Negotiate"


class LevelEcho(EchoServicer):
    """Answers with the level and impersonation level the call ran at; records peers."""

    def __init__(self, readable_by: str = "") -> None:
        super().__init__(readable_by=readable_by)
        self.peers: set[str] = set()
        self.levels: list[ImpersonationLevel] = []

    def Say(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoResponse:
        self.peers.add(context.peer())
        token = rpcsec.current_token()
        assert token is not None
        self.levels.append(token.impersonation_level)
        return super().Say(request, context)


def _say(channel, text: str = "hi") -> echo_pb2.EchoResponse:
    return echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text=text))


def test_a_blanket_changes_the_level_on_the_same_connection(x509_setup, serve) -> None:
    setup = x509_setup
    echo = LevelEcho(readable_by=setup.principal("alice"))
    address = serve([SecurityInterceptor(setup.server())], [echo])
    tap = Wiretap()
    raw = grpc.intercept_channel(grpc.insecure_channel(address), tap)
    with secure_channel(
        raw, setup.client(), protection=ProtectionLevel.INTEGRITY, **setup.channel_options()
    ) as channel:
        sealed = channel.with_blanket(protection=ProtectionLevel.PRIVACY)
        assert sealed.protection is ProtectionLevel.PRIVACY
        assert _say(sealed).protection_level == "PRIVACY"  # the server saw a sealed call
        assert _say(channel).protection_level == "INTEGRITY"  # the original is unchanged
        identify = channel.with_blanket(impersonation=ImpersonationLevel.IDENTIFY)
        assert _say(identify).protection_level == "INTEGRITY"  # omitted level kept
        assert echo.levels[-1] is ImpersonationLevel.IDENTIFY
        with pytest.raises(grpc.RpcError) as caught:
            _say(identify, "check")  # an IDENTIFY token cannot open the caller's resources
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert _say(channel, "check").principal == setup.principal("alice")  # IMPERSONATE can
        sealed.close()  # releases its own context only
        assert _say(channel).text == "hi"
    assert len(echo.peers) == 1  # one HTTP/2 connection for all three levels
    assert sum(1 for call in tap.calls if call.method == NEGOTIATE) == 3  # a context each


def test_blanket_arguments_are_checked(x509_setup, serve) -> None:
    setup = x509_setup
    address = serve([SecurityInterceptor(setup.server())], [LevelEcho()])
    with secure_channel(address, setup.client(), **setup.channel_options()) as channel:
        with pytest.raises(ValueError):
            channel.with_blanket(protection=ProtectionLevel.NONE)  # never unprotected
        with pytest.raises(ValueError):
            channel.with_blanket(protection="PRIVACY")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            channel.with_blanket(impersonation=2)  # type: ignore[arg-type]


def test_a_blanket_cannot_lower_what_the_server_requires(x509_setup, serve) -> None:
    """The server's policy still decides: a PRIVACY-only method refuses an INTEGRITY blanket."""
    from rpcsec.grpc import AuthorizationPolicy, AuthorizationRule

    setup = x509_setup
    policy = AuthorizationPolicy(
        [
            AuthorizationRule(
                "/rpcsec.test.v1.Echo/*",
                allow={"group:everyone"},
                min_protection=ProtectionLevel.PRIVACY,
            )
        ]
    )
    echo = LevelEcho()
    address = serve([SecurityInterceptor(setup.server(), policy)], [echo])
    with secure_channel(
        address, setup.client(), protection=ProtectionLevel.PRIVACY, **setup.channel_options()
    ) as channel:
        assert _say(channel).protection_level == "PRIVACY"
        weaker = channel.with_blanket(protection=ProtectionLevel.INTEGRITY)
        with pytest.raises(grpc.RpcError) as caught:
            _say(weaker)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(caught.value) == "access-denied"
    assert echo.calls == 1  # the refused call never reached the handler


async def test_aio_blanket(x509_setup, aio_serve) -> None:
    setup = x509_setup
    address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server())], [AsyncEchoServicer()]
    )
    async with rpcsec_aio.secure_channel(
        address, setup.client(), protection=ProtectionLevel.INTEGRITY, **setup.channel_options()
    ) as channel:
        sealed = channel.with_blanket(protection=ProtectionLevel.PRIVACY)
        stub = echo_pb2_grpc.EchoStub(sealed)
        assert (await stub.Say(echo_pb2.EchoRequest(text="a"))).protection_level == "PRIVACY"
        await sealed.close()
        plain = echo_pb2_grpc.EchoStub(channel)
        assert (await plain.Say(echo_pb2.EchoRequest(text="b"))).protection_level == "INTEGRITY"
