"""Who the caller is: access tokens, impersonation and access checks. No I/O."""

from ._audit import AUDIT_LOGGER, AuditEvent, AuditJsonFormatter, audit_key_rotation
from ._descriptor import (
    EVERYONE,
    AccessMask,
    Ace,
    AceType,
    SecurityDescriptor,
    access_check,
    matches_trustees,
)
from ._fsidentity import (
    FsIdentity,
    FsIdentityError,
    FsIdentityMap,
    get_fs_identity_map,
    set_fs_identity_map,
)
from ._impersonation import (
    CallerSteps,
    ImpersonationScope,
    current_token,
    impersonate,
    revert_to_self,
)
from ._token import ANONYMOUS_PRINCIPAL, AccessToken

__all__ = [
    "ANONYMOUS_PRINCIPAL",
    "AUDIT_LOGGER",
    "EVERYONE",
    "AccessMask",
    "AccessToken",
    "Ace",
    "AceType",
    "AuditEvent",
    "AuditJsonFormatter",
    "CallerSteps",
    "FsIdentity",
    "FsIdentityError",
    "FsIdentityMap",
    "ImpersonationScope",
    "SecurityDescriptor",
    "access_check",
    "audit_key_rotation",
    "current_token",
    "get_fs_identity_map",
    "impersonate",
    "matches_trustees",
    "revert_to_self",
    "set_fs_identity_map",
]
