"""SecurityDescriptor and AccessCheck: private object security for application data.

A descriptor is an owner plus an ordered list of allow/deny ACEs over an access mask, as the
seed describes for "private application data". ``access_check`` evaluates it for a token the
Windows way: deny ACEs are placed before allow ACEs (canonical order), the first ACE that
denies any requested right wins, and access is granted only when allow ACEs cover every right.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from rpcsec.sspi._errors import NoImpersonationError
from rpcsec.sspi._flags import ImpersonationLevel

from ._audit import descriptor_denied
from ._impersonation import current_token
from ._token import ANONYMOUS_PRINCIPAL, AccessToken

__all__ = [
    "EVERYONE",
    "AccessMask",
    "Ace",
    "AceType",
    "SecurityDescriptor",
    "access_check",
    "matches_trustees",
]

EVERYONE = "group:everyone"
"""Trustee that matches every authenticated principal (not ANONYMOUS)."""


class AccessMask(enum.IntFlag):
    """Generic rights; applications may define more bits above 0x10000."""

    READ = 0x1
    WRITE = 0x2
    EXECUTE = 0x4
    DELETE = 0x8
    LIST = 0x10
    READ_CONTROL = 0x20000
    WRITE_DAC = 0x40000
    ALL = 0x1F | 0x20000 | 0x40000


class AceType(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Ace:
    """One access-control entry. ``trustee`` is a principal name or ``group:NAME``."""

    type: AceType
    trustee: str
    mask: int

    @classmethod
    def allow(cls, trustee: str, mask: int) -> Ace:
        return cls(AceType.ALLOW, trustee, int(mask))

    @classmethod
    def deny(cls, trustee: str, mask: int) -> Ace:
        return cls(AceType.DENY, trustee, int(mask))


@dataclass(frozen=True, slots=True)
class SecurityDescriptor:
    """Owner and DACL. ACEs are kept in canonical order: every DENY before every ALLOW."""

    owner: str
    aces: tuple[Ace, ...] = ()

    def __post_init__(self) -> None:
        # Canonical order is enforced here, not only in ``build``: a descriptor built directly
        # with an allow before a deny would otherwise grant what the deny refuses.
        if not isinstance(self.owner, str):
            raise TypeError("owner must be a principal name")
        entries = tuple(self.aces)
        for ace in entries:
            if not isinstance(ace, Ace):
                raise TypeError("aces must be Ace objects")
        denies = tuple(ace for ace in entries if ace.type is AceType.DENY)
        allows = tuple(ace for ace in entries if ace.type is AceType.ALLOW)
        object.__setattr__(self, "aces", denies + allows)

    @classmethod
    def build(cls, owner: str, aces: Iterable[Ace]) -> SecurityDescriptor:
        """A descriptor from ACEs in any order (kept stable within denies and allows)."""
        return cls(owner=owner, aces=tuple(aces))

    def with_ace(self, ace: Ace) -> SecurityDescriptor:
        return SecurityDescriptor.build(self.owner, (*self.aces, ace))


def matches_trustees(trustees: Collection[str], token: AccessToken) -> bool:
    """Whether ``token`` is one of ``trustees`` (principals, ``group:NAME``, ``EVERYONE``).

    Anonymity is the token's *level*, not its name: an ANONYMOUS-level token matches only the
    ``anonymous`` trustee (never a principal, group or EVERYONE, whatever its fields say), and
    a token that is not anonymous never matches ``anonymous`` even if it is called that.
    The one matching rule for ACEs and for the gRPC authorization policy.
    """
    if token.is_anonymous:
        return ANONYMOUS_PRINCIPAL in trustees
    principal = token.principal
    if principal != ANONYMOUS_PRINCIPAL and principal in trustees:
        return True
    if EVERYONE in trustees:
        return True
    return any(f"group:{group}" in trustees for group in token.groups)


def access_check(
    descriptor: SecurityDescriptor,
    desired: int,
    token: AccessToken | None = None,
) -> int:
    """AccessCheck: return the granted mask or raise ``AccessDeniedError``.

    With no ``token``, the current impersonation token is used (the seed: the access check
    happens when the server opens the resource as the client). IDENTIFY-level tokens may be
    inspected but never used for access checks (``NoImpersonationError``); an ANONYMOUS-level
    token is its own principal and matches only ACEs naming ``anonymous`` (not EVERYONE).
    """
    if not isinstance(descriptor, SecurityDescriptor):
        raise TypeError("access_check needs a SecurityDescriptor")
    desired = int(desired)
    if desired <= 0:
        raise ValueError("desired access must name at least one right")
    if token is None:
        token = current_token()
        if token is None:
            raise NoImpersonationError("access_check without a token needs an impersonation scope")
    if token.impersonation_level is ImpersonationLevel.IDENTIFY:
        raise NoImpersonationError(
            f"{token.principal} is impersonated at IDENTIFY level: it can be identified but not "
            "used for access checks"
        )
    if token.expired():
        raise descriptor_denied(f"token of {token.principal} has expired", token, desired)
    remaining = desired
    granted = 0
    for ace in descriptor.aces:
        if not matches_trustees((ace.trustee,), token):
            continue
        if ace.type is AceType.DENY:
            if ace.mask & desired:
                raise descriptor_denied(f"{token.principal} is denied this access", token, desired)
        else:
            granted |= ace.mask & remaining
            remaining &= ~ace.mask
            if not remaining:
                return granted
    raise descriptor_denied(f"{token.principal} is not granted this access", token, desired)
