"""The common outcome folded into the response token (``_wire.OUTCOME_OK``).

A unary handler that ends OK with empty details and no metadata sends no
``rpcsec-status-bin``: its response token is sealed over the message AAD plus ``OUTCOME_OK``.
Otherwise the trailer is sent and the token sealed without the suffix. So whoever strips the
trailer of a call that set metadata, or adds one to a folded response, breaks the response
(``MessageAlteredError``), and an OK turned into an error is only ever an unverified error.
Real servers on loopback; the attacker is a client interceptor on the raw channel (it sees
every byte and trailer the network does) and a real Envoy.
"""

from __future__ import annotations

import base64
from typing import Any

import echo_pb2
import echo_pb2_grpc
import grpc
import grpc.aio
import pytest
from helpers import proxies
from helpers.grpc_setup import SERVER_STYLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.grpc import (
    STATUS_KEY,
    SecurityInterceptor,
    call_status,
    reason_of,
    secure_channel,
)
from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.grpc._wire import is_ticket
from rpcsec.sspi import MessageAlteredError, SecurityError

TRAILING = (("x-result", "done"),)
FORGED_STATUS = base64.b64encode(b"\x00\x00\x00\x00" + b"\x4d" + b"\x00" * 24).decode()


@pytest.fixture(params=SERVER_STYLES)
def server_style(request: pytest.FixtureRequest) -> str:
    return request.param


class Outcomes(echo_pb2_grpc.EchoServicer):
    """``quiet``: sets nothing (folded); ``meta``: trailing metadata; ``details``: OK with
    details (gRPC never sends them: folded); ``code``: OK set explicitly (folded)."""

    def __init__(self) -> None:
        self.calls = 0

    def _answer(self, text: str, context: Any) -> Any:
        self.calls += 1
        if text.startswith("meta"):
            context.set_trailing_metadata(TRAILING)
        if text.endswith("details"):
            context.set_details("all fine")
        if text == "details":
            context.set_details("all fine")
        elif text == "code":
            context.set_code(grpc.StatusCode.OK)
        return echo_pb2.EchoResponse(text=text)

    def Say(self, request: Any, context: Any) -> Any:
        return self._answer(request.text, context)

    def Collect(self, request_iterator: Any, context: Any) -> Any:
        (request,) = list(request_iterator)
        return self._answer(request.text, context)

    def Repeat(self, request: Any, context: Any) -> Any:
        yield self._answer(request.text, context)

    def Chat(self, request_iterator: Any, context: Any) -> Any:
        (request,) = list(request_iterator)
        yield self._answer(request.text, context)


class _Doctored(grpc.Call, grpc.Future):
    """The real outcome of a successful call with its trailers rewritten by ``edit``."""

    def __init__(self, real: Any, edit: Any) -> None:
        self._real, self._edit = real, edit

    def result(self, timeout: float | None = None) -> Any:
        return self._real.result(timeout)

    def trailing_metadata(self) -> Any:
        return self._edit(tuple(self._real.trailing_metadata() or ()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def initial_metadata(self) -> Any:
        return self._real.initial_metadata()

    def code(self) -> Any:
        return self._real.code()

    def details(self) -> Any:
        return self._real.details()

    def exception(self, timeout: float | None = None) -> Any:
        return self._real.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_done_callback(self, fn: Any) -> None:
        self._real.add_done_callback(lambda _: fn(self))

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


class _DoctoredStream:
    """A response stream whose trailers ``edit`` rewrites (recorded once it ended)."""

    def __init__(self, real: Any, tap: Any) -> None:
        self._real, self._tap = real, tap

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._real)
        except StopIteration:
            self._tap.seen.append(tuple(self._real.trailing_metadata() or ()))
            raise

    def trailing_metadata(self) -> Any:
        trailing = tuple(self._real.trailing_metadata() or ())
        edit = self._tap.edit
        return trailing if edit is None else edit(trailing)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _TrailerTap(
    grpc.UnaryUnaryClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Records each application call's trailers; rewrites them with ``edit`` if set."""

    def __init__(self) -> None:
        self.edit: Any = None
        self.seen: list[tuple[Any, ...]] = []

    def _tap(self, outcome: Any, method: str) -> Any:
        if "SecurityHandshake" in method or outcome.exception() is not None:
            return outcome
        self.seen.append(tuple(outcome.trailing_metadata() or ()))
        return outcome if self.edit is None else _Doctored(outcome, self.edit)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return self._tap(continuation(client_call_details, request), client_call_details.method)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return self._tap(
            continuation(client_call_details, request_iterator), client_call_details.method
        )

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return _DoctoredStream(continuation(client_call_details, request), self)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return _DoctoredStream(continuation(client_call_details, request_iterator), self)


@pytest.fixture
def tapped(package_setup, serve):
    servicer = Outcomes()
    interceptor = SecurityInterceptor(package_setup.server())
    address = serve([interceptor], [servicer])
    tap = _TrailerTap()
    raw = grpc.intercept_channel(grpc.insecure_channel(address), tap)
    channel = secure_channel(raw, package_setup.client(), **package_setup.channel_options())
    yield echo_pb2_grpc.EchoStub(channel), tap, servicer, interceptor
    channel.close()


def _call(stub: Any, kind: str, text: str) -> Any:
    request = echo_pb2.EchoRequest(text=text)
    if kind == "unary_unary":
        response, call = stub.Say.with_call(request, timeout=10)
    elif kind == "stream_unary":
        response, call = stub.Collect.with_call(iter([request]), timeout=10)
    else:
        call = (
            stub.Repeat(request, timeout=10)
            if kind == "unary_stream"
            else stub.Chat(iter([request]), timeout=10)
        )
        (response,) = list(call)  # to the end: the end marker and the outcome checked
    assert response.text == text
    return call


KINDS = ["unary_unary", "stream_unary", "unary_stream", "stream_stream"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("text", ["quiet", "code", "details"])
def test_an_ok_outcome_rides_in_the_response_and_no_trailer_is_sent(tapped, kind, text) -> None:
    stub, tap, _, _ = tapped
    status = call_status(_call(stub, kind, text))
    assert status.verified and status.code is grpc.StatusCode.OK and status.details == ""
    assert all(key != STATUS_KEY for key, _ in tap.seen[-1])  # nothing signed apart


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("text", ["meta", "meta+details"])
def test_anything_else_is_signed_into_the_trailer(tapped, kind, text) -> None:
    # meta+details: an OK call's details never reach the client (gRPC drops them), so the
    # server signs none -- it used to sign them, and the client took its own call as altered.
    stub, tap, _, _ = tapped
    call = _call(stub, kind, text)
    assert call_status(call).verified and call_status(call).details == ""
    assert any(key == STATUS_KEY for key, _ in tap.seen[-1])
    assert tuple(call.trailing_metadata()) == TRAILING


@pytest.mark.parametrize("kind", KINDS)
def test_stripping_the_trailer_of_a_call_that_set_metadata_breaks_the_response(
    tapped, kind
) -> None:
    stub, tap, servicer, _ = tapped
    tap.edit = lambda trailing: tuple(item for item in trailing if item[0] != STATUS_KEY)
    with pytest.raises(MessageAlteredError) as info:
        _call(stub, kind, "meta")
    assert isinstance(info.value, grpc.RpcError)
    assert reason_of(info.value) == "message-altered"
    assert servicer.calls == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_trailer_added_to_a_folded_response_breaks_it(tapped, kind) -> None:
    stub, tap, _, _ = tapped
    # Even the server's own signed trailer of another call: the folded token has the suffix.
    _call(stub, kind, "meta")
    genuine = next(value for key, value in tap.seen[-1] if key == STATUS_KEY)
    for forged in (genuine, base64.b64decode(FORGED_STATUS)):
        tap.edit = lambda trailing, forged=forged: (*trailing, (STATUS_KEY, forged))
        with pytest.raises(MessageAlteredError):
            _call(stub, kind, "quiet")


def test_details_added_to_a_folded_response_are_an_alteration(tapped) -> None:
    stub, tap, _, _ = tapped

    class _WithDetails(_Doctored):
        def details(self) -> Any:
            return "forged"

    class _Tap(_TrailerTap):
        def _tap(self, outcome: Any, method: str) -> Any:
            if "SecurityHandshake" in method:
                return outcome
            return _WithDetails(outcome, lambda trailing: trailing)

    tap.__class__ = _Tap
    with pytest.raises(MessageAlteredError):
        _call(stub, "unary_unary", "quiet")


# -- the plain unary call (``__call__``): it hands out the response and nothing else ------------


def _say(stub: Any, text: str) -> Any:
    return stub.Say(echo_pb2.EchoRequest(text=text), timeout=10)


def _collect(stub: Any, text: str) -> Any:
    return stub.Collect(iter([echo_pb2.EchoRequest(text=text)]), timeout=10)


@pytest.mark.parametrize("added", ["genuine", "forged", "x-admin"])
def test_a_trailer_added_to_a_folded_response_never_reaches_a_plain_call(tapped, added) -> None:
    # The response opens over OUTCOME_OK: the server sealed "OK, no details, no metadata" for
    # this call, and a plain call shows nothing else -- so it returns the verified payload.
    # Every way that exposes the call still refuses the same edit (``with_call``, ``future``).
    stub, tap, servicer, _ = tapped
    _call(stub, "unary_unary", "meta")
    genuine = next(value for key, value in tap.seen[-1] if key == STATUS_KEY)
    trailer = {
        "genuine": (STATUS_KEY, genuine),
        "forged": (STATUS_KEY, base64.b64decode(FORGED_STATUS)),
        "x-admin": ("x-admin", "true"),
    }[added]
    tap.edit = lambda trailing: (*trailing, trailer)
    before = servicer.calls
    assert _say(stub, "quiet").text == "quiet"
    assert _collect(stub, "quiet").text == "quiet"  # a request stream's plain call alike
    assert servicer.calls == before + 2
    if added == "x-admin":  # not a status trailer: reported apart, as ever
        status = call_status(_call(stub, "unary_unary", "quiet"))
        assert status.verified and trailer in status.unverified_trailing_metadata
        assert trailer not in status.trailing_metadata
        return
    with pytest.raises(MessageAlteredError):
        stub.Say.with_call(echo_pb2.EchoRequest(text="quiet"), timeout=10)
    with pytest.raises(MessageAlteredError):
        stub.Say.future(echo_pb2.EchoRequest(text="quiet"), timeout=10).result()
    with pytest.raises(MessageAlteredError):
        stub.Collect.with_call(iter([echo_pb2.EchoRequest(text="quiet")]), timeout=10)


def test_details_added_to_a_folded_response_never_reach_a_plain_call(tapped) -> None:
    stub, tap, _, _ = tapped

    class _WithDetails(_Doctored):
        def details(self) -> Any:
            return "forged"

    class _Tap(_TrailerTap):
        def _tap(self, outcome: Any, method: str) -> Any:
            if "SecurityHandshake" in method:
                return outcome
            return _WithDetails(outcome, lambda trailing: trailing)

    tap.__class__ = _Tap
    assert _say(stub, "quiet").text == "quiet"
    with pytest.raises(MessageAlteredError):
        _call(stub, "unary_unary", "quiet")


def test_a_plain_call_checks_the_trailer_of_a_response_sealed_without_the_suffix(tapped) -> None:
    # A handler that set metadata: the response does not open over OUTCOME_OK, so the plain
    # call takes the full check -- genuine: verified; its status trailer stripped: refused.
    stub, tap, _, _ = tapped
    assert _say(stub, "meta").text == "meta"
    assert _say(stub, "meta+details").text == "meta+details"
    assert _collect(stub, "meta").text == "meta"
    tap.edit = lambda trailing: tuple(item for item in trailing if item[0] != STATUS_KEY)
    with pytest.raises(MessageAlteredError) as info:
        _say(stub, "meta")
    assert isinstance(info.value, grpc.RpcError)
    assert reason_of(info.value) == "message-altered"
    with pytest.raises(MessageAlteredError):
        _collect(stub, "meta")
    # ...and the trailer of another call (of the same method, genuinely signed) in its place
    tap.edit = None
    _call(stub, "unary_unary", "meta")
    other = next(value for key, value in tap.seen[-1] if key == STATUS_KEY)
    tap.edit = lambda trailing: (
        *(item for item in trailing if item[0] != STATUS_KEY),
        (STATUS_KEY, other),
    )
    with pytest.raises(MessageAlteredError):
        _say(stub, "meta")
    tap.edit = None
    assert _say(stub, "quiet").text == "quiet"  # the channel is unharmed


def test_a_plain_call_checks_the_same_on_every_path(package_setup, serve) -> None:
    # The first call on a channel (it binds), a call with application metadata (its opening
    # AAD grows) and the calls after it take different paths; what a plain call checks is the
    # same on each: a folded response's added trailer never reaches it, a stripped one does.
    servicer = Outcomes()
    address = serve([SecurityInterceptor(package_setup.server())], [servicer])
    tap = _TrailerTap()
    raw = grpc.intercept_channel(grpc.insecure_channel(address), tap)
    forged = (STATUS_KEY, base64.b64decode(FORGED_STATUS))
    tap.edit = lambda trailing: (*trailing, forged)
    metadata = (("x-tenant", "a"),)
    with secure_channel(raw, package_setup.client(), **package_setup.channel_options()) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        assert _say(stub, "quiet").text == "quiet"  # binds first
        assert stub.Say(echo_pb2.EchoRequest(text="quiet"), metadata=metadata).text == "quiet"
        assert _say(stub, "quiet").text == "quiet"
        with pytest.raises(MessageAlteredError):
            stub.Say.with_call(echo_pb2.EchoRequest(text="quiet"), metadata=metadata)
        tap.edit = lambda trailing: tuple(item for item in trailing if item[0] != STATUS_KEY)
        with pytest.raises(MessageAlteredError):
            stub.Say(echo_pb2.EchoRequest(text="meta"), metadata=metadata)
        with pytest.raises(MessageAlteredError):
            _say(stub, "meta")
    assert servicer.calls == 6


class _Rewriting(_Doctored):
    def __init__(self, real: Any, edit: Any, details: str | None) -> None:
        super().__init__(real, edit)
        self._details = details

    def details(self) -> Any:
        return self._real.details() if self._details is None else self._details


class _RewritingTap(_TrailerTap):
    """``_TrailerTap`` that may also replace a unary call's details (``details``)."""

    details: str | None = None

    def _tap(self, outcome: Any, method: str) -> Any:
        if "SecurityHandshake" in method or outcome.exception() is not None:
            return outcome
        self.seen.append(tuple(outcome.trailing_metadata() or ()))
        return _Rewriting(outcome, self.edit or (lambda trailing: trailing), self.details)


def _outcome(call: Any) -> tuple[str, ...]:
    """("ok", value), or ("refused", reason) for a typed refusal (a ``SecurityError`` that is
    also a ``grpc.RpcError``): anything else fails the test."""
    try:
        return ("ok", call())
    except SecurityError as exc:
        assert isinstance(exc, grpc.RpcError)
        return ("refused", reason_of(exc))


_EDITS = st.lists(st.sampled_from(["strip", "genuine", "forged", "twice", "x-admin"]), max_size=3)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.sampled_from(["quiet", "code", "details", "meta", "meta+details"]),
    edits=_EDITS,
    details=st.sampled_from([None, "", "forged"]),
)
def test_a_plain_call_returns_the_servers_payload_or_refuses_and_agrees_with_with_call(
    tapped, text, edits, details
) -> None:
    # Whatever a man in the middle does to a call's trailers and details: the plain call
    # returns exactly the server's payload or refuses with a typed error; whenever the call
    # that exposes everything (``with_call``) accepts, the plain call accepts the same; a
    # response not folded is judged by both alike; with nothing changed both accept.
    stub, tap, _, _ = tapped
    tap.__class__ = _RewritingTap
    tap.edit, tap.details = None, None
    _call(stub, "unary_unary", "meta")
    genuine = next(value for key, value in tap.seen[-1] if key == STATUS_KEY)

    def edit(trailing: tuple[Any, ...]) -> tuple[Any, ...]:
        out = list(trailing)
        for step in edits:
            if step == "strip":
                out = [item for item in out if item[0] != STATUS_KEY]
            elif step == "genuine":
                out.append((STATUS_KEY, genuine))
            elif step == "forged":
                out.append((STATUS_KEY, base64.b64decode(FORGED_STATUS)))
            elif step == "twice":
                out.extend([item for item in out if item[0] == STATUS_KEY])
            else:
                out.append(("x-admin", "true"))
        return tuple(out)

    tap.edit, tap.details = edit, details
    request = echo_pb2.EchoRequest(text=text)
    plain = _outcome(lambda: stub.Say(request, timeout=10).text)
    exposed = _outcome(lambda: stub.Say.with_call(request, timeout=10)[0].text)
    assert plain == ("ok", text) or plain[0] == "refused"
    if exposed[0] == "ok":
        assert plain == exposed == ("ok", text)
    if text.startswith("meta"):  # not folded: the plain call checks the whole outcome too
        assert plain[0] == exposed[0]
    if not edits and not details:
        assert plain == exposed == ("ok", text)


def test_a_process_local_context_folds_through_call_protection(package_setup, serve) -> None:
    interceptor = SecurityInterceptor(package_setup.server())
    interceptor.security.tickets = None  # contexts stay in this process (random handles)
    address = serve([interceptor], [Outcomes()])
    tap = _TrailerTap()
    raw = grpc.intercept_channel(grpc.insecure_channel(address), tap)
    with secure_channel(raw, package_setup.client(), **package_setup.channel_options()) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        assert call_status(_call(stub, "unary_unary", "quiet")).verified
        assert not is_ticket(ch._session.current.handle)
        assert all(key != STATUS_KEY for key, _ in tap.seen[-1])
        assert call_status(_call(stub, "unary_unary", "meta")).verified
        tap.edit = lambda trailing: tuple(item for item in trailing if item[0] != STATUS_KEY)
        with pytest.raises(MessageAlteredError):
            _call(stub, "unary_unary", "meta")
        tap.edit = lambda trailing: (*trailing, (STATUS_KEY, base64.b64decode(FORGED_STATUS)))
        with pytest.raises(MessageAlteredError):
            _call(stub, "unary_unary", "quiet")
        # the plain call: the prepared open of a process-local context (the context's own)
        assert _say(stub, "quiet").text == "quiet"
        tap.edit = lambda trailing: tuple(item for item in trailing if item[0] != STATUS_KEY)
        with pytest.raises(MessageAlteredError):
            _say(stub, "meta")
        tap.edit = None
        assert _say(stub, "meta").text == "meta"


# -- a real Envoy rewriting a folded call's outcome after the handler ran ---------------------


def _envoy(address: str, tmp_path: Any, trailers: dict[str, str]) -> Any:
    proxies.require_proxy("envoy")
    forge = proxies.Forgery(trailers, path_prefix="/rpcsec.test.v1.Echo/", drop_body=False)
    return proxies.envoy_grpc_proxy([address], tmp_path, forge=forge)


def test_envoy_turning_a_folded_ok_into_an_error_is_unverified(x509_setup, serve, tmp_path):
    address = serve([SecurityInterceptor(x509_setup.server())], [Outcomes()])
    with _envoy(address, tmp_path, {"grpc-status": "5", "grpc-message": "forged"}) as proxy:
        with secure_channel(
            proxy.address, x509_setup.client(), **x509_setup.channel_options()
        ) as ch:
            with pytest.raises(grpc.RpcError) as info:
                echo_pb2_grpc.EchoStub(ch).Say(echo_pb2.EchoRequest(text="quiet"), timeout=10)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert not call_status(info.value).verified  # never the server's word


async def test_envoy_adding_a_trailer_to_a_folded_response_aio(x509_setup, serve, tmp_path):
    address = serve([SecurityInterceptor(x509_setup.server())], [Outcomes()])
    with _envoy(address, tmp_path, {STATUS_KEY: FORGED_STATUS}) as proxy:
        channel = rpcsec_aio.secure_channel(
            proxy.address, x509_setup.client(), **x509_setup.channel_options()
        )
        try:
            stub = echo_pb2_grpc.EchoStub(channel)
            with pytest.raises(MessageAlteredError) as info:
                await stub.Say(echo_pb2.EchoRequest(text="quiet"), timeout=10)
            assert isinstance(info.value, grpc.RpcError)
            # A response stream: its end marker carries the folded outcome.
            got = []
            with pytest.raises(MessageAlteredError):
                async for response in stub.Repeat(echo_pb2.EchoRequest(text="quiet"), timeout=10):
                    got.append(response.text)
            assert got == ["quiet"]  # the verified message came out, the end never did
        finally:
            await channel.close()
