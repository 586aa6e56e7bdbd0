"""Who the caller is: access tokens, impersonation and access checks. No I/O."""

from ._descriptor import (
    EVERYONE,
    AccessMask,
    Ace,
    AceType,
    SecurityDescriptor,
    access_check,
    matches_trustees,
)
from ._impersonation import ImpersonationScope, current_token, impersonate, revert_to_self
from ._token import ANONYMOUS_PRINCIPAL, AccessToken

__all__ = [
    "ANONYMOUS_PRINCIPAL",
    "EVERYONE",
    "AccessMask",
    "AccessToken",
    "Ace",
    "AceType",
    "ImpersonationScope",
    "SecurityDescriptor",
    "access_check",
    "current_token",
    "impersonate",
    "matches_trustees",
    "revert_to_self",
]
