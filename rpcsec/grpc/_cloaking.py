"""Which credentials an outbound channel uses when none are given (DESIGN §6, DCOM cloaking).

Inside an impersonation scope (a handler running as its caller) a new channel speaks *for the
caller*: it uses ``token.delegated_credentials``, which a package sets only on a delegation
level context. A caller whose context is not delegation level cannot be spoken for: that is the
seed's "If this fails, then the client security context is not delegation level, WATCH OUT FOR
THIS", raised here as ``DelegationRequiredError`` before anything is sent. Outside any scope the
process speaks for itself with the credentials given to ``set_default_credentials``.
"""

from __future__ import annotations

import threading

from rpcsec._settings import effective_settings
from rpcsec.security import AccessToken, current_token
from rpcsec.sspi import (
    Credentials,
    CredentialUse,
    DelegationRequiredError,
    ImpersonationLevel,
    NoCredentialsError,
)

__all__ = ["get_default_credentials", "resolve_credentials", "set_default_credentials"]

_default: Credentials | None = None
_lock = threading.Lock()


def set_default_credentials(credentials: Credentials | None) -> None:
    """The process's own OUTBOUND credentials, used by channels made outside any impersonation
    scope without explicit credentials. ``None`` forgets them."""
    global _default
    if credentials is not None:
        if not isinstance(credentials, Credentials):
            raise TypeError("default credentials must come from acquire_credentials_handle()")
        if not credentials.use & CredentialUse.OUTBOUND:
            raise ValueError("default credentials must be OUTBOUND")
    with _lock:
        _default = credentials


def get_default_credentials() -> Credentials | None:
    return _default


def resolve_credentials(
    credentials: Credentials | None,
) -> tuple[Credentials, AccessToken | None]:
    """The credentials a new channel uses and, when they are a caller's delegated credentials,
    that caller's token (the channel then belongs to that caller alone)."""
    if credentials is not None:
        if not isinstance(credentials, Credentials):
            raise TypeError("credentials must come from acquire_credentials_handle()")
        if not credentials.use & CredentialUse.OUTBOUND:
            raise ValueError("a channel needs OUTBOUND credentials")
        return credentials, None
    token = current_token()
    if token is not None:
        delegated = token.delegated_credentials
        if delegated is None or token.impersonation_level < ImpersonationLevel.DELEGATE:
            raise DelegationRequiredError(
                f"the caller's context ({token.principal}, {token.package}, "
                f"{token.impersonation_level.name}) is not delegation level: an onward call "
                "on its behalf is impossible"
            )
        if not isinstance(delegated, Credentials):
            raise TypeError("the token's delegated_credentials are not a Credentials handle")
        return delegated, token
    default = _default if _default is not None else effective_settings().outbound_credentials()
    if default is None:
        raise NoCredentialsError(
            "no credentials given, none set with rpcsec.grpc.set_default_credentials() or "
            "rpcsec.initialize_security(), and not impersonating a caller"
        )
    return default, None
