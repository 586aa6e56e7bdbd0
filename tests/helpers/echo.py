"""The echo service the gRPC binding's tests run: all four RPC kinds, sync and async.

Each handler answers with who it ran as (``rpcsec.current_token()``) and the call's protection
level, and counts how often it was reached, so a test can assert that a refused call never
reached it. A few request texts trigger behaviors the tests need: ``deny`` raises
``AccessDeniedError`` from the handler, ``check`` runs ``access_check`` as the caller,
``abort`` ends the call NOT_FOUND like an ordinary application error, ``onward`` calls the
``onward`` hook (an onward call made while impersonating the caller).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import echo_pb2
import echo_pb2_grpc
import grpc
import grpc.aio

import rpcsec
from rpcsec.security import AccessMask, Ace, SecurityDescriptor, access_check
from rpcsec.sspi import AccessDeniedError

__all__ = ["AdminServicer", "AsyncEchoServicer", "EchoServicer", "reply"]

# Only alice may READ the resource the ``check`` request opens (the seed's access check on a
# resource happens when the server opens it as the client).
RESOURCE_OWNER = "owner"


def descriptor_for(principal: str) -> SecurityDescriptor:
    return SecurityDescriptor.build(RESOURCE_OWNER, [Ace.allow(principal, AccessMask.READ)])


def reply(text: str, index: int = 0) -> echo_pb2.EchoResponse:
    token = rpcsec.current_token()
    return echo_pb2.EchoResponse(
        text=text,
        index=index,
        principal=token.principal if token is not None else "",
        protection_level=token.protection_level.name if token is not None else "",
    )


class _Counter:
    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def hit(self) -> None:
        with self._lock:
            self.calls += 1


class EchoServicer(echo_pb2_grpc.EchoServicer):
    """Synchronous handlers (for ``grpc.server``, and for ``grpc.aio.server`` thread pools)."""

    def __init__(
        self,
        onward: Callable[[echo_pb2.EchoRequest], echo_pb2.EchoResponse] | None = None,
        readable_by: str = "",
    ) -> None:
        self.counter = _Counter()
        self.onward = onward
        self.readable_by = readable_by

    @property
    def calls(self) -> int:
        return self.counter.calls

    def _special(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoResponse:
        if request.text == "deny":
            raise AccessDeniedError("the handler refuses")
        if request.text == "check":
            access_check(descriptor_for(self.readable_by), AccessMask.READ)
        if request.text == "abort":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        if request.text == "onward":
            assert self.onward is not None
            return self.onward(request)
        return reply(request.text)

    def Say(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoResponse:
        self.counter.hit()
        return self._special(request, context)

    def Repeat(self, request: echo_pb2.EchoRequest, context: Any) -> Iterator[Any]:
        self.counter.hit()
        for index in range(request.repeat):
            yield reply(f"{request.text}{index}", index)

    def Collect(self, request_iterator: Iterator[Any], context: Any) -> echo_pb2.EchoResponse:
        self.counter.hit()
        texts = [request.text for request in request_iterator]
        return reply("".join(texts), len(texts))

    def Chat(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
        self.counter.hit()
        for index, request in enumerate(request_iterator):
            yield reply(request.text.upper(), index)


class AsyncEchoServicer(echo_pb2_grpc.EchoServicer):
    """Async handlers: coroutines, async generators, and (``Chat``) the reader/writer API."""

    def __init__(
        self,
        onward: Callable[[echo_pb2.EchoRequest], Awaitable[echo_pb2.EchoResponse]] | None = None,
        readable_by: str = "",
        writer_api: bool = True,
    ) -> None:
        self.counter = _Counter()
        self.onward = onward
        self.readable_by = readable_by
        self.writer_api = writer_api

    @property
    def calls(self) -> int:
        return self.counter.calls

    async def Say(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoResponse:
        self.counter.hit()
        if request.text == "deny":
            raise AccessDeniedError("the handler refuses")
        if request.text == "check":
            access_check(descriptor_for(self.readable_by), AccessMask.READ)
        if request.text == "abort":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        if request.text == "onward":
            assert self.onward is not None
            return await self.onward(request)
        return reply(request.text)

    async def Repeat(self, request: echo_pb2.EchoRequest, context: Any) -> AsyncIterator[Any]:
        self.counter.hit()
        for index in range(request.repeat):
            yield reply(f"{request.text}{index}", index)

    async def Collect(self, request_iterator: Any, context: Any) -> echo_pb2.EchoResponse:
        self.counter.hit()
        texts = [request.text async for request in request_iterator]
        return reply("".join(texts), len(texts))

    async def Chat(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        # The reader / writer API: read() and write() on the servicer context.
        self.counter.hit()
        index = 0
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            await context.write(reply(request.text.upper(), index))
            index += 1


class AdminServicer(echo_pb2_grpc.AdminServicer):
    def __init__(self) -> None:
        self.counter = _Counter()

    def Shutdown(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoResponse:
        self.counter.hit()
        return reply("shutting down")


class AsyncAdminServicer(echo_pb2_grpc.AdminServicer):
    def __init__(self) -> None:
        self.counter = _Counter()

    async def Shutdown(self, request: echo_pb2.EchoRequest, context: Any) -> Any:
        self.counter.hit()
        return reply("shutting down")


__all__ += ["AsyncAdminServicer", "descriptor_for"]
