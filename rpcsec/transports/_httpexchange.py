"""The HTTP Negotiate exchange (RFC 4559 §4-5 shape) as sans-IO state machines.

The seed's httpauth sample (httpauth.c: AuthConverse, AddAuthorizationHeader,
IsInAuthorizationSequence) without the sockets::

    C: GET /doc                                   (no Authorization)
    S: 401  WWW-Authenticate: NTLM                (challenge: which scheme to use)
    C: GET /doc  Authorization: NTLM <token 1>
    S: 401  WWW-Authenticate: NTLM <token 2>      (continuation, same connection)
    C: GET /doc  Authorization: NTLM <token 3>
    S: 200  WWW-Authenticate: NTLM <token 4>      (final token: the client completes)
            X-Rpcsec-Principal: RPCSEC%5Calice    (who the server says you are)
            X-Rpcsec-Signature: <base64 MIC>      (response integrity, see below)

``ServerExchange`` lives as long as one TCP connection: NTLM's legs are bound to the
connection that started them (MS-NTHT §3.2.5), so an in-progress context is kept per
connection, and there is never more than one per connection. Each request authenticates
afresh (RFC 4559 §4); nothing is remembered once a request was answered.

Response integrity (an rpcsec extension, used when the context has INTEGRITY): the server
signs the response body with the context (MakeSignature) over additional data binding the
request method and target, the status and the principal header, and sends the token in
``X-Rpcsec-Signature``. The client verifies it (VerifySignature) once its context is complete,
so a body, status or identity changed on the way is detected. The request itself is not
protected: RFC 4559 authenticates the client, not the request, so run it over TLS when the
request must not be altered.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from rpcsec.packages._standard import is_standard, standard_messages
from rpcsec.sspi import (
    ClientContext,
    ContextReq,
    Credentials,
    InsufficientAttributesError,
    InvalidTokenError,
    LogonDeniedError,
    MessageAlteredError,
    SecurityError,
    ServerContext,
    UnsupportedFunctionError,
    accept_security_context,
    error_for_status,
)

from ._authheader import (
    decode_token,
    format_authorization,
    format_challenge,
    parse_authorization,
    parse_challenges,
    scheme_for,
)
from ._errors import MalformedHeaderError

__all__ = [
    "MAX_LEGS",
    "PRINCIPAL_HEADER",
    "EXTENSIONS_HEADER",
    "REASON_HEADER",
    "SIGNATURE_HEADER",
    "SIGNED_RESPONSE",
    "STANDARD_PACKAGES",
    "ClientExchange",
    "Outcome",
    "OutcomeKind",
    "ServerExchange",
    "decode_principal",
    "encode_principal",
    "response_aad",
    "sign_response",
    "wants_signed_response",
]

MAX_LEGS = 16
PRINCIPAL_HEADER = "X-Rpcsec-Principal"
SIGNATURE_HEADER = "X-Rpcsec-Signature"
REASON_HEADER = "X-Rpcsec-Reason"
EXTENSIONS_HEADER = "X-Rpcsec-Extensions"
SIGNED_RESPONSE = "signed-response"
_AAD_PREFIX = b"rpcsec-httpauth/1\x00"


def encode_principal(principal: str) -> str:
    """A principal as an ASCII header value (percent-encoded UTF-8)."""
    return quote(principal, safe="/:@.-_~")


def decode_principal(value: str) -> str:
    return unquote(value, errors="strict")


def response_aad(method: str, target: str, status: int, principal_header: str) -> bytes:
    """What a response signature binds besides the body: request method and target, response
    status and the principal header, each NUL-terminated (no field can contain a NUL)."""
    fields = (method, target, f"{int(status):03d}", principal_header)
    return _AAD_PREFIX + b"".join(f.encode("utf-8", "surrogateescape") + b"\x00" for f in fields)


def wants_signed_response(values: Sequence[str]) -> bool:
    """Whether a standard-mode request's ``X-Rpcsec-Extensions`` asks for a signed response
    (the extension an rpcsec client adds; a standard client never sends it)."""
    return any(
        part.strip().lower() == SIGNED_RESPONSE for value in values for part in value.split(",")
    )


def sign_response(context: Any, aad: bytes, body: bytes) -> bytes:
    """MakeSignature over a response: the core's MIC on an extended-mode context, the
    mechanism's own GSS_GetMIC over ``aad || body`` on a standard one."""
    messages = standard_messages(context)
    if messages is not None:
        return messages.gss_get_mic(aad + body)
    return bytes(context.sign(body, aad=aad))


class OutcomeKind(enum.Enum):
    CHALLENGE = "challenge"  # 401, WWW-Authenticate: <Scheme>
    CONTINUE = "continue"  # 401, WWW-Authenticate: <Scheme> <token>
    REJECTED = "rejected"  # 401, the token was refused; a fresh challenge
    BAD_REQUEST = "bad-request"  # 400, the header does not parse
    AUTHENTICATED = "authenticated"  # run the request as the caller


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the server does with one request's ``Authorization`` header(s)."""

    kind: OutcomeKind
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    context: ServerContext | None = field(default=None, repr=False)
    error: SecurityError | None = None
    standard: bool = False
    """True when the client spoke the standard protocol (RFC 4559 / MS-NTHT) and so gets no
    rpcsec extension (no principal or signature headers)."""


# Packages whose standard mode the server offers (bare SPNEGO / Kerberos tokens under
# ``Negotiate``, bare NTLM under ``NTLM``); rpcsec-framed tokens are told apart by their magic.
STANDARD_PACKAGES = frozenset({"kerberos", "negotiate", "ntlm"})


class ServerExchange:
    """The server's side for one connection (AcceptSecurityContext, one leg per request).

    With ``standard`` (the default) a kerberos or negotiate server also accepts standard
    clients (curl --negotiate, requests-gssapi, browsers): their context must then grant
    ``standard_required`` (RFC 4559 protects no messages, so nothing by default) instead of
    ``required``, which applies to rpcsec clients and their extended handshake.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        required: ContextReq = ContextReq.NONE,
        options: dict[str, Any] | None = None,
        max_legs: int = MAX_LEGS,
        context_factory: Callable[[], ServerContext] | None = None,
        standard: bool = True,
        standard_required: ContextReq = ContextReq.NONE,
    ) -> None:
        if not isinstance(credentials, Credentials):
            raise TypeError("credentials must come from acquire_credentials_handle()")
        self.credentials = credentials
        self.scheme = scheme_for(credentials.package.name)
        self.required = required
        self.standard_required = standard_required
        self._options = dict(options or {})
        if standard and credentials.package.name in STANDARD_PACKAGES:
            self._options.setdefault("standard", True)
        self._max_legs = max_legs
        self._factory = context_factory
        self._context: ServerContext | None = None
        self._legs = 0

    @property
    def in_progress(self) -> bool:
        """True while a multi-leg handshake waits for the client's next token."""
        return self._context is not None

    def challenge(self) -> tuple[tuple[str, str], ...]:
        return (("WWW-Authenticate", format_challenge(self.scheme)),)

    def _reset(self) -> None:
        context, self._context, self._legs = self._context, None, 0
        if context is not None:
            context.delete()

    def _new_context(self) -> ServerContext:
        if self._factory is not None:
            return self._factory()
        return accept_security_context(self.credentials, self.required, options=self._options)

    def authenticate(self, authorization: Sequence[str]) -> Outcome:
        """Handle the ``Authorization`` header values of one request."""
        if not authorization:
            self._reset()
            return Outcome(OutcomeKind.CHALLENGE, 401, self.challenge())
        if len(authorization) > 1:
            self._reset()
            error = MalformedHeaderError("more than one Authorization header")
            return Outcome(OutcomeKind.BAD_REQUEST, 400, error=error)
        try:
            credentials = parse_authorization(authorization[0])
            if not credentials.matches(self.scheme):
                self._reset()  # another scheme (Basic, ...): say which one we speak
                return Outcome(OutcomeKind.CHALLENGE, 401, self.challenge())
            token = credentials.token()
        except MalformedHeaderError as exc:
            self._reset()
            return Outcome(OutcomeKind.BAD_REQUEST, 400, error=exc)
        return self._step(token)

    def _step(self, token: bytes) -> Outcome:
        context = self._context
        if context is None:
            context = self._context = self._new_context()
        self._legs += 1
        try:
            if self._legs > self._max_legs:
                raise InvalidTokenError("the exchange did not converge")
            result = context.step(token)
            if not result.complete:
                if not result.token:
                    raise InvalidTokenError("package continued without a token for the client")
                header = format_challenge(self.scheme, result.token)
                return Outcome(OutcomeKind.CONTINUE, 401, (("WWW-Authenticate", header),))
            standard = is_standard(context)
            context.require(self.standard_required if standard else self.required)
        except SecurityError as exc:
            self._reset()
            headers = (*self.challenge(), (REASON_HEADER, exc.reason))
            return Outcome(OutcomeKind.REJECTED, 401, headers, error=exc)
        self._context, self._legs = None, 0  # the request is authenticated; nothing persists
        headers = ()
        if result.token:
            headers = (("WWW-Authenticate", format_challenge(self.scheme, result.token)),)
        return Outcome(OutcomeKind.AUTHENTICATED, 200, headers, context=context, standard=standard)

    def close(self) -> None:
        """The connection ended: forget any half-done handshake."""
        self._reset()


class ClientExchange:
    """The client's side for one request (InitializeSecurityContext, one leg per response).

    ``authorization()`` gives the header for the next request (or ``None`` when the exchange
    is over); ``on_response`` consumes each response's status and challenges.
    """

    def __init__(
        self, context: ClientContext, *, required: ContextReq, max_legs: int = MAX_LEGS
    ) -> None:
        if not isinstance(context, ClientContext):
            raise TypeError("context must be a ClientContext")
        self.context = context
        self.scheme = scheme_for(context.package.name)
        self.required = required
        self._max_legs = max_legs
        self._legs = 0
        self._next: str | None = None
        self._sent_token = False
        self.authenticated = False

    def start(self) -> str:
        """The first token (sent preemptively, or after the server's first challenge)."""
        if self._sent_token:
            raise InvalidTokenError("the exchange already started")
        result = self.context.step(None)
        if not result.token:
            raise InvalidTokenError("package produced no first token")
        self._sent_token = True
        return format_authorization(self.scheme, result.token)

    def on_response(
        self, status: int, authenticate: Sequence[str], reason: str | None = None
    ) -> str | None:
        """The next ``Authorization`` value to send, or ``None`` when the exchange is over
        (then ``authenticated`` says whether the context completed).

        Raises the typed error the server reported (``LogonDeniedError`` by default) when it
        refused the client's token, ``UnsupportedFunctionError`` if it does not offer this
        package's scheme, and ``InvalidTokenError`` / ``MalformedHeaderError`` for tokens and
        headers that make no sense.
        """
        self._legs += 1
        if self._legs > self._max_legs:
            raise InvalidTokenError("the exchange did not converge")
        ours = [c for c in parse_challenges(authenticate) if c.matches(self.scheme)]
        if len(ours) > 1:
            raise MalformedHeaderError(f"more than one {self.scheme} challenge")
        challenge = ours[0] if ours else None
        if status == 401:
            if challenge is None:
                if self._sent_token:
                    raise _refused(reason)
                raise UnsupportedFunctionError(f"server does not offer the {self.scheme} scheme")
            if challenge.token68 is None:
                if self._sent_token:
                    raise _refused(reason)
                return self.start()
            if not self._sent_token or self.context.complete:
                raise InvalidTokenError("server continued an exchange that was not in progress")
            result = self.context.step(decode_token(challenge.token68))
            if not result.token:  # complete with a last token (NTLM's AUTHENTICATE) is fine
                raise InvalidTokenError("server asked to continue a completed exchange")
            return format_authorization(self.scheme, result.token)
        if not self._sent_token:
            return None  # the server answered without asking for authentication
        if challenge is not None and challenge.token68 is not None:
            if self.context.complete:
                raise InvalidTokenError("server sent a final token after the context completed")
            result = self.context.step(decode_token(challenge.token68))
            if result.token or not result.complete:
                raise InvalidTokenError("server ended the exchange before the context completed")
        elif not self.context.complete:
            raise InvalidTokenError("server ended the exchange before the context completed")
        missing = self.required.normalized() & ~self.context.attributes
        if missing:
            raise InsufficientAttributesError(f"context lacks required attributes: {missing!r}")
        self.authenticated = True
        return None

    def verify_response(
        self,
        method: str,
        target: str,
        status: int,
        principal_header: str,
        body: bytes,
        signature: str | None,
    ) -> None:
        """VerifySignature over the response. Raises ``MessageAlteredError`` if the signature
        is missing, malformed or does not match."""
        if not self.authenticated:
            raise MessageAlteredError("response was not authenticated")
        if not signature:
            raise MessageAlteredError("response carries no signature")
        try:
            token = decode_token(signature.strip())
        except MalformedHeaderError:
            raise MessageAlteredError("response signature is malformed") from None
        aad = response_aad(method, target, status, principal_header)
        try:
            messages = standard_messages(self.context)
            if messages is not None:
                messages.gss_verify_mic(aad + body, token)
            else:
                self.context.verify(body, token, aad=aad)
        except InvalidTokenError as exc:
            raise MessageAlteredError("response signature is malformed") from exc


def _refused(reason: str | None) -> SecurityError:
    if reason:
        return error_for_status(reason.strip()[:64], f"server refused the token ({reason[:64]})")
    return LogonDeniedError("server refused the token")
