"""WSGI middleware: HTTP Negotiate (RFC 4559) in front of any WSGI application (PEP 3333).

::

    application = NegotiateMiddleware(flask_app.wsgi_app, server_credentials)

The request is authenticated before the application is called (``_httpgate``); the
application then runs impersonating the caller -- while it is called *and* while the server
iterates its response body, so a streaming generator runs as the caller too. The caller is in
``environ["rpcsec.caller"]`` and ``rpcsec.current_token()``; the final ``WWW-Authenticate``
(mutual-auth token) is added to the response headers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rpcsec.security import impersonate
from rpcsec.sspi import ContextReq, Credentials

from ._httpgate import Admission, NegotiateGate, Refusal

__all__ = ["CALLER_ENVIRON_KEY", "NegotiateMiddleware"]

CALLER_ENVIRON_KEY = "rpcsec.caller"
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_REASONS = {400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden"}


class NegotiateMiddleware:
    """Authenticate each request, then run ``app`` as the caller."""

    def __init__(
        self,
        app: WSGIApp,
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

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        header = environ.get("HTTP_AUTHORIZATION")
        authorization = [header] if isinstance(header, str) else []
        decision = self.gate.admit(authorization, str(environ.get("REMOTE_ADDR", "-")))
        if isinstance(decision, Refusal):
            headers = [
                *decision.headers,
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(decision.body))),
            ]
            start_response(_REASONS.get(decision.status, f"{decision.status} Refused"), headers)
            return [decision.body]
        return _AsCaller(self.app, environ, start_response, decision)


class _AsCaller:
    """The application's response iterable, every step of it run as the caller."""

    def __init__(
        self,
        app: WSGIApp,
        environ: dict[str, Any],
        start_response: StartResponse,
        admission: Admission,
    ) -> None:
        self._admission = admission
        extra = list(admission.headers)

        def start_with_token(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            return start_response(status, [*headers, *extra], *exc)

        environ = dict(environ)
        environ[CALLER_ENVIRON_KEY] = admission.caller
        try:
            with impersonate(admission.caller):
                self._result = app(environ, start_with_token)
        except BaseException:
            admission.close()
            raise
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        with impersonate(self._admission.caller):
            if self._iterator is None:
                self._iterator = iter(self._result)
            return next(self._iterator)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                with impersonate(self._admission.caller):
                    close()
        finally:
            self._admission.close()
