"""Application metadata under a man in the middle (issue 10 item 5, request direction).

The attacker sits on the raw channel under a secure channel (``helpers.wiretap`` for sync, a
``grpc.aio`` client interceptor for aio) and rewrites the request metadata the client
application set (``x-tenant=evil-corp``), injects entries (``x-admin=true``), or plays with
rpcsec's own declaration. Before this change every such call reached the handler with the
forged entries in ``context.invocation_metadata()``. Now a rewritten entry refuses the call
(``message-altered``, handler never runs) and an injected one is kept apart, in
``rpcsec.grpc.unverified_metadata(context)``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import echo_pb2
import echo_pb2_grpc
import grpc
import grpc.aio
import pytest
from helpers.grpc_setup import SERVER_STYLES
from helpers.wiretap import Wiretap
from hypothesis import given
from hypothesis import strategies as st

from rpcsec.grpc import METADATA_KEY, reason_of, secure_channel, unverified_metadata
from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.grpc._metadata import client_metadata, declared_keys, encode
from rpcsec.grpc._recovery import LOST_STATUS
from rpcsec.grpc._server import SecurityInterceptor
from rpcsec.sspi import InvalidTokenError

APP = (("x-tenant", "acme"), ("x-trace-bin", b"\x00\x01\xff"))
KINDS = ["unary_unary", "unary_stream", "stream_unary", "stream_stream"]


@pytest.fixture(params=SERVER_STYLES)
def server_style(request: pytest.FixtureRequest) -> str:
    """Every test here runs against a SecurityInterceptor and against handlers protected
    when registered (``secure_server``'s way)."""
    return request.param


class Seen:
    """What each handler saw: (verified, unverified) metadata per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = []
        self._lock = threading.Lock()

    def record(self, context: Any) -> str:
        verified = tuple((k, v) for k, v in context.invocation_metadata())
        unverified = tuple((k, v) for k, v in unverified_metadata(context))
        with self._lock:
            self.calls.append((verified, unverified))
        return dict(verified).get("x-tenant", "")


class MetadataEcho(echo_pb2_grpc.EchoServicer):
    """Answers with the verified tenant; records what it saw."""

    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def Say(self, request: Any, context: Any) -> Any:
        return echo_pb2.EchoResponse(text=self.seen.record(context))

    def Repeat(self, request: Any, context: Any) -> Iterator[Any]:
        yield echo_pb2.EchoResponse(text=self.seen.record(context))

    def Collect(self, request_iterator: Any, context: Any) -> Any:
        list(request_iterator)
        return echo_pb2.EchoResponse(text=self.seen.record(context))

    def Chat(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        list(request_iterator)
        yield echo_pb2.EchoResponse(text=self.seen.record(context))


class AsyncMetadataEcho(echo_pb2_grpc.EchoServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def Say(self, request: Any, context: Any) -> Any:
        return echo_pb2.EchoResponse(text=self.seen.record(context))

    async def Repeat(self, request: Any, context: Any) -> Any:
        yield echo_pb2.EchoResponse(text=self.seen.record(context))

    async def Collect(self, request_iterator: Any, context: Any) -> Any:
        async for _ in request_iterator:
            pass
        return echo_pb2.EchoResponse(text=self.seen.record(context))

    async def Chat(self, request_iterator: Any, context: Any) -> Any:
        async for _ in request_iterator:
            pass
        yield echo_pb2.EchoResponse(text=self.seen.record(context))


def _request() -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(text="hello")


def _call(stub: Any, kind: str, metadata: Any) -> str:
    """One call of ``kind``; returns the tenant the handler saw."""
    if kind == "unary_unary":
        return stub.Say(_request(), metadata=metadata).text
    if kind == "unary_stream":
        (text,) = [r.text for r in stub.Repeat(_request(), metadata=metadata)]
        return text
    if kind == "stream_unary":
        return stub.Collect(iter([_request(), _request()]), metadata=metadata).text
    (text,) = [r.text for r in stub.Chat(iter([_request()]), metadata=metadata)]
    return text


def _is_app(method: str | bytes) -> bool:
    name = method.decode() if isinstance(method, bytes) else method
    return "SecurityHandshake" not in name


def rewrite_tenant(method: str, metadata: tuple) -> tuple:
    if not _is_app(method):
        return metadata
    return tuple((k, "evil-corp" if k == "x-tenant" else v) for k, v in metadata)


def inject_admin(method: str, metadata: tuple) -> tuple:
    if not _is_app(method):
        return metadata
    return (*metadata, ("x-admin", "true"))


@pytest.fixture
def tapped(package_setup, serve):
    """(seen, wiretap, stub over a secure channel through the tap)."""
    setup = package_setup
    seen = Seen()
    address = serve([SecurityInterceptor(setup.server())], [MetadataEcho(seen)])
    tap = Wiretap()
    raw = grpc.intercept_channel(grpc.insecure_channel(address), tap)
    channel = secure_channel(raw, setup.client(), **setup.channel_options())
    yield seen, tap, echo_pb2_grpc.EchoStub(channel)
    channel.close()


@pytest.mark.parametrize("kind", KINDS)
def test_handler_sees_the_clients_metadata_verified(tapped, kind) -> None:
    seen, tap, stub = tapped
    assert _call(stub, kind, APP) == "acme"
    verified, unverified = seen.calls[-1]
    assert sorted(verified) == sorted(APP)
    assert not any(k.startswith("rpcsec-") for k, _ in verified + unverified)
    # the declaration travels on the wire, naming exactly the application's keys
    assert tap.app_calls()[-1].value(METADATA_KEY) == b"x-tenant,x-trace-bin"


@pytest.mark.parametrize("kind", KINDS)
def test_injected_metadata_is_kept_apart(tapped, kind) -> None:
    seen, tap, stub = tapped
    tap.metadata = inject_admin
    assert _call(stub, kind, APP) == "acme"
    verified, unverified = seen.calls[-1]
    assert ("x-admin", "true") not in verified
    assert ("x-admin", "true") in unverified


@pytest.mark.parametrize("kind", KINDS)
def test_a_call_without_metadata_gives_the_handler_none(tapped, kind) -> None:
    seen, tap, stub = tapped
    tap.metadata = inject_admin
    assert _call(stub, kind, None) == ""
    verified, unverified = seen.calls[-1]
    assert verified == ()
    assert ("x-admin", "true") in unverified
    assert METADATA_KEY not in dict(tap.app_calls()[-1].metadata)


def _refused_reason(stub: Any, kind: str, metadata: Any) -> str | None:
    with pytest.raises(grpc.RpcError) as info:
        _call(stub, kind, metadata)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED, info.value
    return reason_of(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_rewritten_metadata_is_refused_before_the_handler(tapped, kind) -> None:
    seen, tap, stub = tapped
    tap.metadata = rewrite_tenant
    assert _refused_reason(stub, kind, APP) == "message-altered"
    assert seen.calls == []


ATTACKS = {
    # a second value under a declared key
    "added-value": lambda md: (*md, ("x-tenant", "evil-corp")),
    # a declared entry removed
    "dropped-entry": lambda md: tuple(item for item in md if item[0] != "x-trace-bin"),
    # the declaration removed: the entries would look unverified, the signature says otherwise
    "dropped-declaration": lambda md: tuple(item for item in md if item[0] != METADATA_KEY),
    # the declaration widened to cover an injected entry
    "widened-declaration": lambda md: (
        *(item for item in md if item[0] != METADATA_KEY),
        (METADATA_KEY, b"x-admin,x-tenant,x-trace-bin"),
        ("x-admin", "true"),
    ),
    # a second declaration
    "two-declarations": lambda md: (*md, (METADATA_KEY, b"x-admin"), ("x-admin", "true")),
    # a binary value changed by one bit
    "flipped-binary": lambda md: tuple(
        (k, b"\x00\x01\xfe" if k == "x-trace-bin" else v) for k, v in md
    ),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("kind", ["unary_unary", "stream_stream"])
def test_every_alteration_of_signed_metadata_is_refused(tapped, attack, kind) -> None:
    seen, tap, stub = tapped
    change = ATTACKS[attack]
    tap.metadata = lambda method, md: change(md) if _is_app(method) else md
    reason = _refused_reason(stub, kind, APP)
    assert reason in ("message-altered", "invalid-token"), reason
    assert seen.calls == []


def test_a_declaration_injected_into_a_call_without_metadata_is_refused(tapped) -> None:
    seen, tap, stub = tapped
    tap.metadata = lambda method, md: (
        (*md, (METADATA_KEY, b"x-admin"), ("x-admin", "true")) if _is_app(method) else md
    )
    assert _refused_reason(stub, "unary_unary", None) == "message-altered"
    assert seen.calls == []


def test_the_order_a_proxy_forwards_entries_in_does_not_matter(tapped) -> None:
    seen, tap, stub = tapped
    tap.metadata = lambda method, md: tuple(reversed(md)) if _is_app(method) else md
    metadata = (("x-tenant", "acme"), ("x-tag", "a"), ("x-tag", "b"))
    assert _call(stub, "unary_unary", metadata) == "acme"
    verified, _ = seen.calls[-1]
    assert sorted(verified) == sorted(metadata)


@pytest.mark.parametrize(
    "metadata",
    [
        (("rpcsec-context-bin", b"x"),),
        (("grpc-timeout", "1S"),),
        (("X-Tenant", "acme"),),
        (("x tenant", "acme"),),
    ],
)
def test_reserved_or_invalid_keys_are_the_callers_error(tapped, metadata) -> None:
    seen, _, stub = tapped
    with pytest.raises(ValueError):
        _call(stub, "unary_unary", metadata)
    assert seen.calls == []


def test_unverified_metadata_refuses_a_foreign_context() -> None:
    with pytest.raises(TypeError):
        unverified_metadata(object())


# -- aio ------------------------------------------------------------------------------------


class _AioTamper:
    """Rewrites the metadata of application calls on an aio raw channel (grpc.aio files an
    interceptor under its first matching kind only, hence one object per kind)."""

    def __init__(self) -> None:
        self.change: Any = None

    def details(self, details: Any) -> Any:
        if self.change is None or not _is_app(details.method):
            return details
        metadata = grpc.aio.Metadata(*self.change(details.method, tuple(details.metadata or ())))
        return details._replace(metadata=metadata)

    def interceptors(self) -> list[Any]:
        return [_TamperUU(self), _TamperUS(self), _TamperSU(self), _TamperSS(self)]


class _Tamper:
    def __init__(self, tamper: _AioTamper) -> None:
        self.tamper = tamper


class _TamperUU(_Tamper, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self.tamper.details(client_call_details), request)


class _TamperUS(_Tamper, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self.tamper.details(client_call_details), request)


class _TamperSU(_Tamper, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self.tamper.details(client_call_details), request_iterator)


class _TamperSS(_Tamper, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self.tamper.details(client_call_details), request_iterator)


async def _requests():
    yield _request()


async def _aio_call(stub: Any, kind: str, metadata: Any) -> str:
    if kind == "unary_unary":
        return (await stub.Say(_request(), metadata=metadata)).text
    if kind == "unary_stream":
        (text,) = [r.text async for r in stub.Repeat(_request(), metadata=metadata)]
        return text
    if kind == "stream_unary":
        return (await stub.Collect(_requests(), metadata=metadata)).text
    (text,) = [r.text async for r in stub.Chat(_requests(), metadata=metadata)]
    return text


@pytest.mark.parametrize("handlers", ["async", "sync"])
@pytest.mark.parametrize("kind", KINDS)
async def test_aio_handlers_see_verified_metadata_and_rewrites_are_refused(
    x509_setup, aio_serve, kind, handlers
) -> None:
    setup = x509_setup
    seen = Seen()
    servicer = AsyncMetadataEcho(seen) if handlers == "async" else MetadataEcho(seen)
    address = await aio_serve([rpcsec_aio.SecurityInterceptor(setup.server())], [servicer])
    tamper = _AioTamper()
    raw = grpc.aio.insecure_channel(address, interceptors=tamper.interceptors())
    async with rpcsec_aio.secure_channel(raw, setup.client(), **setup.channel_options()) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        tamper.change = inject_admin
        assert await _aio_call(stub, kind, APP) == "acme"
        verified, unverified = seen.calls[-1]
        assert sorted(verified) == sorted(APP)
        assert ("x-admin", "true") in unverified
        tamper.change = rewrite_tenant
        with pytest.raises(grpc.RpcError) as info:
            await _aio_call(stub, kind, APP)
        outcome = (info.value.code(), reason_of(info.value))
        if kind.startswith("stream"):
            # grpc.aio may lose the server's status when a request write races the refusal
            # (``aio._client._final_status``); the call is refused either way.
            assert outcome in (
                (grpc.StatusCode.UNAUTHENTICATED, "message-altered"),
                (grpc.StatusCode.UNAVAILABLE, LOST_STATUS),
            ), outcome
        else:
            assert outcome == (grpc.StatusCode.UNAUTHENTICATED, "message-altered")
        assert len(seen.calls) == 1


# -- the encoding (sans-IO) -----------------------------------------------------------------

_keys = st.from_regex(r"[0-9a-z_.\-]{1,12}", fullmatch=True).filter(
    lambda k: not k.startswith(("rpcsec-", "grpc-"))
)
_pairs = st.lists(st.tuples(_keys, st.binary(max_size=16)), min_size=1, max_size=6)


@given(_pairs, st.randoms())
def test_the_canonical_encoding_ignores_order(pairs, random) -> None:
    shuffled = list(pairs)
    random.shuffle(shuffled)
    raw = [(k.encode(), v) for k, v in pairs]
    assert encode(raw) == encode([(k.encode(), v) for k, v in shuffled])


@given(_pairs, _pairs)
def test_the_canonical_encoding_is_injective(a, b) -> None:
    if sorted(a) != sorted(b):
        assert encode([(k.encode(), v) for k, v in a]) != encode([(k.encode(), v) for k, v in b])


@given(_pairs)
def test_a_clients_declaration_parses_back_to_its_keys(pairs) -> None:
    metadata = [(k + "-bin", v) for k, v in pairs]
    (entry,), _ = client_metadata(metadata)
    assert entry[0] == METADATA_KEY
    assert declared_keys(entry[1]) == {k for k, _ in metadata}


@given(st.one_of(st.binary(max_size=300), st.text(max_size=20), st.none(), st.integers()))
def test_the_declaration_parser_fails_only_typed(raw) -> None:
    try:
        keys = declared_keys(raw)
    except InvalidTokenError:
        return
    assert keys and all(not k.startswith(("rpcsec-", "grpc-", ":")) for k in keys)
