"""The client side of HTTP Negotiate for the ``httpx`` and ``requests`` auth classes (sans-IO).

One ``ClientFlow`` per request: it makes the context (standard mode for kerberos and negotiate,
so any RFC 4559 server -- Apache mod_auth_gssapi, IIS, a pyspnego server -- accepts it; the
packages without a standard mode use their own tokens, for rpcsec servers), and turns each
response's status and ``WWW-Authenticate`` values into the next ``Authorization`` header or
the end of the exchange (``ClientExchange``). Mutual authentication is required by default:
the server's final token must be present and verify (RFC 4559 §5), else ``InvalidTokenError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from rpcsec.security import AccessToken
from rpcsec.sspi import (
    ContextReq,
    Credentials,
    CredentialUse,
    ImpersonationLevel,
    MessageAlteredError,
    PackageCapability,
    initialize_security_context,
)

from ._httpexchange import EXTENSIONS_HEADER, SIGNED_RESPONSE, STANDARD_PACKAGES, ClientExchange

__all__ = ["ClientFlow", "NegotiateSettings"]


class NegotiateSettings:
    """What every request of one auth object asks for (shared by the httpx and requests
    classes). ``target_name`` defaults to ``HTTP@<host>``; ``delegate`` forwards a TGT
    (``curl --delegation always``); ``mutual`` requires the server's mutual-auth token (by
    default whenever the package can give it: kerberos, negotiate; NTLM never can).

    ``verify`` is rpcsec's signed-response extension (the request asks for it in
    ``X-Rpcsec-Extensions``; an rpcsec server signs the response with the context): True
    requires a valid signature, None (default) checks one when the server sent it -- a standard
    server (Apache, IIS) sends none, and RFC 4559 protects no response, so an attacker can strip
    it; only True (or TLS) stops that -- and False never asks."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        target_name: str | None = None,
        mutual: bool | None = None,
        delegate: bool = False,
        preemptive: bool = False,
        verify: bool | None = None,
        requirements: ContextReq | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(credentials, Credentials):
            raise TypeError("credentials must come from acquire_credentials_handle()")
        if not credentials.use & CredentialUse.OUTBOUND:
            raise ValueError("a client needs OUTBOUND credentials")
        if requirements is not None and not isinstance(requirements, ContextReq):
            raise TypeError("requirements must be ContextReq flags")
        self.credentials = credentials
        self.target_name = target_name
        self.preemptive = preemptive
        if verify not in (None, True, False):
            raise TypeError("verify must be None, True or False")
        self.verify = verify
        required = requirements or ContextReq.NONE
        if mutual is None:  # required whenever the package can prove the server (not NTLM)
            mutual = bool(credentials.package.capabilities & PackageCapability.MUTUAL_AUTH)
        if mutual:
            required |= ContextReq.MUTUAL_AUTH
        if delegate:
            required |= ContextReq.DELEGATE
        self.required = required.normalized()
        self.requested = (self.required | ContextReq.INTEGRITY).normalized()
        self.impersonation = (
            ImpersonationLevel.DELEGATE if delegate else ImpersonationLevel.IMPERSONATE
        )
        self.options = dict(options or {})
        if credentials.package.name in STANDARD_PACKAGES:
            kind = True if credentials.package.name == "ntlm" else "spnego"
            self.options.setdefault("standard", kind)

    def flow(self, url: str) -> ClientFlow:
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError("url must be absolute")
        target = self.target_name or f"HTTP@{parts.hostname}"
        return ClientFlow(self, target)


class ClientFlow:
    """One request's exchange: ``first()``, then ``next(status, challenges)`` until None."""

    def __init__(self, settings: NegotiateSettings, target: str) -> None:
        self._settings = settings
        context = initialize_security_context(
            settings.credentials,
            target,
            settings.requested,
            impersonation=settings.impersonation,
            options=settings.options,
        )
        self.exchange = ClientExchange(context, required=settings.required)

    def request_headers(self) -> dict[str, str]:
        """Headers every leg carries: the extension request, unless ``verify`` is False."""
        if self._settings.verify is False:
            return {}
        return {EXTENSIONS_HEADER: SIGNED_RESPONSE}

    def finish(
        self, method: str, target: str, status: int, body: bytes, signature: str | None
    ) -> bool:
        """Check the final response's signature; True when it verified. Raises
        ``MessageAlteredError`` when it is bad, or missing while ``verify`` is True."""
        verify = self._settings.verify
        if verify is False or (verify is None and not signature):
            return False
        if not self.exchange.authenticated:
            raise MessageAlteredError("response was not authenticated")
        self.exchange.verify_response(method, target, status, "", body, signature)
        return True

    def first(self) -> str | None:
        """The preemptive ``Authorization`` (or None: wait for the server's challenge)."""
        return self.exchange.start() if self._settings.preemptive else None

    def next(self, status: int, authenticate: Sequence[str]) -> str | None:
        """The next ``Authorization`` value, or None when done (raises on refusals and on a
        missing or forged mutual-auth token)."""
        return self.exchange.on_response(status, authenticate)

    @property
    def server(self) -> AccessToken | None:
        """The server as the context proved it, once the exchange authenticated."""
        if not self.exchange.authenticated:
            return None
        return self.exchange.context.peer  # type: ignore[no-any-return]

    def close(self) -> None:
        context = self.exchange.context
        if context.state.value != "deleted":
            context.delete()
