"""The server's status, details and response metadata under a man in the middle (issue 10
item 5, response direction).

A handler's outcome -- ``set_code`` / ``set_details`` / ``set_trailing_metadata`` /
``send_initial_metadata`` / ``abort`` -- is signed with the call's response keys into
``rpcsec-status-bin``. The attackers: a real Envoy whose Lua filter (``proxies.Forgery``)
rewrites the trailers of answers after the handler ran (OK turned into NOT_FOUND, details
rewritten, ``x-admin: true`` injected), and a client interceptor on the raw channel that
rewrites the status of an application error. Before this change every one of these reached
the application as the server's word.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers import proxies
from helpers.grpc_setup import SERVER_STYLES
from hypothesis import given
from hypothesis import strategies as st

from rpcsec.grpc import (
    STATUS_KEY,
    SecurityInterceptor,
    call_status,
    reason_of,
    secure_channel,
)
from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.grpc._call_status import parse_status
from rpcsec.sspi import InvalidTokenError, MessageAlteredError

KINDS = ["unary_unary", "unary_stream", "stream_unary", "stream_stream"]
INITIAL = (("x-server", "s1"),)
TRAILING = (("x-result", "done"), ("x-cost-bin", b"\x01\x02"))


@pytest.fixture(params=SERVER_STYLES)
def server_style(request: pytest.FixtureRequest) -> str:
    """Every test here runs against a SecurityInterceptor and against handlers protected
    when registered (``secure_server``'s way)."""
    return request.param


class OutcomeEcho(echo_pb2_grpc.EchoServicer):
    """Sets response metadata; ``abort`` ends NOT_FOUND, ``quiet`` sets nothing."""

    def _outcome(self, text: str, context: Any) -> None:
        if text == "quiet":
            return
        context.send_initial_metadata(INITIAL)
        context.set_trailing_metadata(TRAILING)
        if text == "abort":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    def Say(self, request: Any, context: Any) -> Any:
        self._outcome(request.text, context)
        return echo_pb2.EchoResponse(text=request.text)

    def Repeat(self, request: Any, context: Any) -> Iterator[Any]:
        self._outcome(request.text, context)
        yield echo_pb2.EchoResponse(text=request.text)

    def Collect(self, request_iterator: Any, context: Any) -> Any:
        (request,) = list(request_iterator)
        self._outcome(request.text, context)
        return echo_pb2.EchoResponse(text=request.text)

    def Chat(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        (request,) = list(request_iterator)
        self._outcome(request.text, context)
        yield echo_pb2.EchoResponse(text=request.text)


def _call(stub: Any, kind: str, text: str) -> Any:
    """One call; returns the object whose ``call_status`` tells the outcome."""
    request = echo_pb2.EchoRequest(text=text)
    if kind == "unary_unary":
        return stub.Say.with_call(request, timeout=10)[1]
    if kind == "stream_unary":
        return stub.Collect.with_call(iter([request]), timeout=10)[1]
    call = (
        stub.Repeat(request, timeout=10)
        if kind == "unary_stream"
        else stub.Chat(iter([request]), timeout=10)
    )
    assert [r.text for r in call] == [text]
    return call


@pytest.fixture
def direct(x509_setup, serve):
    setup = x509_setup
    address = serve([SecurityInterceptor(setup.server())], [OutcomeEcho()])
    channel = secure_channel(address, setup.client(), **setup.channel_options())
    yield address, setup, echo_pb2_grpc.EchoStub(channel)
    channel.close()


@pytest.mark.parametrize("kind", KINDS)
def test_the_servers_outcome_is_verified(direct, kind) -> None:
    _, _, stub = direct
    call = _call(stub, kind, "hello")
    status = call_status(call)
    assert status.verified and status.code is grpc.StatusCode.OK
    assert sorted(call.trailing_metadata()) == sorted(TRAILING)
    assert tuple(call.initial_metadata()) == INITIAL
    assert all(k != STATUS_KEY for k, _ in status.unverified_trailing_metadata)


@pytest.mark.parametrize("kind", KINDS)
def test_an_application_error_is_verified(direct, kind) -> None:
    _, _, stub = direct
    with pytest.raises(grpc.RpcError) as info:
        _call(stub, kind, "abort")
    error = info.value
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert error.details() == "no such thing"
    status = call_status(error)
    assert status.verified
    assert sorted(error.trailing_metadata()) == sorted(TRAILING)


def test_a_handler_that_sets_nothing_is_still_signed(direct) -> None:
    _, _, stub = direct
    status = call_status(_call(stub, "unary_unary", "quiet"))
    assert status.verified and status.trailing_metadata == () and status.details == ""


def test_a_refusal_nobody_signed_is_reported_unverified(direct) -> None:
    address, _, _ = direct
    # A caller the policy never saw: the server refuses before any handler, unsigned.
    with grpc.insecure_channel(address) as raw:
        with pytest.raises(grpc.RpcError) as info:
            raw.unary_unary("/rpcsec.test.v1.Echo/Say")(b"\x53" + b"\x00" * 40)
    assert not call_status(info.value).verified
    assert reason_of(info.value) is not None


class _RewriteError(grpc.UnaryUnaryClientInterceptor):
    """Rewrites the application's NOT_FOUND (code or details), keeping every trailer."""

    def __init__(self, code: grpc.StatusCode | None, details: str | None) -> None:
        self.code, self.details = code, details

    def intercept_unary_unary(self, continuation, client_call_details, request):
        outcome = continuation(client_call_details, request)
        error = outcome.exception()
        if error is None or "SecurityHandshake" in client_call_details.method:
            return outcome
        return _Forged(error, self.code or error.code(), self.details or error.details())


class _Forged(grpc.RpcError, grpc.Call, grpc.Future):
    def __init__(self, real: Any, code: grpc.StatusCode, details: str) -> None:
        self._real, self._code, self._details = real, code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> Any:
        return self._real.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._real.trailing_metadata()

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> Any:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_done_callback(self, fn: Any) -> None:
        fn(self)

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> Any:
        return None

    def add_callback(self, callback: Any) -> bool:
        return False


@pytest.mark.parametrize(
    ("code", "details"),
    [(grpc.StatusCode.PERMISSION_DENIED, None), (None, "the thing is elsewhere")],
    ids=["code", "details"],
)
def test_a_rewritten_error_status_is_detected(x509_setup, serve, code, details) -> None:
    setup = x509_setup
    address = serve([SecurityInterceptor(setup.server())], [OutcomeEcho()])
    raw = grpc.intercept_channel(grpc.insecure_channel(address), _RewriteError(code, details))
    with secure_channel(raw, setup.client(), **setup.channel_options()) as channel:
        with pytest.raises(MessageAlteredError) as info:
            echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="abort"))
    assert isinstance(info.value, grpc.RpcError)
    assert reason_of(info.value) == "message-altered"


# -- a real Envoy rewriting trailers after the handler ran ----------------------------------


def _forging_envoy(address: str, tmp_path: Any, trailers: dict[str, str]) -> Any:
    proxies.require_proxy("envoy")
    forge = proxies.Forgery(trailers, path_prefix="/rpcsec.test.v1.Echo/", drop_body=False)
    return proxies.envoy_grpc_proxy([address], tmp_path, forge=forge)


FORGERIES = {
    "ok-to-not-found": {"grpc-status": "5"},
    "ok-to-not-found-with-details": {"grpc-status": "5", "grpc-message": "forged"},
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_envoy_rewriting_the_status_is_detected(x509_setup, serve, tmp_path, forgery) -> None:
    setup = x509_setup
    address = serve([SecurityInterceptor(setup.server())], [OutcomeEcho()])
    with _forging_envoy(address, tmp_path, FORGERIES[forgery]) as proxy:
        with secure_channel(proxy.address, setup.client(), **setup.channel_options()) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            for kind in KINDS:
                with pytest.raises(MessageAlteredError) as info:
                    _call(stub, kind, "hello")
                assert isinstance(info.value, grpc.RpcError), kind


def test_envoy_injecting_trailers_is_kept_apart(x509_setup, serve, tmp_path) -> None:
    setup = x509_setup
    address = serve([SecurityInterceptor(setup.server())], [OutcomeEcho()])
    with _forging_envoy(address, tmp_path, {"x-admin": "true", "x-result": "pwned"}) as proxy:
        with secure_channel(proxy.address, setup.client(), **setup.channel_options()) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            # x-result is signed: replacing its value is an alteration
            for kind in KINDS:
                with pytest.raises(MessageAlteredError):
                    _call(stub, kind, "hello")
            # x-admin alone, on a call whose handler set no trailers: kept apart
            call = _call(stub, "unary_unary", "quiet")
            status = call_status(call)
            assert status.verified
            assert ("x-admin", "true") not in tuple(call.trailing_metadata())
            assert ("x-admin", "true") in status.unverified_trailing_metadata


# -- the token parser -----------------------------------------------------------------------


@given(st.one_of(st.binary(max_size=200), st.none(), st.text(max_size=10)))
def test_the_status_token_parser_fails_only_typed(raw) -> None:
    try:
        initial, trailing, mic = parse_status(raw)
    except InvalidTokenError:
        return
    assert mic and STATUS_KEY not in initial | trailing


# -- aio: async handlers sign, the aio client checks ---------------------------------------


class AsyncOutcomeEcho(echo_pb2_grpc.EchoServicer):
    async def _outcome(self, text: str, context: Any) -> None:
        await context.send_initial_metadata(INITIAL)
        context.set_trailing_metadata(TRAILING)
        if text == "abort":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    async def Say(self, request: Any, context: Any) -> Any:
        await self._outcome(request.text, context)
        return echo_pb2.EchoResponse(text=request.text)

    async def Repeat(self, request: Any, context: Any) -> Any:
        await self._outcome(request.text, context)
        yield echo_pb2.EchoResponse(text=request.text)

    async def Collect(self, request_iterator: Any, context: Any) -> Any:
        texts = [r.text async for r in request_iterator]
        await self._outcome(texts[0], context)
        return echo_pb2.EchoResponse(text=texts[0])

    async def Chat(self, request_iterator: Any, context: Any) -> Any:
        texts = [r.text async for r in request_iterator]
        await self._outcome(texts[0], context)
        yield echo_pb2.EchoResponse(text=texts[0])


async def _one(text: str):
    yield echo_pb2.EchoRequest(text=text)


async def _aio_call(stub: Any, kind: str, text: str) -> Any:
    """One aio call run to its end; returns the call object."""
    request = echo_pb2.EchoRequest(text=text)
    if kind == "unary_unary":
        call = stub.Say(request, timeout=10)
        assert (await call).text == text
    elif kind == "stream_unary":
        call = stub.Collect(_one(text), timeout=10)
        assert (await call).text == text
    else:
        call = (
            stub.Repeat(request, timeout=10)
            if kind == "unary_stream"
            else stub.Chat(_one(text), timeout=10)
        )
        assert [r.text async for r in call] == [text]
    return call


@pytest.mark.parametrize("kind", KINDS)
async def test_aio_outcomes_are_verified(x509_setup, aio_serve, kind) -> None:
    setup = x509_setup
    address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server())], [AsyncOutcomeEcho()]
    )
    async with rpcsec_aio.secure_channel(address, setup.client(), **setup.channel_options()) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        call = await _aio_call(stub, kind, "hello")
        assert call_status(call).verified
        assert sorted(await call.trailing_metadata()) == sorted(TRAILING)
        assert tuple(await call.initial_metadata()) == INITIAL
        with pytest.raises(grpc.RpcError) as info:
            await _aio_call(stub, kind, "abort")
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
        assert call_status(info.value).verified
        assert sorted(info.value.trailing_metadata()) == sorted(TRAILING)


async def test_aio_client_detects_envoy_rewriting_the_status(x509_setup, serve, tmp_path) -> None:
    setup = x509_setup
    address = serve([SecurityInterceptor(setup.server())], [OutcomeEcho()])
    with _forging_envoy(address, tmp_path, {"grpc-status": "5"}) as proxy:
        async with rpcsec_aio.secure_channel(
            proxy.address, setup.client(), **setup.channel_options()
        ) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            for kind in KINDS:
                with pytest.raises(MessageAlteredError) as info:
                    await _aio_call(stub, kind, "hello")
                assert isinstance(info.value, grpc.RpcError), kind


def test_futures_check_the_outcome(direct, x509_setup, serve, tmp_path) -> None:
    _, setup, stub = direct
    future = stub.Say.future(echo_pb2.EchoRequest(text="hello"), timeout=10)
    assert future.result().text == "hello"
    assert call_status(future).verified
    assert sorted(future.trailing_metadata()) == sorted(TRAILING)
    failing = stub.Collect.future(iter([echo_pb2.EchoRequest(text="abort")]), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        failing.result()
    assert info.value.code() is grpc.StatusCode.NOT_FOUND and call_status(info.value).verified
    address = serve([SecurityInterceptor(setup.server())], [OutcomeEcho()])
    with _forging_envoy(address, tmp_path, {"grpc-status": "5"}) as proxy:
        with secure_channel(proxy.address, setup.client(), **setup.channel_options()) as ch:
            forged = echo_pb2_grpc.EchoStub(ch).Say.future(echo_pb2.EchoRequest(text="x"))
            with pytest.raises(MessageAlteredError):
                forged.result()


class _Impostor(echo_pb2_grpc.EchoServicer):
    """A handler trying to set rpcsec's own trailer (or a gRPC one) itself."""

    def __init__(self) -> None:
        self.refused: list[str] = []

    def Say(self, request: Any, context: Any) -> Any:
        for key in (STATUS_KEY, "grpc-status", "rpcsec-reason"):
            try:
                context.set_trailing_metadata(((key, b"x" if key.endswith("-bin") else "x"),))
            except ValueError:
                self.refused.append(key)
        return echo_pb2.EchoResponse(text="ok")


def test_a_handler_cannot_set_rpcsecs_own_trailers(x509_setup, serve) -> None:
    setup = x509_setup
    impostor = _Impostor()
    address = serve([SecurityInterceptor(setup.server())], [impostor])
    with secure_channel(address, setup.client(), **setup.channel_options()) as channel:
        _, call = echo_pb2_grpc.EchoStub(channel).Say.with_call(echo_pb2.EchoRequest(text="x"))
    assert impostor.refused == [STATUS_KEY, "grpc-status", "rpcsec-reason"]
    assert call_status(call).verified and call.trailing_metadata() == ()
