"""``rpcsec.grpc.aio.secure_channel()``: the asyncio twin of ``rpcsec.grpc.secure_channel``.

Same wire format and rules as the sync channel (``rpcsec.grpc._client``). A call made before the
channel is bound starts the handshake in the background and returns its call object at once,
as grpc.aio does; awaiting it (or reading, writing, asking for its code) waits for the bind.
Concurrent first calls share one handshake.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator, Iterable, Sequence
from typing import Any, TypeAlias

import grpc
import grpc.aio

from rpcsec.sspi import (
    BusyError,
    ClientContext,
    ContextExpiredError,
    ContextReq,
    Credentials,
    ImpersonationLevel,
    InvalidTokenError,
    ProtectionLevel,
    SecurityError,
)

from .._binding import ChannelSecurity, ClientBound
from .._call_status import CallStatus, open_stream_outcome, open_unary_outcome
from .._calls import FIRST_RESPONSE, Inbound, MethodKeys, Outbound, OutcomeInbound
from .._client import DEFAULT_HANDSHAKE_TIMEOUT, _parse_response
from .._client_errors import as_rpc_error, typed_expiry
from .._cloaking import CONCURRENT_BINDS, DEFAULT_MAX_CALLERS, CallerSessions, cloaking_mode
from .._recovery import LOST_STATUS
from .._session import CloakedSessionCore, SessionCore
from .._status import REASON_KEY, error_from_rpc
from .._verified_call import checked_error
from .._wire import NEGOTIATE_METHOD, RELEASE_METHOD, REQUEST, RESPONSE, SEQ_SLICE

__all__ = ["SecureChannel", "secure_channel"]

_LOG = logging.getLogger("rpcsec.grpc")
EOF = grpc.aio.EOF

Metadata = Sequence[tuple[str, str | bytes]]


def _identity(value: Any) -> Any:
    return value


def _merge(ours: tuple[tuple[str, bytes], ...], theirs: Any) -> Any:
    return ours if not theirs else ours + tuple(theirs)


def _retrieve(task: asyncio.Future[Any]) -> None:
    # A bind nobody awaited (the call was dropped) must not log "exception never retrieved".
    if not task.cancelled():
        task.exception()


class _Session:
    """One aio channel's binding: the asyncio I/O shell over ``SessionCore``."""

    def __init__(
        self,
        raw: grpc.aio.Channel,
        security: ChannelSecurity,
        handshake_timeout: float,
        gate: asyncio.Semaphore | None = None,
    ) -> None:
        self.raw = raw
        self.security = security
        self.core = SessionCore(security)
        self._timeout = handshake_timeout
        self._gate = gate  # shared by a cloaked channel's sessions: handshakes at once
        self._lock = asyncio.Lock()
        self._negotiate = raw.stream_stream(NEGOTIATE_METHOD)
        self._release = raw.unary_unary(RELEASE_METHOD)
        self._check_caller = security.owner is not None
        self.refused = self.core.refused
        self.invalidate = self.core.invalidate  # one event loop: no lock needed

    @property
    def current(self) -> ClientBound | None:
        return self.core.current

    def ready(self) -> ClientBound | None:
        """The binding if it can be used right now (the fast path, no await)."""
        if self._check_caller:
            self.security.check_caller()
        return self.core.usable()

    async def bound(self, stale: ClientBound | None = None) -> ClientBound:
        core = self.core
        bound = self.ready()
        if bound is not None and bound is not stale:
            return bound
        async with self._lock:  # concurrent first calls share one handshake
            bound = core.usable(stale)
            if bound is not None:
                return bound
            await asyncio.sleep(core.before_bind())
            gate = self._gate
            if gate is None:
                bound = await self._handshake_when_admitted()
            else:
                try:
                    await asyncio.wait_for(gate.acquire(), self._timeout)
                except TimeoutError:
                    raise BusyError("too many handshakes in progress on this channel") from None
                try:
                    bound = await self._handshake_when_admitted()
                finally:
                    gate.release()
            core.established(bound)
            return bound

    async def _handshake_when_admitted(self) -> ClientBound:
        """The handshake, tried again after ``busy`` within its deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        attempt = 0
        while True:
            try:
                return await self._handshake()
            except BusyError:
                delay = self.core.busy(attempt, deadline - loop.time())
                if delay is None:
                    raise
                attempt += 1
                await asyncio.sleep(delay)

    async def _handshake(self) -> ClientBound:
        negotiation = self.security.negotiation()
        first = negotiation.start().SerializeToString()
        call = self._negotiate(timeout=self._timeout)
        finished = False
        try:
            await call.write(first)
            while True:
                raw = await call.read()
                if raw is EOF:
                    raise InvalidTokenError("server ended the handshake before completing it")
                reply = negotiation.receive(_parse_response(raw))
                if reply is None:
                    finished = True
                    break
                await call.write(reply.SerializeToString())
            await call.done_writing()
        except grpc.RpcError as exc:
            refusal = error_from_rpc(exc)
            if refusal is not None:
                raise refusal from exc
            raise
        finally:
            if not finished:
                call.cancel()
        bound = self.security.established(negotiation)
        try:
            self.security.check_granted(bound.context)
        except SecurityError:
            await self._release_bound(bound)  # the server need not keep a context we refuse
            raise
        return bound

    async def release(self) -> None:
        async with self._lock:
            bound = self.core.close()
        if bound is not None:
            await self._release_bound(bound)

    async def _release_bound(self, bound: ClientBound) -> None:
        try:
            keys = bound.keys(RELEASE_METHOD)
            call_seq, metadata, token = bound.open_unary(keys, b"")
            response = await self._release(token, metadata=metadata, timeout=self._timeout)
            bound.protection.open(keys.prefix, call_seq, FIRST_RESPONSE, response, bound.encrypt)
        except (grpc.RpcError, SecurityError) as exc:
            _LOG.debug("releasing the server context failed: %s", exc)
        finally:
            bound.context.delete()


class _CloakedSession(CloakedSessionCore):
    """Dynamic cloaking's asyncio shell: the ``_Session`` interface over one session per
    identity (``_cloaking.CallerSessions``), chosen by the impersonation token current when a
    call is made (a task copies its creator's context), all on one grpc.aio channel."""

    def __init__(
        self,
        raw: grpc.aio.Channel,
        security: ChannelSecurity,
        handshake_timeout: float,
        max_callers: int,
    ) -> None:
        self.raw = raw
        self.security = security  # the template: protection, idempotent methods
        gate = self.gate = asyncio.Semaphore(CONCURRENT_BINDS)
        self.callers: CallerSessions[_Session] = CallerSessions(
            security,
            lambda caller: _Session(raw, caller, handshake_timeout, gate),
            max_callers=max_callers,
            clock=security.clock,
        )

    def ready(self) -> ClientBound | None:
        return self.callers.select().ready()

    async def bound(self, stale: ClientBound | None = None) -> ClientBound:
        return await self.callers.select().bound(stale)

    async def release(self) -> None:
        for session in self.callers.close():
            await session.release()


_AnySession: TypeAlias = _Session | _CloakedSession


class _Started:
    """One attempt of a call on one binding: the grpc.aio call and its message cursors."""

    __slots__ = ("bound", "call", "call_seq", "inbound", "keys", "outbound")

    def __init__(
        self,
        bound: ClientBound,
        keys: MethodKeys,
        call_seq: bytes,
        call: Any,
        inbound: Inbound | None,
        outbound: Outbound | None,
    ) -> None:
        self.bound = bound
        self.keys = keys
        self.call_seq = call_seq
        self.call = call
        self.inbound = inbound
        self.outbound = outbound


class _Call:
    """The part of ``grpc.aio.Call`` every kind shares; the grpc.aio call starts once bound."""

    def __init__(self, session: _AnySession, launch: Callable[[ClientBound], _Started]) -> None:
        self._session = session
        self._launch = launch
        self._started: _Started | None = None
        self._binding: asyncio.Task[ClientBound] | None = None
        self._callbacks: list[Callable[[Any], None]] = []
        self._cancelled = False
        self._status: CallStatus | None = None
        bound = session.ready()
        if bound is not None:
            try:
                self._start(bound)
                return
            except ContextExpiredError:
                pass  # expired between the check and the call header: bind again below
        self._binding = asyncio.ensure_future(session.bound())
        self._binding.add_done_callback(_retrieve)

    def _start(self, bound: ClientBound) -> _Started:
        started = self._launch(bound)
        self._started = started
        for callback in self._callbacks:
            started.call.add_done_callback(lambda _c, cb=callback: cb(self))
        return started

    async def _ready(self) -> _Started:
        started = self._started
        if started is not None:
            return started
        if self._cancelled:
            raise asyncio.CancelledError()
        assert self._binding is not None
        bound = await self._binding
        if self._started is None:
            return self._start(bound)
        return self._started

    async def _restart(self, stale: _Started) -> _Started:
        """Bind again and send the call again (the server did not know the context)."""
        self._session.invalidate(stale.bound)
        return self._start(await self._session.bound(stale.bound))

    # grpc.aio.RpcContext / grpc.aio.Call
    def cancelled(self) -> bool:
        started = self._started
        return self._cancelled if started is None else started.call.cancelled()

    def done(self) -> bool:
        started = self._started
        return self._cancelled if started is None else started.call.done()

    def time_remaining(self) -> float | None:
        started = self._started
        return None if started is None else started.call.time_remaining()

    def cancel(self) -> bool:
        started = self._started
        if started is not None:
            return started.call.cancel()
        if self._cancelled:
            return False
        self._cancelled = True
        if self._binding is not None:
            self._binding.cancel()
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        started = self._started
        if started is not None:
            started.call.add_done_callback(lambda _c: callback(self))
        else:
            self._callbacks.append(callback)

    @property
    def rpcsec_status(self) -> CallStatus:
        """The call's outcome, once it finished (``rpcsec.grpc.call_status``)."""
        if self._status is None:
            raise RuntimeError("the call has not finished")
        return self._status

    # metadata: the signed entries once the call finished with an outcome the server signed
    async def initial_metadata(self) -> Any:
        status = self._status
        if status is not None and status.verified:
            return status.initial_metadata
        return await (await self._ready()).call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        status = self._status
        if status is not None and status.verified:
            return status.trailing_metadata
        return await (await self._ready()).call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        return await (await self._ready()).call.code()

    async def details(self) -> str:
        return await (await self._ready()).call.details()

    async def wait_for_connection(self) -> None:
        await (await self._ready()).call.wait_for_connection()


class _UnaryResponse(_Call):
    """``await call``: the opened, deserialized response (computed once)."""

    def __init__(
        self,
        session: _AnySession,
        launch: Callable[[ClientBound], _Started],
        deserialize: Callable[[bytes], Any] | None,
        retry: bool | None,
    ) -> None:
        # retry: the method is idempotent (True) or not; None: its requests are a stream.
        # deserialize None: the response is the bytes as they are.
        self._deserialize = deserialize
        self._idempotent = bool(retry)
        self._resendable = retry is not None
        self._outcome: tuple[bool, Any] | None = None
        super().__init__(session, launch)

    def __await__(self) -> Generator[Any, None, Any]:
        if self._outcome is None:
            try:
                value = yield from self._receive().__await__()
            except (grpc.RpcError, SecurityError) as exc:
                self._outcome = (False, exc)
                raise
            self._outcome = (True, value)
        ok, value = self._outcome
        if ok:
            return value
        raise value

    async def _receive(self) -> Any:
        started = await self._ready()
        attempt = 0
        while True:
            try:
                response = await started.call
            except grpc.RpcError as raised:
                exc = await _final_status(started.call, raised)
                if self._session.refused(
                    started.bound,
                    exc,
                    self._idempotent,
                    self._resendable,
                    attempt,
                    started.keys,
                    started.call_seq,
                ):
                    attempt += 1
                    started = await self._restart(started)
                    continue
                final = _checked(started, exc)
                if final is raised:
                    raise
                raise final from None
            data, self._status = await _response_outcome(started, response)
            bound = started.bound
            if bound.backoff.failures:  # nothing to reset otherwise
                bound.succeeded()
            deserialize = self._deserialize
            return data if deserialize is None else deserialize(data)


def _checked(started: _Started, error: BaseException) -> BaseException:
    """A failed call's error: as it is, ``VerifiedRpcError`` or ``MessageAlteredError``."""
    if not isinstance(error, grpc.aio.AioRpcError):
        return error
    return checked_error(started.bound.protection, started.keys.prefix, started.call_seq, error)


async def _outcome(started: _Started) -> CallStatus:
    """A finished response stream's outcome, checked against the server's signature or its
    end marker (``_call_status.open_stream_outcome``)."""
    call = started.call
    try:
        return open_stream_outcome(
            started.bound.protection,
            started.keys.prefix,
            started.call_seq,
            started.inbound,
            await call.code(),
            await call.details(),
            await call.initial_metadata(),
            await call.trailing_metadata(),
        )
    except SecurityError as exc:
        raise as_rpc_error(exc) from None


async def _response_outcome(started: _Started, response: bytes) -> tuple[bytes, CallStatus]:
    """A single-response call's opened response and outcome (``open_unary_outcome``)."""
    call = started.call
    bound = started.bound
    keys = started.keys
    prepared = bound.prepared(keys.method)
    try:
        return open_unary_outcome(
            bound.protection,
            keys.prefix,
            started.call_seq,
            response,
            bound.encrypt,
            await call.code(),
            await call.details(),
            await call.initial_metadata(),
            await call.trailing_metadata(),
            None if prepared is None else prepared.open_ok,
        )
    except SecurityError as exc:
        raise as_rpc_error(exc) from None


async def _final_status(call: Any, raised: grpc.RpcError) -> grpc.RpcError:
    """The error to act on. grpc.aio loses the server's status when a request write races the
    server ending the call (it reports the failed write as INTERNAL "Internal error from Core"
    instead): that call was refused before its requests were read, so it is reported as a
    stale binding (``_recovery.LOST_STATUS``), which re-binds the next call but never re-sends
    this one."""
    if (
        not isinstance(raised, grpc.aio.AioRpcError)
        or raised.code() is not grpc.StatusCode.INTERNAL
    ):
        return raised
    if "SendMessageOperation" not in (raised.debug_error_string() or ""):
        return raised
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        raised.initial_metadata(),
        grpc.aio.Metadata((REASON_KEY, LOST_STATUS)),
        "rpcsec: the server ended the call before reading its requests",
    )


class _StreamResponse(_Call):
    """``async for`` / ``read()``: each response opened, the end marker checked."""

    def __init__(
        self,
        session: _AnySession,
        launch: Callable[[ClientBound], _Started],
        deserialize: Callable[[bytes], Any],
        retry: bool | None,
    ) -> None:
        self._deserialize = deserialize
        self._idempotent = bool(retry)
        self._resendable = retry is not None
        self._attempt = 0
        super().__init__(session, launch)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Any]:
        while True:
            message = await self.read()
            if message is EOF:
                return
            yield message

    async def read(self) -> Any:
        started = await self._ready()
        while True:
            inbound = started.inbound
            assert inbound is not None
            try:
                token = await started.call.read()
            except grpc.RpcError as raised:
                exc = await _final_status(started.call, raised)
                resendable = self._resendable and inbound.count == 0
                if self._session.refused(
                    started.bound,
                    exc,
                    self._idempotent,
                    resendable,
                    self._attempt,
                    started.keys,
                    started.call_seq,
                ):
                    self._attempt += 1
                    started = await self._restart(started)
                    continue
                typed = typed_expiry(exc)
                if typed is raised:
                    final = _checked(started, raised)
                    if final is raised:
                        raise
                    raise final from None
                raise typed from raised
            if token is EOF:
                inbound.finish()
                return EOF
            try:
                data = inbound.open(token)
                if data is None:
                    try:
                        extra = await started.call.read()
                    except grpc.RpcError as raised:
                        raise _checked(started, raised) from None
                    if extra is not EOF:
                        inbound.open(extra)  # a message after the end marker
                    self._status = await _outcome(started)
                    started.bound.succeeded()
                    return EOF
            except SecurityError:
                started.call.cancel()
                raise
            return self._deserialize(data)


class _Writer:
    """``write()`` / ``done_writing()`` for request-streaming calls made without an iterator."""

    _serialize: Callable[[Any], bytes]
    _ready: Callable[[], Any]  # provided by _Call

    async def write(self, request: Any) -> None:
        started = await self._ready()
        assert started.outbound is not None
        await started.call.write(started.outbound.seal(self._serialize(request)))

    async def done_writing(self) -> None:
        started = await self._ready()
        assert started.outbound is not None
        await started.call.write(started.outbound.end())
        await started.call.done_writing()


class _StreamUnaryCall(_Writer, _UnaryResponse):
    def __init__(self, serialize: Callable[[Any], bytes], *args: Any) -> None:
        self._serialize = serialize
        super().__init__(*args)


class _StreamStreamCall(_Writer, _StreamResponse):
    def __init__(self, serialize: Callable[[Any], bytes], *args: Any) -> None:
        self._serialize = serialize
        super().__init__(*args)


async def _sealed_requests(
    requests: Iterable[Any] | AsyncIterable[Any],
    outbound: Outbound,
    serialize: Callable[[Any], bytes],
) -> AsyncIterator[bytes]:
    if isinstance(requests, AsyncIterable):
        async for request in requests:
            yield outbound.seal(serialize(request))
    else:
        for request in requests:
            yield outbound.seal(serialize(request))
    yield outbound.end()


class _Multicallable:
    def __init__(
        self,
        session: _AnySession,
        raw: Any,
        method: str,
        serialize: Callable[[Any], bytes] | None,
        deserialize: Callable[[bytes], Any] | None,
    ) -> None:
        self._session = session
        self._raw = raw
        self._method = method
        self._serialize = serialize or _identity
        self._deserialize = deserialize or _identity
        self._to_bytes, self._from_bytes = serialize, deserialize  # None: bytes as they are
        self._idempotent = method in session.security.idempotent

    def _open_call(
        self, bound: ClientBound, payload: bytes | None, app: Any = None
    ) -> tuple[MethodKeys, bytes, tuple[tuple[str, bytes], ...], bytes]:
        """Open a call on ``bound``: with its single request message, or (None) with a call
        header. Returns the keys, the call sequence, the metadata and the request token."""
        try:
            if payload is None:
                keys = bound.keys(self._method)
                call_seq, metadata = bound.begin(keys, app)
                return keys, call_seq, metadata, b""
            prepared = None if app else bound.prepared(self._method)
            if prepared is not None:  # the method's opening prepared once (``PreparedMethod``)
                token = prepared.wrap(payload)
                return prepared.keys, token[SEQ_SLICE], prepared.metadata, token
            keys = bound.keys(self._method)
            call_seq, metadata, token = bound.open_unary(keys, payload, app)
            return keys, call_seq, metadata, token
        except ContextExpiredError:
            # Expired between the check and the signature: the call binds again.
            self._session.invalidate(bound)
            raise


class _UnaryUnaryMultiCallable(_Multicallable, grpc.aio.UnaryUnaryMultiCallable):
    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        payload = request if self._to_bytes is None else self._to_bytes(request)

        def launch(bound: ClientBound) -> _Started:
            keys, call_seq, ours, token = self._open_call(bound, payload, metadata)
            call = self._raw(
                token,
                timeout=timeout,
                metadata=_merge(ours, metadata) if metadata else ours,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
            return _Started(bound, keys, call_seq, call, None, None)

        return _UnaryResponse(self._session, launch, self._from_bytes, self._idempotent)


class _UnaryStreamMultiCallable(_Multicallable, grpc.aio.UnaryStreamMultiCallable):
    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        payload = self._serialize(request)

        def launch(bound: ClientBound) -> _Started:
            keys, call_seq, ours, token = self._open_call(bound, payload, metadata)
            protection = bound.protection
            call = self._raw(
                token,
                timeout=timeout,
                metadata=_merge(ours, metadata),
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
            inbound = OutcomeInbound(protection, keys.prefix, call_seq, RESPONSE, bound.encrypt)
            return _Started(bound, keys, call_seq, call, inbound, None)

        return _StreamResponse(self._session, launch, self._deserialize, self._idempotent)


class _StreamUnaryMultiCallable(_Multicallable, grpc.aio.StreamUnaryMultiCallable):
    def __call__(
        self,
        request_iterator: Iterable[Any] | AsyncIterable[Any] | None = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        def launch(bound: ClientBound) -> _Started:
            keys, call_seq, ours, _ = self._open_call(bound, None, metadata)
            outbound = Outbound(bound.protection, keys.prefix, call_seq, REQUEST, bound.encrypt)
            requests = (
                None
                if request_iterator is None
                else _sealed_requests(request_iterator, outbound, self._serialize)
            )
            call = self._raw(
                requests,
                timeout=timeout,
                metadata=_merge(ours, metadata),
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
            return _Started(bound, keys, call_seq, call, None, outbound)

        return _StreamUnaryCall(self._serialize, self._session, launch, self._deserialize, None)


class _StreamStreamMultiCallable(_Multicallable, grpc.aio.StreamStreamMultiCallable):
    def __call__(
        self,
        request_iterator: Iterable[Any] | AsyncIterable[Any] | None = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        def launch(bound: ClientBound) -> _Started:
            keys, call_seq, ours, _ = self._open_call(bound, None, metadata)
            protection = bound.protection
            outbound = Outbound(protection, keys.prefix, call_seq, REQUEST, bound.encrypt)
            requests = (
                None
                if request_iterator is None
                else _sealed_requests(request_iterator, outbound, self._serialize)
            )
            call = self._raw(
                requests,
                timeout=timeout,
                metadata=_merge(ours, metadata),
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
            inbound = OutcomeInbound(protection, keys.prefix, call_seq, RESPONSE, bound.encrypt)
            return _Started(bound, keys, call_seq, call, inbound, outbound)

        return _StreamStreamCall(self._serialize, self._session, launch, self._deserialize, None)


class SecureChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` bound to a security context; see ``secure_channel()``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        security: ChannelSecurity,
        *,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_callers: int = DEFAULT_MAX_CALLERS,
        owns_channel: bool = True,
    ) -> None:
        self._channel = channel
        self._owns_channel = owns_channel
        self._options = (handshake_timeout, max_callers)
        self._session: _AnySession
        if security.credentials is None:  # dynamic cloaking
            self._session = _CloakedSession(channel, security, handshake_timeout, max_callers)
        else:
            self._session = _Session(channel, security, handshake_timeout)

    async def bind(self) -> ClientContext:
        """Bind now (the first call would), and return the established context."""
        return (await self._session.bound()).context

    @property
    def security_context(self) -> ClientContext | None:
        bound = self._session.current
        return None if bound is None else bound.context

    @property
    def protection(self) -> ProtectionLevel:
        return self._session.security.protection

    async def __aenter__(self) -> SecureChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def with_blanket(
        self,
        *,
        protection: ProtectionLevel | None = None,
        impersonation: ImpersonationLevel | None = None,
    ) -> SecureChannel:
        """This channel at another protection and/or impersonation level (DCOM's
        CoSetProxyBlanket for one proxy): same identity, target and connection, its own
        context (levels are fixed in a handshake). Omitted levels stay this channel's. Stubs
        made on the result use the new levels; ``close()`` on it releases only its context."""
        handshake_timeout, max_callers = self._options
        return SecureChannel(
            self._channel,
            self._session.security.with_levels(protection=protection, impersonation=impersonation),
            handshake_timeout=handshake_timeout,
            max_callers=max_callers,
            owns_channel=False,
        )

    async def close(self, grace: float | None = None) -> None:
        """Release the server's context (a signed Release call), then close the channel
        (unless it belongs to the channel this one was made from by ``with_blanket``)."""
        try:
            await self._session.release()
        finally:
            if self._owns_channel:
                await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        **kwargs: Any,
    ) -> grpc.aio.UnaryUnaryMultiCallable:
        raw = self._channel.unary_unary(method, **kwargs)
        return _UnaryUnaryMultiCallable(
            self._session, raw, method, request_serializer, response_deserializer
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        **kwargs: Any,
    ) -> grpc.aio.UnaryStreamMultiCallable:
        raw = self._channel.unary_stream(method, **kwargs)
        return _UnaryStreamMultiCallable(
            self._session, raw, method, request_serializer, response_deserializer
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        **kwargs: Any,
    ) -> grpc.aio.StreamUnaryMultiCallable:
        raw = self._channel.stream_unary(method, **kwargs)
        return _StreamUnaryMultiCallable(
            self._session, raw, method, request_serializer, response_deserializer
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        **kwargs: Any,
    ) -> grpc.aio.StreamStreamMultiCallable:
        raw = self._channel.stream_stream(method, **kwargs)
        return _StreamStreamMultiCallable(
            self._session, raw, method, request_serializer, response_deserializer
        )


def secure_channel(
    target: str | grpc.aio.Channel,
    credentials: Credentials | None = None,
    *,
    target_name: str | None = None,
    requirements: ContextReq | None = None,
    impersonation: ImpersonationLevel | None = None,
    protection: ProtectionLevel | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
    package_options: dict[str, Any] | None = None,
    channel_credentials: grpc.ChannelCredentials | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    lifetime: float | None = None,
    replay_window: int | None = None,
    idempotent_methods: Iterable[str] | None = None,
    clock: Callable[[], float] = time.time,
    cloaking: str | None = None,
    max_callers: int = DEFAULT_MAX_CALLERS,
) -> SecureChannel:
    """The asyncio twin of ``rpcsec.grpc.secure_channel`` (same arguments and rules; dynamic
    cloaking picks the identity current where the call is made)."""
    security = ChannelSecurity(
        credentials,
        target_name=target_name,
        requirements=requirements,
        impersonation=impersonation,
        protection=protection,
        package_options=package_options,
        lifetime=lifetime,
        replay_window=replay_window,
        idempotent_methods=idempotent_methods,
        clock=clock,
        dynamic=cloaking_mode(cloaking, credentials) == "dynamic",
    )
    if isinstance(target, grpc.aio.Channel):
        channel = target
    elif isinstance(target, str):
        opts = list(options or ())
        if channel_credentials is not None:
            channel = grpc.aio.secure_channel(target, channel_credentials, options=opts)
        else:
            channel = grpc.aio.insecure_channel(target, options=opts)
    else:
        raise TypeError("target must be an address string or a grpc.aio.Channel")
    return SecureChannel(
        channel, security, handshake_timeout=handshake_timeout, max_callers=max_callers
    )
