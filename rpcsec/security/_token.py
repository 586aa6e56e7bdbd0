"""AccessToken: who the caller is, as a server sees it after AcceptSecurityContext."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from rpcsec.sspi._flags import ImpersonationLevel, ProtectionLevel

__all__ = ["ANONYMOUS_PRINCIPAL", "AccessToken"]

ANONYMOUS_PRINCIPAL = "anonymous"


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A read-only description of an authenticated (or anonymous) principal.

    ``delegation_chain`` lists the services the request came through after the principal, in
    order (seed: C, C/S1, C/S2 -> ``("S1",)`` at S2). ``delegated_credentials`` is set only when
    the context granted DELEGATE: it is what an onward call made while impersonating this token
    uses (dynamic cloaking). It is never printed and never compared.
    """

    principal: str
    package: str
    impersonation_level: ImpersonationLevel = ImpersonationLevel.IMPERSONATE
    groups: frozenset[str] = frozenset()
    delegation_chain: tuple[str, ...] = ()
    protection_level: ProtectionLevel = ProtectionLevel.NONE
    expires_at: float | None = None
    delegated_credentials: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def anonymous(cls, package: str = "none") -> AccessToken:
        """The ANONYMOUS principal: its own identity, with no groups and no rights to act."""
        return cls(
            principal=ANONYMOUS_PRINCIPAL,
            package=package,
            impersonation_level=ImpersonationLevel.ANONYMOUS,
        )

    @property
    def is_anonymous(self) -> bool:
        return self.impersonation_level is ImpersonationLevel.ANONYMOUS

    @property
    def can_delegate(self) -> bool:
        return (
            self.impersonation_level >= ImpersonationLevel.DELEGATE
            and self.delegated_credentials is not None
        )

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now if now is not None else time.time()) >= (
            self.expires_at
        )

    def replace(self, **changes: Any) -> AccessToken:
        """A copy with some fields changed (tokens are immutable)."""
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        via = "".join(f"/{hop}" for hop in self.delegation_chain)
        return f"{self.principal}{via} ({self.package}, {self.impersonation_level.name})"
