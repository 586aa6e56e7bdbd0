"""AcquireCredentialsHandle for Kerberos: GSS credentials from a ccache, keytab or password.

Credentials are acquired through MIT's credential-store extension (``gss_acquire_cred_from``)
so that each handle names its own ccache, keytab and replay cache; nothing touches
``os.environ``, and several realms and services can live in one process. Without options the
usual environment applies (``KRB5CCNAME``, ``KRB5_KTNAME``, ``KRB5_CLIENT_KTNAME``).
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

from rpcsec.sspi._errors import ContextExpiredError, NoCredentialsError
from rpcsec.sspi._flags import CredentialUse

from ._errors import Phase, native_call
from ._names import display, service_name, user_name
from ._native import KRB5_MECH, SPNEGO_MECH, require_gssapi

__all__ = ["CREDENTIAL_OPTIONS", "KerberosCredentials", "acquire"]

log = logging.getLogger("rpcsec.packages.kerberos")

CREDENTIAL_OPTIONS = frozenset({"ccache", "keytab", "rcache", "password"})


@dataclass(frozen=True, slots=True, eq=False)
class KerberosCredentials:
    """The package-private material of a kerberos credentials handle.

    ``initiator`` drives InitializeSecurityContext, ``acceptor`` AcceptSecurityContext (either
    may be None). ``delegation_chain`` is set on credentials a server received by delegation:
    the services the original client's request already came through, ending with that server,
    which onward contexts claim in their offer record. GSS handles are never printed.
    """

    principal: str | None
    initiator: Any = field(default=None, repr=False)
    acceptor: Any = field(default=None, repr=False)
    delegation_chain: tuple[str, ...] = ()


def _outbound(principal: str | None, options: dict[str, Any]) -> tuple[Any, str]:
    gss = require_gssapi()
    name = user_name(principal) if principal else None
    password = options.get("password")
    if password is not None and (name is None or not isinstance(password, str)):
        raise ValueError("a password needs a principal and must be a string")
    with native_call(Phase.ACQUIRE, "cannot acquire Kerberos client credentials"):
        if password is not None:
            creds = gss.acquire_cred_with_password(
                name, password.encode(), mechs=[KRB5_MECH], usage="initiate"
            ).creds
        else:
            store: dict[bytes, bytes] = {}
            if options.get("ccache"):
                store[b"ccache"] = os.fsencode(options["ccache"])
            if options.get("keytab"):
                store[b"client_keytab"] = os.fsencode(options["keytab"])
                # Tickets got with the keytab go to a private memory cache, not the user's.
                store.setdefault(b"ccache", f"MEMORY:rpcsec-{secrets.token_hex(8)}".encode())
            creds = gss.acquire_cred_from(
                store or None, name=name, mechs=[KRB5_MECH, SPNEGO_MECH], usage="initiate"
            ).creds
        info = gss.inquire_cred(creds, name=True, lifetime=True, usage=False, mechs=False)
    if info.lifetime == 0 and not options.get("keytab"):
        raise ContextExpiredError("the Kerberos tickets in this credentials cache have expired")
    return creds, display(info.name)


def _inbound(principal: str | None, options: dict[str, Any]) -> Any:
    gss = require_gssapi()
    name = service_name(principal) if principal else None
    store: dict[bytes, bytes] = {}
    if options.get("keytab"):
        store[b"keytab"] = os.fsencode(options["keytab"])
    if options.get("rcache"):
        store[b"rcache"] = os.fsencode(options["rcache"])
    elif os.environ.get("KRB5RCACHETYPE", "").lower() == "none":
        log.warning(
            "KRB5RCACHETYPE=none disables Kerberos replay detection for this acceptor; "
            "pass rcache= to give it a replay cache"
        )
    with native_call(Phase.ACQUIRE, "cannot acquire Kerberos server credentials"):
        # SPNEGO too, so that standard-mode acceptors (_standard.py) take RFC 4559 tokens.
        return gss.acquire_cred_from(
            store or None, name=name, mechs=[KRB5_MECH, SPNEGO_MECH], usage="accept"
        ).creds


def acquire(
    principal: str | None, use: CredentialUse, options: dict[str, Any]
) -> KerberosCredentials:
    """Options: ``ccache`` (client), ``keytab`` (server; a client keytab for OUTBOUND),
    ``rcache`` (server replay cache, e.g. ``file2:/path``), ``password`` (client: get a TGT
    now, in memory). Raises ``NoCredentialsError``, ``LogonDeniedError`` (wrong password,
    unknown user) or ``ContextExpiredError`` (the ccache's tickets expired)."""
    unknown = set(options) - CREDENTIAL_OPTIONS
    if unknown:
        raise TypeError(f"unknown kerberos credential options: {', '.join(sorted(unknown))}")
    for key in CREDENTIAL_OPTIONS:
        value = options.get(key)
        if value is not None and not isinstance(value, str | os.PathLike):
            raise TypeError(f"kerberos option {key} must be a string or path")
    if principal is not None and not isinstance(principal, str):
        raise TypeError("principal must be a string")
    initiator = acceptor = None
    name = principal
    if use & CredentialUse.OUTBOUND:
        initiator, name = _outbound(principal, options)
    if use & CredentialUse.INBOUND:
        acceptor = _inbound(principal, options)
    if initiator is None and acceptor is None:  # pragma: no cover - CredentialUse has no NONE
        raise NoCredentialsError("kerberos credentials need INBOUND or OUTBOUND use")
    return KerberosCredentials(principal=name, initiator=initiator, acceptor=acceptor)
