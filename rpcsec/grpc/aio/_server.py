"""``rpcsec.grpc.aio.SecurityInterceptor``: the server side of the binding for ``grpc.aio``.

The same admission, verification, policy and impersonation as the sync interceptor (see
``rpcsec.grpc._server``). Async handlers get async wrapped behaviors that impersonate inside the
RPC's own task; synchronous handlers registered on an aio server get the sync wrapped behaviors,
which the aio server runs in its thread pool, so impersonation is set in that thread, where the
handler runs (a context variable set in the interceptor would not arrive there). Handshakes
are served by a coroutine: a half-open one holds no thread and times out on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, NoReturn

import grpc
import grpc.aio

from rpcsec.security import ImpersonationScope, impersonate
from rpcsec.security._impersonation import run_as_async
from rpcsec.sspi import (
    BusyError,
    ContextExpiredError,
    Credentials,
    SecurityError,
)

from .._calls import Inbound, Outbound
from .._policy import AuthorizationPolicy
from .._registration import Registration
from .._server import (
    BadRequestMessage,
    InterceptorBase,
    deserialize,
    log_refusal,
    sync_handler,
)
from .._server_core import ServerCall, ServerMethod, ServerSecurity, not_run_token
from .._servicer_context import AioVerifiedContext
from .._status import details_for, passthrough_status, status_for, trailing_metadata_for
from .._wire import NEGOTIATE_METHOD, OUTCOME_OK, RELEASE_METHOD

__all__ = ["ProtectedServer", "SecurityInterceptor", "secure_server"]

_LOG = logging.getLogger("rpcsec.grpc")
EOF = grpc.aio.EOF


async def refuse(context: Any, error: SecurityError, method: str) -> NoReturn:
    log_refusal(method, context, error, error.reason)
    await context.abort(
        status_for(error),
        details_for(error.reason),
        trailing_metadata_for(error.reason, not_run_token(error)),
    )
    raise AssertionError("abort() returned")  # pragma: no cover


async def pass_through(context: Any, error: grpc.RpcError, method: str) -> NoReturn:
    status = passthrough_status(error)
    if status is None:
        raise error
    code, reason = status
    log_refusal(method, context, error, reason)
    await context.abort(code, details_for(reason), trailing_metadata_for(reason))
    raise AssertionError("abort() returned")  # pragma: no cover


async def bad_request(context: Any, error: BadRequestMessage, method: str) -> NoReturn:
    log_refusal(method, context, error, "bad-request")
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, "request message could not be deserialized"
    )
    raise AssertionError("abort() returned")  # pragma: no cover


def _revert(scope: ImpersonationScope) -> None:
    # An abandoned async generator is finalized in another task's context; that task never
    # held the token, so there is nothing to revert there.
    with contextlib.suppress(ValueError):
        scope.revert()


async def _verified_requests(
    raw: AsyncIterable[bytes], inbound: Inbound, method: ServerMethod
) -> AsyncIterator[Any]:
    async for token in raw:
        data = inbound.open(token)
        if data is None:
            async for extra in raw:
                inbound.open(extra)
            return
        yield deserialize(method, data)
    inbound.finish()


def _raise_stream_failure(inbound: Inbound | None) -> None:
    if inbound is not None and isinstance(inbound.error, SecurityError):
        raise inbound.error


class _ProtectedContext(AioVerifiedContext):
    """The servicer context an async streaming handler sees: ``read()`` opens each request and
    ``write()`` seals each response; ``invocation_metadata()`` is the verified metadata;
    everything else is the real context."""

    __slots__ = ("_eof", "_inbound", "_method", "_outbound")

    def attach(
        self, method: ServerMethod, inbound: Inbound | None, outbound: Outbound | None
    ) -> None:
        """The streams ``read()`` / ``write()`` use (the core made the call without them)."""
        self._method = method
        self._inbound = inbound
        self._outbound = outbound
        self._eof = False

    async def read(self) -> Any:
        inbound = self._inbound
        if inbound is None:
            raise RuntimeError("read() is only for request-streaming methods")
        if self._eof:
            return EOF
        token = await self._context.read()
        if token is EOF:
            self._eof = True
            inbound.finish()
            return EOF
        data = inbound.open(token)
        if data is None:
            extra = await self._context.read()
            if extra is not EOF:
                inbound.open(extra)
            self._eof = True
            return EOF
        return deserialize(self._method, data)

    async def write(self, message: Any) -> None:
        outbound = self._outbound
        if outbound is None:
            raise RuntimeError("write() is only for response-streaming methods")
        await self._context.write(outbound.seal(self._method.serialize(message)))


async def _open_unary(
    security: ServerSecurity,
    metadata: Any,
    method: ServerMethod,
    request: bytes,
    context: Any,
    cls: type[ServerCall],
) -> tuple[Any, bytes]:
    """``ServerSecurity.open_unary`` for the event loop: the same sans-IO verification and
    policy, with an ``AsyncReplayStore``'s claim awaited so the loop keeps serving while the
    store answers (a synchronous store answers at once: the one-call path, as on a sync
    server)."""
    tickets = security.tickets
    if tickets is None or not tickets.asynchronous:
        return security.open_unary(metadata, method, request, context, cls)
    try:
        call, payload = security.verify_unary(metadata, method, request, context, cls)
    except SecurityError as exc:
        await _refuse_stale(security, exc, method)
        raise
    await _admit(security, call, method)
    return call, payload


async def _open_call(
    security: ServerSecurity,
    metadata: Any,
    method: ServerMethod,
    context: Any,
    cls: type[ServerCall],
) -> Any:
    try:
        call = security.verify_call(metadata, method, context, cls)
    except SecurityError as exc:
        await _refuse_stale(security, exc, method)
        raise
    await _admit(security, call, method)
    return call


async def _admit(security: ServerSecurity, call: ServerCall, method: ServerMethod) -> None:
    claim = security.claim_of(call)
    if claim is not None:
        assert security.tickets is not None
        await security.tickets.claim_async(*claim)
    security.authorize(call, method)


async def _refuse_stale(
    security: ServerSecurity, error: SecurityError, method: ServerMethod
) -> None:
    claim = security.not_run_claim(error)
    claimed = True
    if claim is not None:
        assert security.tickets is not None
        try:
            await security.tickets.claim_async(*claim)
        except SecurityError:
            claimed = False
    security.sign_not_run(error, method, claimed)


def _is_async(behavior: Any) -> bool:
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


def async_handler(
    security: ServerSecurity, method: ServerMethod, handler: grpc.RpcMethodHandler
) -> grpc.RpcMethodHandler:
    """``handler`` (async behavior) with an async bytes-in, bytes-out protected behavior."""
    name = method.method
    tickets = security.tickets
    synchronous_store = tickets is None or not tickets.asynchronous
    open_unary = security.open_unary
    request_deserializer = method.request_deserializer
    response_serializer = method.response_serializer

    if not handler.request_streaming and not handler.response_streaming:
        app_uu = handler.unary_unary

        async def unary_unary(request: bytes, context: Any) -> bytes:
            try:
                metadata = context.invocation_metadata()
                if synchronous_store:  # the one-call admission, as on a sync server
                    view, data = open_unary(metadata, method, request, context, AioVerifiedContext)
                else:
                    view, data = await _open_unary(
                        security, metadata, method, request, context, AioVerifiedContext
                    )
                if request_deserializer is not None:
                    data = deserialize(method, data)
                response = await run_as_async(view._token, app_uu, data, view)
                if response is None:
                    view.seal_status()
                    return b""
                if response_serializer is not None:
                    response = response_serializer(response)
                if view._outcome is None:
                    return view.seal_response(response, OUTCOME_OK)
                return view.respond(response)
            except SecurityError as exc:
                await refuse(context, exc, name)
            except grpc.RpcError as exc:
                await pass_through(context, exc, name)
            except BadRequestMessage as exc:
                await bad_request(context, exc, name)

        return grpc.unary_unary_rpc_method_handler(unary_unary)

    if not handler.response_streaming:
        app_su = handler.stream_unary

        async def stream_unary(request_iterator: AsyncIterable[bytes], context: Any) -> bytes:
            try:
                proxy = await _open_call(
                    security, context.invocation_metadata(), method, context, _ProtectedContext
                )
                inbound = proxy.inbound()
                requests = _verified_requests(request_iterator, inbound, method)
                proxy.attach(method, inbound, None)
                with impersonate(proxy._token):
                    response = await app_su(requests, proxy)
                _raise_stream_failure(inbound)
                if response is None:
                    proxy.seal_status()
                    return b""
                return proxy.respond(method.serialize(response))
            except SecurityError as exc:
                await refuse(context, exc, name)
            except grpc.RpcError as exc:
                await pass_through(context, exc, name)
            except BadRequestMessage as exc:
                await bad_request(context, exc, name)

        return grpc.stream_unary_rpc_method_handler(stream_unary)

    request_streaming = handler.request_streaming
    app = handler.stream_stream if request_streaming else handler.unary_stream

    async def admit(request: Any, context: Any) -> tuple[Any, Any, _ProtectedContext, Any]:
        metadata = context.invocation_metadata()
        inbound = None
        if request_streaming:
            proxy = await _open_call(security, metadata, method, context, _ProtectedContext)
            inbound = proxy.inbound()
            argument: Any = _verified_requests(request, inbound, method)
        else:
            proxy, data = await _open_unary(
                security, metadata, method, request, context, _ProtectedContext
            )
            argument = deserialize(method, data)
        proxy.attach(method, inbound, proxy.outbound())
        return proxy, argument, proxy, inbound

    if inspect.isasyncgenfunction(app):

        async def streaming(request: Any, context: Any) -> AsyncIterator[bytes]:
            try:
                call, argument, proxy, inbound = await admit(request, context)
                outbound = proxy._outbound
                assert outbound is not None
                scope = impersonate(call.token)
                try:
                    async for response in app(argument, proxy):
                        _raise_stream_failure(inbound)
                        yield outbound.seal(method.serialize(response))
                finally:
                    _revert(scope)
                _raise_stream_failure(inbound)
                yield proxy.end_stream(outbound)
            except SecurityError as exc:
                await refuse(context, exc, name)
            except grpc.RpcError as exc:
                await pass_through(context, exc, name)
            except BadRequestMessage as exc:
                await bad_request(context, exc, name)

        behavior: Callable[..., Any] = streaming
    else:
        # The reader / writer API: the handler writes through the protected context.

        async def streaming_writer(request: Any, context: Any) -> None:
            try:
                call, argument, proxy, inbound = await admit(request, context)
                with impersonate(call.token):
                    await app(argument, proxy)
                _raise_stream_failure(inbound)
                outbound = proxy._outbound
                assert outbound is not None
                await context.write(proxy.end_stream(outbound))
            except SecurityError as exc:
                await refuse(context, exc, name)
            except grpc.RpcError as exc:
                await pass_through(context, exc, name)
            except BadRequestMessage as exc:
                await bad_request(context, exc, name)

        behavior = streaming_writer
    if request_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior)
    return grpc.unary_stream_rpc_method_handler(behavior)


def _negotiate_handler(security: ServerSecurity) -> grpc.RpcMethodHandler:
    limiter = security.limiter

    async def negotiate(
        request_iterator: AsyncIterable[bytes], context: Any
    ) -> AsyncIterator[bytes]:
        peer = security.admission_key(context.peer(), context.invocation_metadata())
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def cancel() -> None:
            if task is not None:
                loop.call_soon_threadsafe(task.cancel)

        try:
            ticket = limiter.admit(peer, cancel)
        except BusyError as exc:
            await refuse(context, exc, NEGOTIATE_METHOD)
        negotiation = security.negotiation(peer)
        done = False
        try:
            messages = request_iterator.__aiter__()
            while not done:
                try:
                    raw = await asyncio.wait_for(messages.__anext__(), limiter.timeout)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    negotiation.refuse(ContextExpiredError("handshake timed out half-open"))
                    break
                reply, done = negotiation.receive_bytes(raw)
                yield reply
            if done and negotiation.error is None:
                # Wait for the client's half-close before ending (see the sync server's
                # negotiate: a proxy may reset a stream ended while its request side is open);
                # bounded by the handshake timeout.
                with contextlib.suppress(StopAsyncIteration, TimeoutError):
                    await asyncio.wait_for(messages.__anext__(), limiter.timeout)
        finally:
            limiter.done(ticket)
            if not done:
                negotiation.abandon()
        if negotiation.error is not None:
            await refuse(context, negotiation.error, NEGOTIATE_METHOD)

    return grpc.stream_stream_rpc_method_handler(negotiate)


def _release_handler(security: ServerSecurity) -> grpc.RpcMethodHandler:
    method = ServerMethod(RELEASE_METHOD, None, None, authorize=False)

    async def release(request: bytes, context: Any) -> bytes:
        try:
            call, _ = await _open_unary(
                security, context.invocation_metadata(), method, request, None, ServerCall
            )
            response = call.seal_response(b"")
            revocation = security.release_here(call)
            if revocation is not None:
                assert security.tickets is not None
                await security.tickets.revoke_async(*revocation)
            return response
        except SecurityError as exc:
            await refuse(context, exc, RELEASE_METHOD)

    return grpc.unary_unary_rpc_method_handler(release)


def _behavior(handler: grpc.RpcMethodHandler) -> Any:
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )


class SecurityInterceptor(InterceptorBase, grpc.aio.ServerInterceptor):
    """Authenticated RPC for a ``grpc.aio.server``; the arguments are those of
    ``rpcsec.grpc.SecurityInterceptor``."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        self.bind_loop()
        method = handler_call_details.method
        own = self._own_handler(method)
        if own is not None:
            return own
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # type: ignore[return-value]  # grpc answers UNIMPLEMENTED
        return self._cache.get(method, handler, self._build)

    accepts_async_store = True

    def bind_loop(self) -> None:
        """The event loop this server runs on (the loop an ``AsyncReplayStore`` answers on,
        for synchronous handlers run in worker threads)."""
        tickets = self.security.tickets
        if tickets is not None and tickets.loop is None and tickets.asynchronous:
            tickets.loop = asyncio.get_running_loop()

    def _handshake_handlers(
        self, security: ServerSecurity
    ) -> tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]:
        return _negotiate_handler(security), _release_handler(security)

    def _build(self, method: ServerMethod, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if _is_async(_behavior(handler)):
            return async_handler(self.security, method, handler)
        return sync_handler(self.security, method, handler)


class ProtectedServer(Registration, grpc.aio.Server):
    """The asyncio ``ProtectedServer`` (``rpcsec.grpc._registration``)."""

    def __init__(self, server: grpc.aio.Server, interceptor: SecurityInterceptor) -> None:
        self._server = server
        self.security_interceptor = interceptor
        self._register_handshake()

    async def start(self) -> None:
        self.security_interceptor.bind_loop()
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._server.wait_for_termination(timeout)


def secure_server(
    credentials: Credentials | Iterable[Credentials] | None = None,
    policy: AuthorizationPolicy | None = None,
    *,
    options: Iterable[tuple[str, Any]] | None = None,
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    migration_thread_pool: Any = None,
    **security_options: Any,
) -> ProtectedServer:
    """``grpc.aio.server`` whose every registered handler is protected when registered (no
    interceptor per call; ``interceptors`` are the application's own)."""
    interceptor = SecurityInterceptor(credentials, policy, **security_options)
    server = grpc.aio.server(
        migration_thread_pool=migration_thread_pool,
        interceptors=list(interceptors),
        options=list(options or ()),
    )
    return ProtectedServer(server, interceptor)
