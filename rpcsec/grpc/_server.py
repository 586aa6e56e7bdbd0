"""``SecurityInterceptor``: the server side of the binding for ``grpc.server``.

The interceptor serves the handshake service itself and replaces every application handler
with one that takes and returns *bytes* (``request_deserializer=None``,
``response_serializer=None``). Inside that wrapped behavior it admits the call (context,
signed call header, authorization policy), opens the request, runs the application handler
impersonating the caller (``rpcsec.impersonate``: ImpersonateSecurityContext for the length of
the handler), then seals the response. A call that fails admission or verification never
reaches the handler; a ``SecurityError`` from admission, verification or the handler itself
ends the call with the status ``_status`` maps it to and the reason in trailing metadata.

The behaviors here are synchronous; the asyncio interceptor reuses them for synchronous
handlers (an aio server runs those in its thread pool with a synchronous context).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NoReturn

import grpc

from rpcsec._settings import effective_settings
from rpcsec.security import CallerSteps
from rpcsec.security import _audit as audit
from rpcsec.security._impersonation import run_as
from rpcsec.sspi import (
    DEFAULT_WINDOW,
    BusyError,
    ContextReq,
    Credentials,
    SecurityError,
)

from ._calls import Inbound
from ._policy import AuthorizationPolicy
from ._registration import Registration
from ._server_core import ServerCall, ServerMethod, ServerSecurity, not_run_token
from ._servicer_context import VerifiedContext
from ._status import (
    details_for,
    passthrough_status,
    status_for,
    trailing_metadata_for,
)
from ._table import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONTEXTS,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_PEER,
    ContextTable,
    HandshakeLimiter,
)
from ._wire import NEGOTIATE_METHOD, OUTCOME_OK, RELEASE_METHOD

__all__ = [
    "ProtectedServer",
    "SecurityInterceptor",
    "build_security",
    "secure_server",
    "sync_handler",
]

_LOG = logging.getLogger("rpcsec.grpc")
_MAX_CACHED_HANDLERS = 1024


class BadRequestMessage(Exception):
    """A verified request that the method's deserializer rejects (the peer's bug, not an
    attack): INVALID_ARGUMENT, as for any malformed argument."""


def build_security(
    credentials: Credentials | Iterable[Credentials],
    policy: AuthorizationPolicy | None,
    *,
    required: ContextReq,
    max_contexts: int,
    idle_timeout: float | None,
    max_lifetime: float | None,
    max_handshakes: int,
    max_handshakes_per_peer: int,
    handshake_timeout: float,
    replay_window: int,
    package_options: Mapping[str, Mapping[str, Any]] | None,
    clock: Callable[[], float],
    ticket_keys: Any = None,
    replay_store: Any = None,
    trusted_proxies: Iterable[str] = (),
) -> ServerSecurity:
    """The ``ServerSecurity`` both interceptors are built on (one argument list, two APIs)."""
    table = ContextTable(
        max_contexts=max_contexts, idle_timeout=idle_timeout, max_lifetime=max_lifetime, clock=clock
    )
    limiter = HandshakeLimiter(
        max_pending=max_handshakes,
        max_per_peer=max_handshakes_per_peer,
        timeout=handshake_timeout,
        clock=clock,
    )
    return ServerSecurity(
        credentials,
        policy,
        required=required,
        table=table,
        limiter=limiter,
        replay_window=replay_window,
        package_options=package_options,
        ticket_keys=ticket_keys,
        replay_store=replay_store,
        trusted_proxies=trusted_proxies,
        clock=clock,
    )


# -- refusing a call ------------------------------------------------------------------------


def log_refusal(method: str, context: Any, error: BaseException, reason: str) -> None:
    try:
        peer = context.peer()
    except Exception:
        peer = "?"
    # Local detail for the operator; the peer only learns ``reason``.
    _LOG.info("refused %s from %s: %s (%s)", method, peer, reason, error)
    audit.refusal(method, peer, error, reason, handshake=method == NEGOTIATE_METHOD)


def refuse(context: Any, error: SecurityError, method: str) -> NoReturn:
    """End the call with the status and reason for ``error`` (raises, as ``abort`` does)."""
    log_refusal(method, context, error, error.reason)
    context.set_trailing_metadata(trailing_metadata_for(error.reason, not_run_token(error)))
    context.abort(status_for(error), details_for(error.reason))
    raise AssertionError("abort() returned")  # pragma: no cover


def pass_through(context: Any, error: grpc.RpcError, method: str) -> NoReturn:
    """An onward rpcsec call refused inside the handler: end this call the same way, so the
    first caller learns why; any other RpcError propagates as the handler's own failure."""
    status = passthrough_status(error)
    if status is None:
        raise error
    code, reason = status
    log_refusal(method, context, error, reason)
    context.set_trailing_metadata(trailing_metadata_for(reason))
    context.abort(code, details_for(reason))
    raise AssertionError("abort() returned")  # pragma: no cover


def bad_request(context: Any, error: BadRequestMessage, method: str) -> NoReturn:
    log_refusal(method, context, error, "bad-request")
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request message could not be deserialized")
    raise AssertionError("abort() returned")  # pragma: no cover


def deserialize(method: ServerMethod, data: bytes) -> Any:
    try:
        return method.deserialize(data)
    except Exception as exc:
        raise BadRequestMessage(f"{method.method}: {type(exc).__name__}") from exc


def verified_requests(
    raw: Iterable[bytes], inbound: Inbound, method: ServerMethod
) -> Iterator[Any]:
    """The request stream as the handler sees it: each message opened (and deserialized), the
    end marker checked, a truncated stream refused."""
    decode = method.request_deserializer
    for token in raw:
        data = inbound.open(token)
        if data is None:
            for extra in raw:
                inbound.open(extra)  # anything after the end marker is an alteration
            return
        yield data if decode is None else deserialize(method, data)
    inbound.finish()


def _start(app: Callable[..., Any], argument: Any, view: Any) -> Iterator[Any]:
    """A streaming handler's generator, started as the caller (``CallerSteps.run``)."""
    return iter(app(argument, view))


def _raise_stream_failure(inbound: Inbound) -> None:
    # A verification failure the handler caught and ignored still fails the call (sticky).
    if isinstance(inbound.error, SecurityError):
        raise inbound.error


# -- the wrapped behaviors (sync) -----------------------------------------------------------


def sync_handler(
    security: ServerSecurity, method: ServerMethod, handler: grpc.RpcMethodHandler
) -> grpc.RpcMethodHandler:
    """``handler`` with a synchronous bytes-in, bytes-out behavior that protects every call."""
    name = method.method
    open_unary = security.open_unary
    serialize = method.response_serializer
    if not handler.request_streaming and not handler.response_streaming:
        app_uu = handler.unary_unary
        request_deserializer = method.request_deserializer
        response_serializer = method.response_serializer

        # The whole per-call path: admission in one call (``open_unary``, which makes the
        # servicer context the handler sees), the handler as the caller, the response sealed
        # with its outcome folded in (``OUTCOME_OK``) unless the handler set any.
        def unary_unary(request: bytes, context: Any) -> bytes:
            try:
                view, data = open_unary(
                    context.invocation_metadata(), method, request, context, VerifiedContext
                )
                if request_deserializer is not None:
                    try:
                        data = request_deserializer(data)
                    except Exception as exc:
                        raise BadRequestMessage(f"{name}: {type(exc).__name__}") from exc
                response = run_as(view._token, app_uu, data, view)
                if response is None:
                    view.seal_status()
                    return b""
                if response_serializer is not None:
                    response = response_serializer(response)
                if view._outcome is None:
                    return view.seal_response(response, OUTCOME_OK)
                return view.respond(response)
            except SecurityError as exc:
                refuse(context, exc, name)
            except grpc.RpcError as exc:
                pass_through(context, exc, name)
            except BadRequestMessage as exc:
                bad_request(context, exc, name)

        return grpc.unary_unary_rpc_method_handler(unary_unary)

    if not handler.request_streaming:
        app_us = handler.unary_stream

        def unary_stream(request: bytes, context: Any) -> Iterator[bytes]:
            try:
                view, data = open_unary(
                    context.invocation_metadata(), method, request, context, VerifiedContext
                )
                message = deserialize(method, data)
                outbound = view.outbound()
                # The handler's generator runs step by step; each step runs in a context that
                # holds the caller's token, so nothing leaks into the server's thread.
                run = CallerSteps(view._token)
                responses = run.run(_start, app_us, message, view)
                while True:
                    try:
                        response = run.run(next, responses)
                    except StopIteration:
                        break
                    yield outbound.seal(serialize(response) if serialize else response)
                yield view.end_stream(outbound)
            except SecurityError as exc:
                refuse(context, exc, name)
            except grpc.RpcError as exc:
                pass_through(context, exc, name)
            except BadRequestMessage as exc:
                bad_request(context, exc, name)

        return grpc.unary_stream_rpc_method_handler(unary_stream)

    if not handler.response_streaming:
        app_su = handler.stream_unary

        def stream_unary(request_iterator: Iterator[bytes], context: Any) -> bytes:
            try:
                view = security.open_call(
                    context.invocation_metadata(), method, context, VerifiedContext
                )
                inbound = view.inbound()
                requests = verified_requests(request_iterator, inbound, method)
                response = run_as(view._token, app_su, requests, view)
                _raise_stream_failure(inbound)
                if response is None:
                    view.seal_status()
                    return b""
                return view.respond(method.serialize(response))
            except SecurityError as exc:
                refuse(context, exc, name)
            except grpc.RpcError as exc:
                pass_through(context, exc, name)
            except BadRequestMessage as exc:
                bad_request(context, exc, name)

        return grpc.stream_unary_rpc_method_handler(stream_unary)

    app_ss = handler.stream_stream

    def stream_stream(request_iterator: Iterator[bytes], context: Any) -> Iterator[bytes]:
        try:
            view = security.open_call(
                context.invocation_metadata(), method, context, VerifiedContext
            )
            inbound = view.inbound()
            outbound = view.outbound()
            requests = verified_requests(request_iterator, inbound, method)
            run = CallerSteps(view._token)
            responses = run.run(_start, app_ss, requests, view)
            while True:
                try:
                    response = run.run(next, responses)
                except StopIteration:
                    break
                if inbound.error is not None:
                    _raise_stream_failure(inbound)
                yield outbound.seal(serialize(response) if serialize else response)
            _raise_stream_failure(inbound)
            yield view.end_stream(outbound)
        except SecurityError as exc:
            refuse(context, exc, name)
        except grpc.RpcError as exc:
            pass_through(context, exc, name)
        except BadRequestMessage as exc:
            bad_request(context, exc, name)

    return grpc.stream_stream_rpc_method_handler(stream_stream)


class _Reaper:
    """Times half-open handshakes out on a sync server even when no new handshake arrives to
    reap them (each holds a worker thread, blocked reading the next leg). One daemon thread per
    interceptor, started with the first handshake; it ends when the interceptor is dropped."""

    def __init__(self, limiter: HandshakeLimiter) -> None:
        self._limiter = weakref.ref(limiter)
        self._interval = max(0.5, limiter.timeout / 2)
        self._started = False
        self._lock = threading.Lock()

    def ensure_running(self) -> None:
        if self._started:
            return
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, name="rpcsec-reaper", daemon=True).start()

    def _run(self) -> None:
        pause = threading.Event()
        while not pause.wait(self._interval):
            limiter = self._limiter()
            if limiter is None:
                return
            limiter.reap()
            del limiter


# The handshake's stream ends only once the client half-closed (it does as soon as the last
# leg arrives): a proxy seeing the server end a bidi stream whose request side is open may reset
# it (haproxy 2.6 does: RST_STREAM CANCEL), and the reset can overtake that last leg. A client
# that never half-closes is a half-open handshake: the limiter's timeout cancels it.


def _negotiate_handler(security: ServerSecurity) -> grpc.RpcMethodHandler:
    reaper = _Reaper(security.limiter)

    def negotiate(request_iterator: Iterator[bytes], context: Any) -> Iterator[bytes]:
        reaper.ensure_running()
        peer = security.admission_key(context.peer(), context.invocation_metadata())
        try:
            ticket = security.limiter.admit(peer, context.cancel)
        except BusyError as exc:
            refuse(context, exc, NEGOTIATE_METHOD)
        negotiation = security.negotiation(peer)
        done = False
        try:
            for raw in request_iterator:
                reply, done = negotiation.receive_bytes(raw)
                yield reply
                if done:
                    if negotiation.error is None:
                        for _ in request_iterator:  # wait for the client's half-close (see above)
                            break
                    break
        except grpc.RpcError:
            pass  # the client cancelled, or the handshake timed out and was cancelled
        finally:
            security.limiter.done(ticket)
            if not done:
                negotiation.abandon()
        if negotiation.error is not None:
            refuse(context, negotiation.error, NEGOTIATE_METHOD)

    return grpc.stream_stream_rpc_method_handler(negotiate)


def _release_handler(security: ServerSecurity) -> grpc.RpcMethodHandler:
    method = ServerMethod(RELEASE_METHOD, None, None, authorize=False)

    def release(request: bytes, context: Any) -> bytes:
        try:
            call, _ = security.open_unary(
                context.invocation_metadata(), method, request, None, ServerCall
            )
            response = call.seal_response(b"")
            security.release(call)
            return response
        except SecurityError as exc:
            refuse(context, exc, RELEASE_METHOD)

    return grpc.unary_unary_rpc_method_handler(release)


class HandlerCache:
    """Wrapped handlers per method, so no closure is rebuilt per call. Bounded: a generic
    handler that accepts any method name cannot make it grow without limit."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._lock = threading.Lock()

    def get(
        self,
        method: str,
        handler: grpc.RpcMethodHandler,
        build: Callable[[ServerMethod, grpc.RpcMethodHandler], grpc.RpcMethodHandler],
    ) -> grpc.RpcMethodHandler:
        cached = self._entries.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        server_method = ServerMethod(
            method, handler.request_deserializer, handler.response_serializer
        )
        wrapped = build(server_method, handler)
        with self._lock:
            if len(self._entries) < _MAX_CACHED_HANDLERS or method in self._entries:
                self._entries[method] = (handler, wrapped)
        return wrapped


class InterceptorBase:
    """What the sync and asyncio interceptors share: the server's security state (context table,
    handshake limits, policy), the handshake service's handlers, and the per-method cache of
    wrapped handlers. Subclasses say how to build the handshake handlers and wrap a method."""

    accepts_async_store = False  # an AsyncReplayStore: only the asyncio server awaits one

    def __init__(
        self,
        credentials: Credentials | Iterable[Credentials] | None = None,
        policy: AuthorizationPolicy | None = None,
        *,
        required: ContextReq = ContextReq.INTEGRITY | ContextReq.REPLAY_DETECT,
        max_contexts: int = DEFAULT_MAX_CONTEXTS,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        max_lifetime: float | None = None,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        max_handshakes_per_peer: int = DEFAULT_MAX_HANDSHAKES_PER_PEER,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        replay_window: int = DEFAULT_WINDOW,
        package_options: Mapping[str, Mapping[str, Any]] | None = None,
        ticket_keys: Any = None,
        replay_store: Any = None,
        trusted_proxies: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``trusted_proxies``: addresses or networks of the L7 proxies in front; the
        per-client handshake limit then keys on the client address they forward
        (``_admission``), otherwise on the direct peer's host.
        ``ticket_keys``: the service's ``rpcsec.session.TicketKeyRing`` or its directory
        (``rpcsec keyring``), shared by every replica; None generates one for this process.
        ``replay_store``: the ``ReplayStore`` every replica shares (``RedisReplayStore``);
        None: one in this process's memory. Handles are tickets any replica with the ring
        opens (see ``rpcsec.grpc._tickets``)."""
        settings = effective_settings(credentials=credentials, policy=policy)
        self.security = build_security(
            credentials if credentials is not None else settings.inbound_credentials(),
            settings.server_policy(),
            required=required,
            max_contexts=max_contexts,
            idle_timeout=idle_timeout,
            max_lifetime=max_lifetime,
            max_handshakes=max_handshakes,
            max_handshakes_per_peer=max_handshakes_per_peer,
            handshake_timeout=handshake_timeout,
            replay_window=replay_window,
            package_options=package_options,
            ticket_keys=ticket_keys,
            replay_store=replay_store,
            trusted_proxies=trusted_proxies,
            clock=clock,
        )
        tickets = self.security.tickets
        if tickets is not None and tickets.asynchronous and not self.accepts_async_store:
            raise TypeError(
                "replay_store must be a synchronous ReplayStore (RedisReplayStore, not "
                "AsyncRedisReplayStore) for a synchronous server; rpcsec.grpc.aio's server "
                "takes either"
            )
        self._negotiate, self._release = self._handshake_handlers(self.security)
        self._cache = HandlerCache()

    @property
    def negotiate_handler(self) -> grpc.RpcMethodHandler:
        return self._negotiate

    @property
    def release_handler(self) -> grpc.RpcMethodHandler:
        return self._release

    def protected(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` for ``method`` with the protected behavior (built now, once)."""
        return self._build(
            ServerMethod(method, handler.request_deserializer, handler.response_serializer),
            handler,
        )

    def cached(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``protected`` through the bounded per-method cache (handlers found per call)."""
        return self._cache.get(method, handler, self._build)

    @property
    def contexts(self) -> ContextTable:
        return self.security.table

    @property
    def handshakes(self) -> HandshakeLimiter:
        return self.security.limiter

    def _own_handler(self, method: str) -> grpc.RpcMethodHandler | None:
        """The handshake service's handler for ``method``, if it is one of ours."""
        if method == NEGOTIATE_METHOD:
            return self._negotiate
        if method == RELEASE_METHOD:
            return self._release
        return None

    def _handshake_handlers(
        self, security: ServerSecurity
    ) -> tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]:
        raise NotImplementedError

    def _build(self, method: ServerMethod, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class SecurityInterceptor(InterceptorBase, grpc.ServerInterceptor):
    """Authenticated RPC for a ``grpc.server``: serves the handshake and protects every call.

    ``credentials``: one INBOUND handle or several (one per package the server accepts).
    ``policy``: an ``AuthorizationPolicy``; None admits every authenticated caller (handlers
    then do access checks as the caller). ``required``: attributes every context must have
    (INTEGRITY and REPLAY_DETECT always). The table, handshake and lifetime limits bound what
    clients can make the server hold; ``clock`` drives every expiry.

    A sync server holds one worker thread per handshake in progress: keep ``max_handshakes``
    below the server's ``max_workers`` (``secure_server`` does). A half-open handshake is
    cancelled after ``handshake_timeout``, by the next handshake or by a background reaper.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        own = self._own_handler(method)
        if own is not None:
            return own
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return self.cached(method, handler)

    def _handshake_handlers(
        self, security: ServerSecurity
    ) -> tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]:
        return _negotiate_handler(security), _release_handler(security)

    def _build(self, method: ServerMethod, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return sync_handler(self.security, method, handler)


class ProtectedServer(Registration, grpc.Server):
    """A ``grpc.Server`` whose handlers are protected when registered (``_registration``);
    what ``secure_server()`` returns. ``security_interceptor``: its security state (contexts,
    handshakes), the same object a ``SecurityInterceptor`` user would hold."""

    def __init__(self, server: grpc.Server, interceptor: SecurityInterceptor) -> None:
        self._server = server
        self.security_interceptor = interceptor
        self._register_handshake()

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float | None) -> Any:
        return self._server.stop(grace)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)


def secure_server(
    credentials: Credentials | Iterable[Credentials] | None = None,
    policy: AuthorizationPolicy | None = None,
    *,
    max_workers: int = 32,
    options: Iterable[tuple[str, Any]] | None = None,
    interceptors: Iterable[grpc.ServerInterceptor] = (),
    **security_options: Any,
) -> ProtectedServer:
    """A ``grpc.server`` serving the handshake whose every registered handler is protected
    when it is registered (``_registration``: no interceptor runs per call; ``interceptors``
    are the application's own, after rpcsec's verification). Generated
    ``add_XServicer_to_server(servicer, server)`` works unchanged.

    Handshakes in progress default to half the worker threads, so half-open handshakes can
    never starve the calls.
    """
    from concurrent import futures

    security_options.setdefault("max_handshakes", max(1, max_workers // 2))
    interceptor = SecurityInterceptor(credentials, policy, **security_options)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpcsec"),
        interceptors=list(interceptors),
        options=list(options or ()),
    )
    return ProtectedServer(server, interceptor)
