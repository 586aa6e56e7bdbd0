"""``secure_channel()``: a ``grpc.Channel`` whose every call is authenticated and protected.

Generated stubs use it unchanged. Client interceptors never see bytes, so the channel wraps
the multicallables instead: the underlying ones are made *without* serializers, and each call
serializes then seals (EncryptMessage / integrity wrap), and opens then deserializes the
response. The first call binds: one ``Negotiate`` stream runs the handshake (concurrent first
calls share it); the granted attributes are checked before any application call is sent.
A refusal saying the server no longer knows the context makes the channel re-bind for the next
call; the refused call itself is sent again only for a method declared idempotent (the refusal
is not signed, so it proves nothing about whether the handler ran: see ``_recovery``).
``close()`` releases the server's context.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

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

from ._binding import ChannelSecurity, ClientBound, PreparedMethod
from ._call_status import CallStatus
from ._calls import FIRST_RESPONSE, MethodKeys, Outbound, OutcomeInbound
from ._client_errors import typed_expiry
from ._cloaking import CONCURRENT_BINDS, DEFAULT_MAX_CALLERS, CallerSessions, cloaking_mode
from ._proto import handshake_pb2
from ._recovery import MAX_TRANSPORT_ATTEMPTS
from ._session import CloakedSessionCore, SessionCore
from ._status import error_from_rpc
from ._verified_call import (
    RawCallDelegate,
    VerifiedCall,
    checked_error,
    checked_response,
    checked_stream_status,
)
from ._wire import NEGOTIATE_METHOD, RELEASE_METHOD, REQUEST, RESPONSE, SEQ_SLICE

__all__ = ["SecureChannel", "secure_channel"]

_LOG = logging.getLogger("rpcsec.grpc")
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

Metadata = Sequence[tuple[str, str | bytes]]


def _identity(value: Any) -> Any:
    return value


def _merge(ours: tuple[tuple[str, bytes], ...], theirs: Metadata | None) -> Metadata:
    return ours if not theirs else ours + tuple(theirs)


def _parse_response(raw: bytes) -> handshake_pb2.NegotiateResponse:
    try:
        return handshake_pb2.NegotiateResponse.FromString(raw)
    except DecodeError as exc:
        raise InvalidTokenError("handshake reply is malformed") from exc


class _Session:
    """One channel's binding: the I/O shell over ``SessionCore`` (the handshake stream, the
    lock that makes concurrent first calls share one handshake, the waits it asks for)."""

    def __init__(
        self,
        raw: grpc.Channel,
        security: ChannelSecurity,
        handshake_timeout: float,
        gate: threading.Semaphore | None = None,
    ) -> None:
        self.raw = raw
        self.security = security
        self.core = SessionCore(security)
        self._timeout = handshake_timeout
        self._gate = gate  # shared by a cloaked channel's sessions: handshakes at once
        self._lock = threading.Lock()
        self._negotiate = raw.stream_stream(NEGOTIATE_METHOD)
        self._release = raw.unary_unary(RELEASE_METHOD)
        self._check_caller = security.owner is not None
        self.refused = self.core.refused

    @property
    def current(self) -> ClientBound | None:
        return self.core.current

    def bound(self) -> ClientBound:
        """The established binding, binding first if there is none (or it expired)."""
        if self._check_caller:
            self.security.check_caller()
        core = self.core
        bound = core.usable()
        if bound is not None:
            return bound
        return self._bind(core.current)

    def _bind(self, stale: ClientBound | None) -> ClientBound:
        core = self.core
        with self._lock:  # concurrent first calls share one handshake
            bound = core.usable(stale)
            if bound is not None:
                return bound
            time.sleep(core.before_bind())
            gate = self._gate
            if gate is None:
                bound = self._handshake_when_admitted()
            else:
                if not gate.acquire(timeout=self._timeout):
                    raise BusyError("too many handshakes in progress on this channel")
                try:
                    bound = self._handshake_when_admitted()
                finally:
                    gate.release()
            core.established(bound)
            return bound

    def _handshake_when_admitted(self) -> ClientBound:
        """The handshake, tried again after ``busy`` within its deadline (no call ran: a
        refused handshake is always safe to repeat)."""
        deadline = time.monotonic() + self._timeout
        attempt = 0
        while True:
            try:
                return self._handshake()
            except BusyError:
                delay = self.core.busy(attempt, deadline - time.monotonic())
                if delay is None:
                    raise
                attempt += 1
                time.sleep(delay)

    def invalidate(self, bound: ClientBound) -> None:
        """The server does not know ``bound`` any more: the next call binds again."""
        with self._lock:
            self.core.invalidate(bound)

    def _handshake(self) -> ClientBound:
        negotiation = self.security.negotiation()
        outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        outbox.put(negotiation.start().SerializeToString())

        def requests() -> Iterator[bytes]:
            while (item := outbox.get()) is not None:
                yield item

        responses = self._negotiate(requests(), timeout=self._timeout)
        finished = False
        try:
            for raw in responses:
                reply = negotiation.receive(_parse_response(raw))
                if reply is None:
                    finished = True
                    break
                outbox.put(reply.SerializeToString())
            if not finished:
                raise InvalidTokenError("server ended the handshake before completing it")
        except grpc.RpcError as exc:
            refusal = error_from_rpc(exc)
            if refusal is not None:
                raise refusal from exc
            raise
        finally:
            outbox.put(None)
            if not finished:
                responses.cancel()
        bound = self.security.established(negotiation)
        try:
            self.security.check_granted(bound.context)
        except SecurityError:
            self._release_bound(bound)  # the server need not keep a context we refuse
            raise
        return bound

    def release(self) -> None:
        """DeleteSecurityContext on both sides; the release call is signed by the context."""
        with self._lock:
            bound = self.core.close()
        if bound is not None:
            self._release_bound(bound)

    def _release_bound(self, bound: ClientBound) -> None:
        try:
            keys = bound.keys(RELEASE_METHOD)
            call_seq, metadata, token = bound.open_unary(keys, b"")
            response = self._release(token, metadata=metadata, timeout=self._timeout)
            bound.protection.open(keys.prefix, call_seq, FIRST_RESPONSE, response, bound.encrypt)
        except (grpc.RpcError, SecurityError) as exc:
            _LOG.debug("releasing the server context failed: %s", exc)
        finally:
            bound.context.delete()


class _CloakedSession(CloakedSessionCore):
    """Dynamic cloaking's shell: the ``_Session`` interface over one session per identity
    (``_cloaking.CallerSessions``), chosen by the impersonation token current when a call
    binds, all on the channel's one grpc channel (one HTTP/2 connection)."""

    def __init__(
        self,
        raw: grpc.Channel,
        security: ChannelSecurity,
        handshake_timeout: float,
        max_callers: int,
    ) -> None:
        self.raw = raw
        self.security = security  # the template: protection, idempotent methods
        gate = self.gate = threading.BoundedSemaphore(CONCURRENT_BINDS)
        self.callers: CallerSessions[_Session] = CallerSessions(
            security,
            lambda caller: _Session(raw, caller, handshake_timeout, gate),
            max_callers=max_callers,
            clock=security.clock,
        )

    def bound(self) -> ClientBound:
        return self.callers.select().bound()

    def release(self) -> None:
        for session in self.callers.close():
            session.release()


_AnySession: TypeAlias = _Session | _CloakedSession


class _Multicallable:
    __slots__ = (
        "_core",
        "_deserialize",
        "_idempotent",
        "_method",
        "_prepared",
        "_raw",
        "_response_type",
        "_serialize",
        "_session",
        "_to_bytes",
    )

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
        self._to_bytes, self._response_type = serialize, deserialize  # None: bytes as they are
        self._idempotent = method in session.security.idempotent
        # The unary fast path (``_UnaryUnary.__call__``) of a channel of one identity whose
        # calls need no per-call caller check: this method prepared on its current binding.
        # (None: the binding is looked up per call.)
        self._core = (
            session.core if isinstance(session, _Session) and not session._check_caller else None
        )
        # (binding, its PreparedMethod): one attribute, replaced whole, never half of a pair.
        self._prepared: tuple[ClientBound, PreparedMethod] | None = None

    def _open_call(
        self, payload: bytes | None, app: Metadata | None = None
    ) -> tuple[ClientBound, MethodKeys, bytes, tuple[tuple[str, bytes], ...], bytes]:
        """Bind if needed and open a call: with its single request message (``payload``), or
        with a call header (None: request-streaming); the opening signature also covers the
        application's metadata ``app`` (``_metadata``). Returns the binding, the method's keys,
        the call sequence, the metadata and the request token (b"" for a header)."""
        session = self._session
        for attempt in (0, 1):
            bound = session.bound()
            try:
                if payload is None:
                    keys = bound.keys(self._method)
                    call_seq, metadata = bound.begin(keys, app)
                    return bound, keys, call_seq, metadata, b""
                prepared = None if app else bound.prepared(self._method)
                if prepared is not None:
                    token = prepared.wrap(payload)
                    return bound, prepared.keys, token[SEQ_SLICE], prepared.metadata, token
                keys = bound.keys(self._method)
                call_seq, metadata, token = bound.open_unary(keys, payload, app)
                return bound, keys, call_seq, metadata, token
            except ContextExpiredError:
                if attempt:
                    raise
                session.invalidate(bound)  # expired between the check and the signature
        raise AssertionError("unreachable")  # pragma: no cover

    def _opener(self, bound: ClientBound, keys: MethodKeys, call_seq: bytes) -> _Opener:
        return _Opener(self._session, bound, keys, call_seq, self._deserialize)


class _Opener:
    """A unary-response call's future outcome: the response opened, the status checked."""

    __slots__ = ("_bound", "_call_seq", "_deserialize", "_keys", "_session")

    def __init__(
        self,
        session: _AnySession,
        bound: ClientBound,
        keys: MethodKeys,
        call_seq: bytes,
        deserialize: Callable[[bytes], Any],
    ) -> None:
        self._session = session
        self._bound = bound
        self._keys = keys
        self._call_seq = call_seq
        self._deserialize = deserialize

    def open(self, response: bytes, call: Any) -> tuple[Any, CallStatus]:
        bound, keys = self._bound, self._keys
        prepared = bound.prepared(keys.method)
        data, status = checked_response(
            bound.protection,
            keys.prefix,
            self._call_seq,
            response,
            bound.encrypt,
            call,
            None if prepared is None else prepared.open_ok,
        )
        bound.succeeded()
        return self._deserialize(data), status

    def check_error(self, error: grpc.RpcError) -> BaseException:
        return checked_error(self._bound.protection, self._keys.prefix, self._call_seq, error)


class _UnaryUnary(_Multicallable, grpc.UnaryUnaryMultiCallable):
    __slots__ = ()

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        """The common call in one frame (plus the prepared ``wrap`` and ``open_ok``): the
        method prepared on the current binding (``PreparedMethod``), and the outcome read from
        the response alone when it can be.

        Why skipping the call's status and metadata is safe *here*: this call hands the
        application the response message and nothing else -- no call object, no code, details
        or metadata. gRPC returned a message, so its status was OK. A response that opens over
        ``OUTCOME_OK`` is one the server sealed for this call, this method and this position,
        stating that its handler ended OK with no details and no metadata: everything the
        application receives is verified. What an attacker can still do to such a call --
        add a trailer (even a genuine ``rpcsec-status-bin`` of another call), add details or
        metadata -- reaches nothing the application sees, so it is not checked, where
        ``with_call`` / ``future()`` / streams (which expose the call) refuse it as before.
        A response that does not open so (a handler that set metadata or details, anything
        altered) takes today's full check of the status, details and trailers
        (``checked_response``): a response sealed without the suffix whose status trailer was
        stripped is refused there, and a token opens either with the suffix or without it,
        never both (MSG_AAD's tail has a fixed size). Anything out of the ordinary -- no
        current binding, application metadata, expiry -- takes the full path (``_invoke``)
        from the start (binding, re-sending), which checks the outcome the same way; a cloaked
        or caller-checked channel looks its binding up per call."""
        payload = request if self._to_bytes is None else self._to_bytes(request)
        core = self._core
        current = self._prepared
        prepared: PreparedMethod | None
        if core is not None and current is not None and current[0] is core.current:
            bound, prepared = current
        elif core is None and not metadata:
            # A cloaked or caller-checked channel: the binding is chosen (and the caller
            # checked) per call, as ``_open_call`` does; the method prepared on it.
            bound = self._session.bound()
            prepared = bound.prepared(self._method)
        else:
            prepared = None
        if prepared is None or metadata:
            return self._invoke(
                payload, timeout, metadata, credentials, wait_for_ready, compression, False, 0
            )[0]
        try:
            token = prepared.wrap(payload)  # checks expiry, deletion: the full path re-binds
        except ContextExpiredError:
            return self._invoke(
                payload, timeout, metadata, credentials, wait_for_ready, compression, False, 0
            )[0]
        call_seq = token[SEQ_SLICE]
        try:
            response, call = self._raw.with_call(
                token,
                timeout=timeout,
                metadata=prepared.metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
        except grpc.RpcError as exc:
            keys = prepared.keys
            if self._session.refused(bound, exc, self._idempotent, True, 0, keys, call_seq):
                return self._invoke(
                    payload, timeout, metadata, credentials, wait_for_ready, compression, False, 1
                )[0]
            raise checked_error(prepared.protection, keys.prefix, call_seq, exc) from None
        data = prepared.open_ok(call_seq, response)
        if data is None:  # not folded, or altered: the whole outcome, checked as ever
            data, _ = checked_response(
                prepared.protection,
                prepared.keys.prefix,
                call_seq,
                response,
                prepared.encrypt,
                call,
            )
        if prepared.backoff.failures:
            prepared.succeeded()
        return data if self._response_type is None else self._response_type(data)

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> tuple[Any, grpc.Call]:
        return self._invoke(
            self._serialize(request),
            timeout,
            metadata,
            credentials,
            wait_for_ready,
            compression,
            True,
            0,
        )

    def _invoke(
        self,
        payload: bytes,
        timeout: float | None,
        metadata: Metadata | None,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
        with_call: bool,
        first_attempt: int,
    ) -> tuple[Any, grpc.Call | None]:
        """The full path: bind if needed, the whole outcome checked (``checked_response``);
        sent again after a refusal when ``_recovery`` allows (``first_attempt``: sendings so
        far). Prepares the method for ``__call__``'s fast path on the binding it used."""
        send = self._raw.with_call  # the call object: its status is checked either way
        for attempt in range(first_attempt, MAX_TRANSPORT_ATTEMPTS):
            bound, keys, call_seq, ours, token = self._open_call(payload, metadata)
            if self._core is not None and not metadata:
                prepared = bound.prepared(self._method)
                self._prepared = None if prepared is None else (bound, prepared)
            protection = bound.protection
            try:
                outcome = send(
                    token,
                    timeout=timeout,
                    metadata=_merge(ours, metadata) if metadata else ours,
                    credentials=credentials,
                    wait_for_ready=wait_for_ready,
                    compression=compression,
                )
            except grpc.RpcError as exc:
                if self._session.refused(
                    bound, exc, self._idempotent, True, attempt, keys, call_seq
                ):
                    continue
                raise checked_error(protection, keys.prefix, call_seq, exc) from None
            response, call = outcome
            prepared = bound.prepared(self._method)
            open_ok = None if prepared is None else prepared.open_ok
            if not with_call and open_ok is not None:  # the response alone: see ``__call__``
                data = open_ok(call_seq, response)
                if data is not None:
                    bound.succeeded()
                    return self._deserialize(data), None
                open_ok = None  # tried: the full check's own open says why
            data, status = checked_response(
                protection, keys.prefix, call_seq, response, bound.encrypt, call, open_ok
            )
            bound.succeeded()
            return self._deserialize(data), VerifiedCall(call, status) if with_call else None
        raise AssertionError("unreachable")  # pragma: no cover

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> _VerifiedFuture:
        """Binds first if needed (blocking); the call itself runs asynchronously. Never sent
        twice: a refusal for ``context-unknown`` surfaces from ``result()`` and the next call
        binds again."""
        bound, keys, call_seq, ours, token = self._open_call(self._serialize(request), metadata)
        raw = self._raw.future(
            token,
            timeout=timeout,
            metadata=_merge(ours, metadata),
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        return _VerifiedFuture(raw, self._session, bound, self._opener(bound, keys, call_seq))


class _StreamUnary(_Multicallable, grpc.StreamUnaryMultiCallable):
    __slots__ = ()

    def _start(
        self, request_iterator: Iterable[Any], metadata: Metadata | None
    ) -> tuple[ClientBound, MethodKeys, bytes, Any, Iterator[bytes]]:
        bound, keys, call_seq, ours, _ = self._open_call(None, metadata)
        outbound = Outbound(bound.protection, keys.prefix, call_seq, REQUEST, bound.encrypt)
        return (
            bound,
            keys,
            call_seq,
            ours,
            _sealed_requests(request_iterator, outbound, self._serialize),
        )

    def __call__(
        self,
        request_iterator: Iterable[Any],
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        """Hands out the response alone, like ``_UnaryUnary.__call__``: a response that opens
        over ``OUTCOME_OK`` needs nothing else checked (see there)."""
        return self._send(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression, False
        )[0]

    def with_call(
        self,
        request_iterator: Iterable[Any],
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> tuple[Any, grpc.Call]:
        return self._send(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression, True
        )

    def _send(
        self,
        request_iterator: Iterable[Any],
        timeout: float | None,
        metadata: Metadata | None,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
        expose: bool,
    ) -> tuple[Any, grpc.Call]:
        bound, keys, call_seq, ours, requests = self._start(request_iterator, metadata)
        try:
            response, call = self._raw.with_call(
                requests,
                timeout=timeout,
                metadata=_merge(ours, metadata),
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
        except grpc.RpcError as exc:
            self._session.refused(bound, exc, self._idempotent, False, 0)
            raise checked_error(bound.protection, keys.prefix, call_seq, exc) from None
        prepared = bound.prepared(self._method)
        if not expose and prepared is not None:
            data = prepared.open_ok(call_seq, response)
            if data is not None:
                bound.succeeded()
                return self._deserialize(data), call
        data, status = checked_response(
            bound.protection,
            keys.prefix,
            call_seq,
            response,
            bound.encrypt,
            call,
            None if prepared is None else prepared.open_ok,
        )
        bound.succeeded()
        return self._deserialize(data), VerifiedCall(call, status)

    def future(
        self,
        request_iterator: Iterable[Any],
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> _VerifiedFuture:
        bound, keys, call_seq, ours, requests = self._start(request_iterator, metadata)
        raw = self._raw.future(
            requests,
            timeout=timeout,
            metadata=_merge(ours, metadata),
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        return _VerifiedFuture(raw, self._session, bound, self._opener(bound, keys, call_seq))


def _sealed_requests(
    request_iterator: Iterable[Any], outbound: Outbound, serialize: Callable[[Any], bytes]
) -> Iterator[bytes]:
    for request in request_iterator:
        yield outbound.seal(serialize(request))
    yield outbound.end()


class _UnaryStream(_Multicallable, grpc.UnaryStreamMultiCallable):
    __slots__ = ()

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> _ResponseStream:
        payload = self._serialize(request)

        def start() -> _Started:
            bound, keys, call_seq, ours, token = self._open_call(payload, metadata)
            protection = bound.protection
            raw = self._raw(
                token,
                timeout=timeout,
                metadata=_merge(ours, metadata),
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
            inbound = OutcomeInbound(protection, keys.prefix, call_seq, RESPONSE, bound.encrypt)
            return raw, inbound, bound, keys, call_seq

        return _ResponseStream(self._session, start, self._deserialize, retry=self._idempotent)


class _StreamStream(_Multicallable, grpc.StreamStreamMultiCallable):
    __slots__ = ()

    def __call__(
        self,
        request_iterator: Iterable[Any],
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> _ResponseStream:
        def start() -> _Started:
            bound, keys, call_seq, ours, _ = self._open_call(None, metadata)
            protection = bound.protection
            outbound = Outbound(protection, keys.prefix, call_seq, REQUEST, bound.encrypt)
            raw = self._raw(
                _sealed_requests(request_iterator, outbound, self._serialize),
                timeout=timeout,
                metadata=_merge(ours, metadata),
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
            inbound = OutcomeInbound(protection, keys.prefix, call_seq, RESPONSE, bound.encrypt)
            return raw, inbound, bound, keys, call_seq

        return _ResponseStream(self._session, start, self._deserialize, retry=None)


# One sending of a response-streaming call: the grpc call, its response cursor, the binding,
# the method's keys and the call sequence.
_Started = tuple[Any, OutcomeInbound, ClientBound, MethodKeys, bytes]


class _ResponseStream(RawCallDelegate, grpc.Call):
    """The response iterator of a server-streaming call: every message opened, the end marker
    checked. Also a ``grpc.Call`` (code, details, metadata, cancel) of the underlying call."""

    def __init__(
        self,
        session: _AnySession,
        start: Callable[[], _Started],
        deserialize: Callable[[bytes], Any],
        *,
        retry: bool | None,
    ) -> None:
        # retry: the method is idempotent (True) or not (False); None: its requests are a
        # stream and cannot be sent again.
        self._session = session
        self._start = start
        self._deserialize = deserialize
        self._idempotent = bool(retry)
        self._resendable = retry is not None
        self._attempt = 0
        self._status: CallStatus | None = None
        self._raw, self._inbound, self._bound, self._keys, self._call_seq = start()

    def __iter__(self) -> _ResponseStream:
        return self

    def __next__(self) -> Any:
        inbound = self._inbound
        while True:
            try:
                token = next(self._raw)
            except StopIteration:
                inbound.finish()
                raise
            except grpc.RpcError as exc:
                resendable = self._resendable and inbound.count == 0
                if self._session.refused(
                    self._bound,
                    exc,
                    self._idempotent,
                    resendable,
                    self._attempt,
                    self._keys,
                    self._call_seq,
                ):
                    self._attempt += 1
                    self._raw, self._inbound, self._bound, self._keys, self._call_seq = (
                        self._start()
                    )
                    inbound = self._inbound
                    continue
                typed = typed_expiry(exc)
                if typed is exc:
                    raise self._checked_error(exc) from None
                raise typed from exc
            try:
                data = inbound.open(token)
            except SecurityError:
                self._raw.cancel()
                raise
            if data is None:
                # The end marker: the transport must end here too (or report the status).
                try:
                    for extra in self._raw:
                        inbound.open(extra)
                except grpc.RpcError as exc:
                    raise self._checked_error(exc) from None
                self._final_status()
                self._bound.succeeded()
                raise StopIteration
            return self._deserialize(data)

    def next(self) -> Any:
        return self.__next__()

    def _final_status(self) -> CallStatus:
        """The finished call's outcome, checked against the server's signature (once)."""
        status = self._status
        if status is None:
            status = self._status = checked_stream_status(
                self._bound.protection, self._keys.prefix, self._call_seq, self._inbound, self._raw
            )
        return status

    def _checked_error(self, error: grpc.RpcError) -> BaseException:
        return checked_error(self._bound.protection, self._keys.prefix, self._call_seq, error)

    @property
    def rpcsec_status(self) -> CallStatus:
        return self._final_status()

    # grpc.Call / grpc.RpcContext of the underlying call; metadata: the signed entries once
    # the stream ended with an outcome the server signed (``call_status`` tells); before the
    # end, initial metadata is as received (not yet verifiable)
    def initial_metadata(self) -> Any:
        status = self._status
        if status is None or not status.verified:
            return self._raw.initial_metadata()
        return status.initial_metadata

    def trailing_metadata(self) -> Any:
        status = self._final_status()
        return status.trailing_metadata if status.verified else self._raw.trailing_metadata()


class _VerifiedFuture(grpc.Future, grpc.Call):
    """A unary-response call's future whose ``result()`` is the *opened* response: a response
    that does not verify raises its ``SecurityError`` from ``result()``, never returns."""

    def __init__(
        self,
        raw: Any,
        session: _AnySession,
        bound: ClientBound,
        open_response: _Opener,
    ) -> None:
        self._raw = raw
        self._session = session
        self._bound = bound
        self._open = open_response
        self._lock = threading.Lock()
        self._outcome: tuple[bool, Any] | None = None
        self._status: CallStatus | None = None

    def _opened(self, response: bytes) -> Any:
        with self._lock:
            if self._outcome is None:
                try:
                    value, self._status = self._open.open(response, self._raw)
                    self._outcome = (True, value)
                except SecurityError as exc:
                    self._outcome = (False, exc)
            ok, value = self._outcome
        if ok:
            return value
        raise value

    def result(self, timeout: float | None = None) -> Any:
        try:
            response = self._raw.result(timeout)
        except grpc.RpcError as exc:
            self._session.refused(self._bound, exc, False, False, 0)
            raise self._open.check_error(exc) from None
        return self._opened(response)

    @property
    def rpcsec_status(self) -> CallStatus:
        """The call's outcome, once ``result()`` returned (``rpcsec.grpc.call_status``)."""
        if self._status is None:
            raise RuntimeError("the call's result has not been read")
        return self._status

    def exception(self, timeout: float | None = None) -> BaseException | None:
        error = self._raw.exception(timeout)
        if error is not None:
            return self._open.check_error(error)
        try:
            self._opened(self._raw.result())
        except SecurityError as exc:
            return exc
        return None

    def traceback(self, timeout: float | None = None) -> Any:
        return self._raw.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._raw.add_done_callback(lambda _raw: fn(self))

    def cancel(self) -> bool:
        return self._raw.cancel()

    def cancelled(self) -> bool:
        return self._raw.cancelled()

    def running(self) -> bool:
        return self._raw.running()

    def done(self) -> bool:
        return self._raw.done()

    def initial_metadata(self) -> Any:
        status = self._status
        return (
            status.initial_metadata if status and status.verified else self._raw.initial_metadata()
        )

    def trailing_metadata(self) -> Any:
        status = self._status
        return (
            status.trailing_metadata
            if status and status.verified
            else self._raw.trailing_metadata()
        )

    def code(self) -> grpc.StatusCode:
        return self._raw.code()

    def details(self) -> str:
        return self._raw.details()

    def is_active(self) -> bool:
        return self._raw.is_active()

    def time_remaining(self) -> float | None:
        return self._raw.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._raw.add_callback(callback)


def _raw_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # Whatever else a stub passes (``_registered_method`` and future additions) goes through.
    return kwargs


class SecureChannel(grpc.Channel):
    """A ``grpc.Channel`` bound to a security context; see ``secure_channel()``."""

    def __init__(
        self,
        channel: grpc.Channel,
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

    # -- security --------------------------------------------------------------------------

    def bind(self) -> ClientContext:
        """Bind now (the first call would), and return the established context."""
        return self._session.bound().context

    @property
    def security_context(self) -> ClientContext | None:
        """The established ClientContext (``attributes``, ``peer`` = the server's identity
        token, ``query_attributes``), or None before the first call binds."""
        bound = self._session.current
        return None if bound is None else bound.context

    @property
    def protection(self) -> ProtectionLevel:
        return self._session.security.protection

    # -- grpc.Channel ----------------------------------------------------------------------

    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        self._channel.unsubscribe(callback)

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        **kwargs: Any,
    ) -> grpc.UnaryUnaryMultiCallable:
        raw = self._channel.unary_unary(method, **_raw_kwargs(kwargs))
        return _UnaryUnary(self._session, raw, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        **kwargs: Any,
    ) -> grpc.UnaryStreamMultiCallable:
        raw = self._channel.unary_stream(method, **_raw_kwargs(kwargs))
        return _UnaryStream(self._session, raw, method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        **kwargs: Any,
    ) -> grpc.StreamUnaryMultiCallable:
        raw = self._channel.stream_unary(method, **_raw_kwargs(kwargs))
        return _StreamUnary(self._session, raw, method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        **kwargs: Any,
    ) -> grpc.StreamStreamMultiCallable:
        raw = self._channel.stream_stream(method, **_raw_kwargs(kwargs))
        return _StreamStream(self._session, raw, method, request_serializer, response_deserializer)

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

    def close(self) -> None:
        """Release the server's context (a signed Release call), then close the channel
        (unless it belongs to the channel this one was made from by ``with_blanket``)."""
        try:
            self._session.release()
        finally:
            if self._owns_channel:
                self._channel.close()

    def __enter__(self) -> SecureChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def secure_channel(
    target: str | grpc.Channel,
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
    """A channel to ``target`` whose calls are authenticated as ``credentials``.

    ``credentials`` None: each call is made as the identity current *when it is made*
    (``cloaking="dynamic"``, DCOM's EOAC_DYNAMIC_CLOAKING): inside a handler (impersonating a
    caller) the caller's delegated credentials, else ``DelegationRequiredError`` before
    anything is sent; outside, ``set_default_credentials()``'s. One binding per identity
    (at most ``max_callers``, least recently used dropped; each ends with its delegation), all
    on this channel's one connection; a binding is never used for another caller. So one
    channel made at service start serves every caller. ``cloaking="static"`` fixes the
    identity current when the channel is made (the channel then serves that caller only).
    ``requirements`` (default ``ContextReq.default()``: MUTUAL_AUTH, REPLAY_DETECT, INTEGRITY,
    CONNECTION) are requested *and* required: a context granted less fails the first call with
    ``InsufficientAttributesError`` before anything of the application is sent (NTLM, which
    cannot prove the server, needs ``requirements`` without MUTUAL_AUTH). ``impersonation`` is
    the most the server may do as you; DELEGATE also requests delegation. ``protection`` is
    every call's level: INTEGRITY (signed) or PRIVACY (sealed). Omitted, both come from
    ``rpcsec.initialize_security()``, else IMPERSONATE and INTEGRITY. ``package_options`` go to the
    ClientContext (e.g. x509 ``delegate_to``). ``target`` may be an existing ``grpc.Channel``
    (it is then owned by the secure channel); otherwise ``options`` and
    ``channel_credentials`` (transport TLS, optional: rpcsec protects messages either way) make
    one. ``idempotent_methods`` (method paths, or ``/pkg.Service/`` for a whole service; the
    proto's ``idempotency_level`` counts too) may be sent again after a refusal saying the
    server does not know the context; any other call is never sent twice (the refusal is not
    signed: a man in the middle can forge it after the handler ran). The channel re-binds for
    the next call either way, with backoff.
    """
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
    if isinstance(target, grpc.Channel):
        channel = target
    elif isinstance(target, str):
        opts = list(options or ())
        if channel_credentials is not None:
            channel = grpc.secure_channel(target, channel_credentials, options=opts)
        else:
            channel = grpc.insecure_channel(target, options=opts)
    else:
        raise TypeError("target must be an address string or a grpc.Channel")
    return SecureChannel(
        channel, security, handshake_timeout=handshake_timeout, max_callers=max_callers
    )
