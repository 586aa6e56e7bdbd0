"""Large messages (above ``_fresh_bytes.LARGE``, sealed and opened in place) through real gRPC
servers: every RPC kind, both levels, sync and aio, each package; and what an attacker on the
wire does to a large message -- one flipped byte anywhere, a cut, a swap -- is refused with the
right error, and nothing unverified reaches the application or the handler."""

from __future__ import annotations

import asyncio

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers.echo import AsyncEchoServicer, EchoServicer
from helpers.grpc_setup import SERVER_STYLES
from helpers.wiretap import Wiretap, flip

from rpcsec.grpc import SecurityInterceptor, reason_of, secure_channel
from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.sspi import InvalidTokenError, MessageAlteredError, ProtectionLevel
from rpcsec.sspi._fresh_bytes import LARGE

LEVELS = [ProtectionLevel.INTEGRITY, ProtectionLevel.PRIVACY]
BIG = 3 * LARGE + 11  # every message of these calls takes the large-message path


@pytest.fixture(params=SERVER_STYLES)
def server_style(request: pytest.FixtureRequest) -> str:
    return request.param


def _big(tag: str) -> str:
    return (tag * BIG)[:BIG]


def _request(text: str, repeat: int = 0) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(text=text, repeat=repeat)


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.name)
def test_large_messages_in_all_four_kinds(any_package_setup, serve, level) -> None:
    setup = any_package_setup
    echo = EchoServicer()
    address = serve([SecurityInterceptor(setup.server())], [echo])
    alice = setup.principal("alice")
    big = _big("a")
    with secure_channel(
        address, setup.client(), protection=level, **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        said = stub.Say(_request(big))
        assert (said.text, said.principal, said.protection_level) == (big, alice, level.name)
        assert [r.text for r in stub.Repeat(_request(big, 3))] == [big + str(i) for i in range(3)]
        texts = [_big(c) for c in "xyz"]
        assert stub.Collect(iter(_request(t) for t in texts)).text == "".join(texts)
        chat = [r.text for r in stub.Chat(iter(_request(t) for t in texts))]
        assert chat == [t.upper() for t in texts]
    assert echo.calls == 4


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.name)
async def test_large_messages_on_aio_servers_and_clients(package_setup, aio_serve, level) -> None:
    setup = package_setup
    address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server())], [AsyncEchoServicer()]
    )
    big = _big("b")
    async with rpcsec_aio.secure_channel(
        address, setup.client(), protection=level, **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        assert (await stub.Say(_request(big))).text == big
        repeat = stub.Repeat(_request(big, 2))
        assert [r.text async for r in repeat] == [big + "0", big + "1"]
        chat = stub.Chat()
        await chat.write(_request(big))
        assert (await chat.read()).text == big.upper()
        await chat.done_writing()
        assert await chat.read() is grpc.aio.EOF
        assert await chat.code() is grpc.StatusCode.OK

        async def requests():
            for c in "pq":
                yield _request(_big(c))

        assert (await stub.Collect(requests())).text == _big("p") + _big("q")


@pytest.fixture
def tapped_at(package_setup, serve, request):
    """(echo servicer, wiretap, a secure channel at the parametrized level over the tap)."""
    setup = package_setup
    echo = EchoServicer()
    address = serve([SecurityInterceptor(setup.server())], [echo])
    tap = Wiretap()
    raw = grpc.intercept_channel(grpc.insecure_channel(address), tap)
    level = request.param
    channel = secure_channel(raw, setup.client(), protection=level, **setup.channel_options())
    yield echo, tap, channel
    channel.close()


# Where a byte changes in a large token: the kind byte, the first bytes after it (a core
# token's sequence number, or the start of the ciphertext / tag), the middle, the last byte.
SPOTS = [0, 1, 5, 9, 20, BIG // 2, -1]
# A changed kind byte makes the token another kind (refused as altered) or no kind at all.
REFUSED = (MessageAlteredError, InvalidTokenError)
REASONS = {"message-altered", "invalid-token"}


@pytest.mark.parametrize("tapped_at", LEVELS, ids=lambda level: level.name, indirect=True)
def test_a_changed_byte_in_a_large_response_is_refused(tapped_at) -> None:
    _echo, tap, channel = tapped_at
    stub = echo_pb2_grpc.EchoStub(channel)
    big = _big("r")
    for spot in SPOTS:
        tap.responses = lambda method, messages, s=spot: [
            messages[0],
            flip(messages[1], s),
            *messages[2:],
        ]
        got: list[str] = []
        with pytest.raises(REFUSED):
            for response in stub.Repeat(_request(big, 3)):
                got.append(response.text)
        assert got == [big + "0"]  # the verified first message, nothing after the change
        tap.responses = lambda method, messages, s=spot: [flip(messages[0], s)]
        with pytest.raises(REFUSED):
            stub.Say(_request(big))
    for rewrite in (
        lambda m: [m[0][: len(m[0]) // 2], *m[1:]],  # a large message cut in half
        lambda m: [m[1], m[0], *m[2:]],  # two large messages swapped
    ):
        tap.responses = lambda method, messages, r=rewrite: r(messages)
        with pytest.raises(MessageAlteredError):
            list(stub.Repeat(_request(big, 3)))
    tap.responses = None
    assert [r.text for r in stub.Repeat(_request(big, 2))] == [big + "0", big + "1"]


@pytest.mark.parametrize("tapped_at", LEVELS, ids=lambda level: level.name, indirect=True)
def test_a_changed_byte_in_a_large_request_never_reaches_the_handler(tapped_at) -> None:
    echo, tap, channel = tapped_at
    stub = echo_pb2_grpc.EchoStub(channel)
    texts = [_big(c) for c in "abc"]
    assert stub.Collect(iter(_request(t) for t in texts)).text == "".join(texts)
    calls = echo.calls
    for spot in SPOTS:
        tap.requests = lambda method, messages, s=spot: [
            messages[0],
            flip(messages[1], s),
            *messages[2:],
        ]
        with pytest.raises(grpc.RpcError) as info:
            stub.Collect(iter(_request(t) for t in texts))
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert reason_of(info.value) in REASONS
        tap.requests = lambda method, messages, s=spot: [flip(messages[0], s)]
        with pytest.raises(grpc.RpcError) as info:
            stub.Say(_request(texts[0]))
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert reason_of(info.value) in REASONS
    # Stream handlers start before their requests are read; none saw an altered message
    # (Collect answers with everything it read, and no call got an answer). Say never ran.
    assert echo.calls - calls == len(SPOTS)
    tap.requests = None
    assert stub.Collect(iter(_request(t) for t in texts)).text == "".join(texts)


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.name)
async def test_an_aio_server_refuses_changed_large_requests_and_its_responses_are_checked(
    package_setup, aio_serve, level
) -> None:
    setup = package_setup
    echo = AsyncEchoServicer()
    address = await aio_serve([rpcsec_aio.SecurityInterceptor(setup.server())], [echo])
    big = _big("z")

    def tampering_client() -> list[str]:
        tap = Wiretap()
        raw = grpc.intercept_channel(grpc.insecure_channel(address), tap)
        outcomes = []
        with secure_channel(
            raw, setup.client(), protection=level, **setup.channel_options()
        ) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            assert [r.text for r in stub.Repeat(_request(big, 2))] == [big + "0", big + "1"]
            tap.responses = lambda method, messages: [messages[0], flip(messages[1], BIG // 3)]
            with pytest.raises(REFUSED):
                list(stub.Repeat(_request(big, 2)))
            tap.responses = None
            tap.requests = lambda method, messages: [flip(messages[0], BIG // 3), *messages[1:]]
            with pytest.raises(grpc.RpcError) as info:
                stub.Collect(iter([_request(big), _request(big)]))
            outcomes.append(reason_of(info.value))
            tap.requests = None
            outcomes.append(stub.Collect(iter([_request(big)])).text)
        return outcomes

    assert await asyncio.to_thread(tampering_client) == ["message-altered", big]
