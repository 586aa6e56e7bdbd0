"""httpauth: HTTP Negotiate-style authentication with ``http.server`` and ``http.client``.

The seed's "httpauth" SDK sample (httpget.c / httpauth.c) for any rpcsec security package:
the client and server pass the package's tokens in ``Authorization`` / ``WWW-Authenticate``
headers (RFC 4559 shape; the exchange and wire details are in ``_httpexchange``), the server
runs each request impersonating the caller, and the response comes back signed with the
context so the client can tell it was not altered.

Server::

    class Documents(AuthHTTPRequestHandler):
        def handle_authenticated(self, request: Request) -> Response:
            access_check(DESCRIPTORS[request.path], AccessMask.READ)   # as the caller
            return Response(200, DOCUMENTS[request.path])

    with AuthHTTPServer(("0.0.0.0", 8080), Documents, server_creds) as server:
        server.serve_forever()

Client::

    result = http_get("http://server:8080/doc", alice_creds, target_name="HTTP@server")
    result.status, result.body, result.principal      # principal: who the server says you are

Scheme names: ``Negotiate`` (negotiate, kerberos), ``NTLM`` (ntlm), ``Rpcsec-X509`` (x509) and
``Rpcsec-<NAME>`` for other packages (see ``_authheader.scheme_for``).
"""

from __future__ import annotations

import email.message
import http.client
import http.server
import logging
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from rpcsec.security import AccessToken, impersonate
from rpcsec.security import _audit as audit
from rpcsec.sspi import (
    AccessDeniedError,
    BusyError,
    ContextReq,
    ContextState,
    Credentials,
    CredentialUse,
    ImpersonationLevel,
    InvalidTokenError,
    NoImpersonationError,
    ProtectionLevel,
    SecurityError,
    ServerContext,
    initialize_security_context,
)

from ._authheader import encode_token, scheme_for
from ._errors import FrameTooLargeError, MalformedHeaderError, TruncatedFrameError
from ._httpexchange import (
    EXTENSIONS_HEADER,
    MAX_LEGS,
    PRINCIPAL_HEADER,
    REASON_HEADER,
    SIGNATURE_HEADER,
    SIGNED_RESPONSE,
    ClientExchange,
    OutcomeKind,
    ServerExchange,
    decode_principal,
    encode_principal,
    response_aad,
    sign_response,
    wants_signed_response,
)
from ._requirements import client_requirements, server_requirements
from ._serving import BoundedConnections

__all__ = [
    "PRINCIPAL_HEADER",
    "SIGNATURE_HEADER",
    "AuthHTTPRequestHandler",
    "AuthHTTPServer",
    "HttpResult",
    "Request",
    "Response",
    "http_get",
    "http_request",
    "scheme_for",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 1 << 20
DEFAULT_CLIENT_MAX_BODY = 16 << 20


@dataclass(frozen=True, slots=True)
class Request:
    """An authenticated request, as the handler sees it."""

    method: str
    path: str
    headers: email.message.Message = field(repr=False)
    body: bytes = field(repr=False)
    caller: AccessToken


@dataclass(frozen=True, slots=True)
class Response:
    """What a handler returns; the base class adds the authentication headers and signs it."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


class AuthHTTPRequestHandler(http.server.BaseHTTPRequestHandler):
    """Authenticates every request, then calls ``handle_authenticated`` as the caller.

    Subclasses override ``handle_authenticated``. Inside it ``rpcsec.current_token()`` is the
    caller, so ``access_check`` works without passing the token; ``AccessDeniedError`` and
    ``NoImpersonationError`` become 403, other ``SecurityError``\\ s 403 with their reason,
    anything else 500 (logged here, never sent).
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: AuthHTTPServer
    server_version = "rpcsec-httpauth"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout)
        self._exchange = ServerExchange(
            self.server.credentials,
            required=self.server.required,
            options=self.server.options,
            max_legs=MAX_LEGS,
            standard=self.server.standard,
        )

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._exchange.close()

    def handle_authenticated(self, request: Request) -> Response:
        """Serve one authenticated request (runs impersonating ``request.caller``)."""
        return Response(404, b"not found\n")

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # -- the exchange --------------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding"):
            self._plain(411, b"length required\n", close=True)
            return None
        raw = self.headers.get_all("Content-Length") or []
        if not raw:
            return b""
        if len(raw) > 1 or not raw[0].strip().isdigit():
            self._plain(400, b"bad content-length\n", close=True)
            return None
        length = int(raw[0])
        if length > self.server.max_body:
            self._plain(413, b"request body too large\n", close=True)
            return None
        return self.rfile.read(length)

    def _dispatch(self) -> None:
        body = self._read_body()
        if body is None:
            return
        outcome = self._exchange.authenticate(self.headers.get_all("Authorization") or [])
        if outcome.kind is not OutcomeKind.AUTHENTICATED:
            if outcome.error is not None:
                log.info(
                    "httpauth: %s from %s: %s (%s)",
                    outcome.kind.value,
                    self.client_address[0],
                    outcome.error.reason,
                    outcome.error,
                )
                audit.refusal("httpauth", self.client_address[0], outcome.error, handshake=True)
            message = b"bad request\n" if outcome.status == 400 else b"authentication required\n"
            self._plain(outcome.status, message, headers=outcome.headers)
            return
        context = outcome.context
        assert context is not None
        audit.logon(context.peer, self.client_address[0])
        try:
            self._serve(context, body, outcome.headers, standard=outcome.standard)
        finally:
            context.delete()

    def _serve(
        self,
        context: ServerContext,
        body: bytes,
        auth_headers: tuple[tuple[str, str], ...],
        *,
        standard: bool = False,
    ) -> None:
        caller = context.peer.replace(protection_level=context.protection_level)
        request = Request(self.command, self.path, self.headers, body, caller)
        try:
            with impersonate(caller):
                response = self.handle_authenticated(request)
            if not isinstance(response, Response):
                raise TypeError("handle_authenticated must return a Response")
        except (AccessDeniedError, NoImpersonationError) as exc:
            log.info("httpauth: %s denied %s: %s", caller.principal, self.path, exc)
            response = Response(403, b"access denied\n", headers=((REASON_HEADER, exc.reason),))
        except SecurityError as exc:
            log.info("httpauth: %s refused on %s: %s", caller.principal, self.path, exc)
            response = Response(403, b"refused\n", headers=((REASON_HEADER, exc.reason),))
        except Exception:
            log.exception("httpauth: handler failed for %s on %s", caller.principal, self.path)
            response = Response(500, b"internal error\n")
        if standard:  # RFC 4559: the mutual-auth token, and no rpcsec headers unless asked
            headers = [*auth_headers, *response.headers]
            asked = wants_signed_response(self.headers.get_all(EXTENSIONS_HEADER) or [])
            if asked and self.server.sign_responses and context.attributes & ContextReq.INTEGRITY:
                aad = response_aad(self.command, self.path, response.status, "")
                signature = sign_response(context, aad, response.body)
                headers.append((SIGNATURE_HEADER, encode_token(signature)))
            self._send(response.status, response.body, response.content_type, headers)
            return
        principal = encode_principal(caller.principal)
        headers = [*auth_headers, (PRINCIPAL_HEADER, principal), *response.headers]
        if self.server.sign_responses and context.attributes & ContextReq.INTEGRITY:
            aad = response_aad(self.command, self.path, response.status, principal)
            signature = sign_response(context, aad, response.body)
            headers.append((SIGNATURE_HEADER, encode_token(signature)))
        self._send(response.status, response.body, response.content_type, headers)

    # -- output ----------------------------------------------------------------------------

    def _plain(
        self,
        status: int,
        body: bytes,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        close: bool = False,
    ) -> None:
        if close:
            self.close_connection = True
        self._send(status, body, "text/plain; charset=utf-8", list(headers), close=close)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: list[tuple[str, str]],
        *,
        close: bool = False,
    ) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("httpauth: %s " + format, self.client_address[0], *args)


class AuthHTTPServer(BoundedConnections, http.server.ThreadingHTTPServer):
    """A threaded HTTP server whose ``handler_class`` authenticates every request.

    At most ``max_connections`` connections at once (more get 503); each connection holds at
    most one half-done handshake, dropped when the connection ends or idles past
    ``idle_timeout``. ``protection`` is what an rpcsec client's context must grant (INTEGRITY
    lets responses be signed). With ``standard`` (default) a kerberos / negotiate server also
    serves standard RFC 4559 clients (curl, requests-gssapi, browsers): they get the
    mutual-auth token in the final ``WWW-Authenticate`` and no rpcsec headers. The socket is
    bound when the constructor returns.
    """

    daemon_threads = True
    block_on_close = True

    busy_reply = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )

    def __init__(
        self,
        address: tuple[str, int],
        handler_class: type[AuthHTTPRequestHandler],
        credentials: Credentials,
        *,
        protection: ProtectionLevel = ProtectionLevel.INTEGRITY,
        sign_responses: bool = True,
        max_connections: int = 64,
        idle_timeout: float | None = 30.0,
        max_body: int = DEFAULT_MAX_BODY,
        options: dict[str, Any] | None = None,
        standard: bool = True,
    ) -> None:
        if not isinstance(handler_class, type) or not issubclass(
            handler_class, AuthHTTPRequestHandler
        ):
            raise TypeError("handler_class must subclass AuthHTTPRequestHandler")
        if not isinstance(credentials, Credentials) or not credentials.use & CredentialUse.INBOUND:
            raise ValueError("a server needs INBOUND credentials from acquire_credentials_handle()")
        self._limit_connections(max_connections)
        self.credentials = credentials
        self.required = server_requirements(protection, ordered=False)
        self.sign_responses = sign_responses
        self.idle_timeout = idle_timeout
        self.max_body = max_body
        self.options = dict(options or {})
        self.standard = standard
        self._started = False
        super().__init__(address, handler_class)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("httpauth: unexpected error serving %s", client_address)

    def start(self, poll_interval: float = 0.5) -> threading.Thread:
        """Run ``serve_forever`` in a daemon thread; leaving the ``with`` block stops it
        (within ``poll_interval`` seconds)."""
        thread = threading.Thread(
            target=self.serve_forever, args=(poll_interval,), name="httpauth-server", daemon=True
        )
        self._started = True
        thread.start()
        return thread

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self.shutdown()
        self.server_close()


@dataclass(frozen=True, slots=True)
class HttpResult:
    """An authenticated response.

    ``principal`` is who the server says you are (its ``X-Rpcsec-Principal``); ``server`` is
    the server's identity as the context proved it (for packages without MUTUAL_AUTH only the
    target name). ``verified`` is True when the response signature checked out.
    """

    status: int
    reason: str
    body: bytes = field(repr=False)
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    principal: str | None
    server: AccessToken | None
    verified: bool


def http_get(url: str, credentials: Credentials, **kwargs: Any) -> HttpResult:
    """GET ``url`` authenticating as ``credentials`` (see ``http_request``)."""
    return http_request("GET", url, credentials, **kwargs)


def http_request(
    method: str,
    url: str,
    credentials: Credentials,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    target_name: str | None = None,
    requirements: ContextReq | None = None,
    impersonation: ImpersonationLevel = ImpersonationLevel.IMPERSONATE,
    verify: bool = True,
    preemptive: bool = False,
    timeout: float = 30.0,
    max_body: int = DEFAULT_CLIENT_MAX_BODY,
    options: dict[str, Any] | None = None,
) -> HttpResult:
    """One request with the HTTP Negotiate exchange, on one keep-alive connection (NTLM's legs
    must share it).

    Without ``preemptive`` the first request goes out without ``Authorization`` and the
    server's 401 says which scheme to use (RFC 4559 §5). ``target_name`` defaults to
    ``HTTP@<host>``. With ``verify`` (the default) the response must be signed by the
    context, else ``MessageAlteredError``. ``options={"standard": "spnego"}`` (or ``True``)
    speaks the standard protocol (Apache mod_auth_gssapi, IIS: pass ``verify=False``, they do
    not sign responses; an rpcsec server signs when asked, as it is here with ``verify``).
    Raises ``LogonDeniedError`` (or the typed error the server reported) when the server
    refuses the credentials; non-401 statuses are returned.
    """
    if not isinstance(credentials, Credentials):
        raise TypeError("credentials must come from acquire_credentials_handle()")
    if not credentials.use & CredentialUse.OUTBOUND:
        raise ValueError("a client needs OUTBOUND credentials")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url must be an absolute http:// or https:// URL")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    flags = client_requirements(credentials, ProtectionLevel.INTEGRITY, requirements, ordered=False)
    context = initialize_security_context(
        credentials,
        target_name if target_name is not None else f"HTTP@{parts.hostname}",
        flags.requested,
        impersonation=impersonation,
        options=options,
    )
    exchange = ClientExchange(context, required=flags.required)
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = connection_class(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.connect()
        conn.auto_open = 0  # never silently move a leg to a new connection
        authorization = exchange.start() if preemptive else None
        standard = bool((options or {}).get("standard"))
        while True:
            request_headers = dict(headers or {})
            if standard and verify:  # ask an rpcsec server for the signed-response extension
                request_headers[EXTENSIONS_HEADER] = SIGNED_RESPONSE
            if authorization is not None:
                request_headers["Authorization"] = authorization
            conn.request(method, target, body=body, headers=request_headers)
            response = conn.getresponse()
            data = _read_bounded(response, max_body)
            authorization = exchange.on_response(
                response.status,
                response.msg.get_all("WWW-Authenticate") or [],
                response.getheader(REASON_HEADER),
            )
            if authorization is None:
                if response.status == 503 and not exchange.authenticated:
                    raise BusyError("server is too busy to authenticate")
                break
            if response.will_close:
                raise TruncatedFrameError("server closed the connection during the exchange")
        principal_header = response.getheader(PRINCIPAL_HEADER)
        verified = False
        if verify:
            exchange.verify_response(
                method,
                target,
                response.status,
                principal_header or "",
                data,
                response.getheader(SIGNATURE_HEADER),
            )
            verified = True
        principal = None
        if principal_header is not None:
            try:
                principal = decode_principal(principal_header)
            except UnicodeDecodeError:
                raise MalformedHeaderError("principal header is not UTF-8") from None
        return HttpResult(
            status=response.status,
            reason=response.reason,
            body=data,
            headers=tuple(response.getheaders()),
            principal=principal,
            server=context.peer if exchange.authenticated else None,
            verified=verified,
        )
    except http.client.RemoteDisconnected as exc:
        raise TruncatedFrameError("server closed the connection without a response") from exc
    except http.client.HTTPException as exc:
        raise InvalidTokenError("server sent a malformed HTTP response") from exc
    finally:
        conn.close()
        if context.state is not ContextState.DELETED:
            context.delete()


def _read_bounded(response: http.client.HTTPResponse, limit: int) -> bytes:
    length = response.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise FrameTooLargeError("response body exceeds the limit")
    data = response.read(limit + 1)
    if len(data) > limit:
        raise FrameTooLargeError("response body exceeds the limit")
    if not response.isclosed():
        response.read()  # drain (only reached for bodies within the limit)
    return data
