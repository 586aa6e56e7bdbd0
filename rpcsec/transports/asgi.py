"""ASGI middleware: HTTP Negotiate (RFC 4559) in front of any ASGI application.

::

    app = NegotiateMiddleware(starlette_app, server_credentials)   # uvicorn module:app

Every HTTP request is authenticated before the application sees it (``_httpgate``); the
application then runs impersonating the caller, so ``rpcsec.current_token()`` and
``access_check`` work inside endpoints (also sync endpoints that Starlette runs in a thread
pool: the impersonation is a context variable, which ``anyio.to_thread`` copies). The caller is
also in ``scope["rpcsec.caller"]``; delegated credentials (``curl --delegation always``) are in
``current_token().delegated_credentials``. The final ``WWW-Authenticate`` (the server's
mutual-auth token) is added to the application's response. WebSocket scopes are refused
(403) rather than passed through unauthenticated; lifespan passes through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from rpcsec.security import impersonate
from rpcsec.sspi import ContextReq, Credentials

from ._httpgate import Admission, NegotiateGate, Refusal

__all__ = ["CALLER_SCOPE_KEY", "NegotiateMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CALLER_SCOPE_KEY = "rpcsec.caller"


class NegotiateMiddleware:
    """Authenticate each request, then run ``app`` as the caller."""

    def __init__(
        self,
        app: ASGIApp,
        credentials: Credentials,
        *,
        standard: bool = True,
        standard_required: ContextReq = ContextReq.NONE,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.gate = NegotiateGate(
            credentials, standard=standard, standard_required=standard_required, options=options
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await self.app(scope, receive, send)
            return
        if kind != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        authorization = [
            value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name.lower() == b"authorization"
        ]
        client = scope.get("client") or ("-", 0)
        # GSS calls block (replay cache I/O): keep them off the event loop
        decision = await asyncio.to_thread(self.gate.admit, authorization, str(client[0]))
        if isinstance(decision, Refusal):
            await _refuse(send, decision)
            return
        try:
            await self._run(scope, receive, send, decision)
        finally:
            decision.close()

    async def _run(self, scope: Scope, receive: Receive, send: Send, admission: Admission) -> None:
        extra = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in admission.headers]

        async def send_with_token(message: Message) -> None:
            if message.get("type") == "http.response.start" and extra:
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        scope = dict(scope)
        scope[CALLER_SCOPE_KEY] = admission.caller
        with impersonate(admission.caller):
            await self.app(scope, receive, send_with_token)


async def _refuse(send: Send, refusal: Refusal) -> None:
    headers = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in refusal.headers]
    headers += [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(refusal.body)).encode()),
    ]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": refusal.body})
