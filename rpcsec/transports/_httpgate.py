"""One request through HTTP Negotiate, for servers that keep no connection state (sans-IO).

The ASGI and WSGI middlewares see requests, not connections, so each request is one
``ServerExchange`` leg of its own: a single-leg handshake (Kerberos, bare or in SPNEGO --
what curl, requests-gssapi and browsers send to a Kerberos service) authenticates the request;
a handshake that needs another leg (NTLM) cannot be continued on a later request and is
refused, fail-closed. ``admit`` says either who the caller is and which headers the response
must carry (the mutual-auth token, RFC 4559 §5), or which refusal to send; the middlewares
only translate that to their framework.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rpcsec.security import AccessToken
from rpcsec.sspi import ContextReq, Credentials, CredentialUse, ServerContext

from ._httpexchange import REASON_HEADER, OutcomeKind, ServerExchange

__all__ = ["Admission", "NegotiateGate", "Refusal"]

log = logging.getLogger("rpcsec.transports.http")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Send this instead of running the application."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Admission:
    """Run the application as ``caller``; add ``headers`` to its response; ``close()`` after."""

    caller: AccessToken
    headers: tuple[tuple[str, str], ...]
    standard: bool
    context: ServerContext = field(repr=False)

    def close(self) -> None:
        """DeleteSecurityContext once the response was sent (RFC 4559 §4: per request)."""
        self.context.delete()


class NegotiateGate:
    """AcceptSecurityContext for one request's ``Authorization`` header(s)."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        standard: bool = True,
        required: ContextReq = ContextReq.NONE,
        standard_required: ContextReq = ContextReq.NONE,
        options: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(credentials, Credentials) or not credentials.use & CredentialUse.INBOUND:
            raise ValueError("a server needs INBOUND credentials from acquire_credentials_handle()")
        self.credentials = credentials
        self._standard = standard
        self._required = required
        self._standard_required = standard_required
        self._options = dict(options or {})

    def admit(self, authorization: Sequence[str], client: str = "-") -> Admission | Refusal:
        exchange = ServerExchange(
            self.credentials,
            required=self._required,
            options=self._options,
            max_legs=1,
            standard=self._standard,
            standard_required=self._standard_required,
        )
        try:
            outcome = exchange.authenticate(list(authorization))
        finally:
            in_progress = exchange.in_progress
            exchange.close()
        if outcome.kind is OutcomeKind.AUTHENTICATED:
            context = outcome.context
            assert context is not None
            caller = context.peer.replace(protection_level=context.protection_level)
            return Admission(caller, outcome.headers, outcome.standard, context)
        if outcome.error is not None:
            log.info(
                "http: %s from %s: %s (%s)",
                outcome.kind.value,
                client,
                outcome.error.reason,
                outcome.error,
            )
        if outcome.kind is OutcomeKind.BAD_REQUEST:
            return Refusal(400, (), b"bad request\n")
        if outcome.kind is OutcomeKind.CONTINUE or in_progress:
            # another leg would need this connection's state, which a middleware does not keep
            return Refusal(401, (*exchange.challenge(), (REASON_HEADER, "invalid-token")),
                           b"authentication required\n")  # fmt: skip
        return Refusal(outcome.status, outcome.headers, b"authentication required\n")
