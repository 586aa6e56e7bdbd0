"""Per-method authorization: who may call what, and at which protection and impersonation level.

The server checks the policy after the call's signature verified and before the handler runs.
Rules name a method (``/pkg.Svc/Method``), a whole service (``/pkg.Svc/*``) or everything
(``*``). Every rule that matches a method applies, as ACEs of one DACL do:

1. deny before allow: a caller any matching rule denies is refused (the Windows canonical ACE
   order ``SecurityDescriptor`` also follows);
2. every matching rule's minimum protection and impersonation level must be met, so a
   specific rule can never weaken a global requirement;
3. a caller some matching rule allows is admitted; otherwise ``default`` decides.

``default`` is DENY: a method nobody wrote a rule for (one added later, a debug service) is
not silently exposed; fail closed. Trustees are principals, ``group:NAME``, or
``group:everyone`` (every authenticated principal except ANONYMOUS); an ANONYMOUS-level caller
is admitted only by a rule naming ``anonymous``, whatever ``default`` says. A refusal raises
``AccessDeniedError`` (PERMISSION_DENIED, reason ``access-denied``).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from rpcsec.security import EVERYONE, AccessToken, matches_trustees
from rpcsec.security import _audit as audit
from rpcsec.sspi import AccessDeniedError, ImpersonationLevel, ProtectionLevel

__all__ = ["AuthorizationPolicy", "AuthorizationRule", "Decision"]

_MAX_CACHED_METHODS = 4096


class Decision(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


def _trustees(value: Iterable[str] | str) -> frozenset[str]:
    if isinstance(value, str):
        value = (value,)
    names = frozenset(value)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError("trustees are non-empty strings: principals or group:NAME")
    return names


@dataclass(frozen=True, slots=True)
class AuthorizationRule:
    """One rule: which callers a method (or service, or everything) allows or denies, and the
    least protection and impersonation level its calls need."""

    method: str = "*"
    allow: Iterable[str] = frozenset()
    deny: Iterable[str] = frozenset()
    min_protection: ProtectionLevel = ProtectionLevel.NONE
    min_impersonation: ImpersonationLevel = ImpersonationLevel.ANONYMOUS

    def __post_init__(self) -> None:
        method = self.method
        if not isinstance(method, str):
            raise TypeError("rule method must be a string")
        if method != "*":
            service, sep, name = method[1:].rpartition("/")
            if not method.startswith("/") or not sep or not service or not name:
                raise ValueError(
                    f"rule method must be '/pkg.Service/Method', '/pkg.Service/*' or '*', "
                    f"not {method!r}"
                )
            if "*" in service or ("*" in name and name != "*"):
                raise ValueError("only a whole method name may be the wildcard '*'")
        object.__setattr__(self, "allow", _trustees(self.allow))
        object.__setattr__(self, "deny", _trustees(self.deny))
        if not isinstance(self.min_protection, ProtectionLevel):
            raise TypeError("min_protection must be a ProtectionLevel")
        if not isinstance(self.min_impersonation, ImpersonationLevel):
            raise TypeError("min_impersonation must be an ImpersonationLevel")


@dataclass(frozen=True, slots=True)
class _Effective:
    """Every rule matching one method, folded together."""

    allow: frozenset[str]
    deny: frozenset[str]
    min_protection: ProtectionLevel
    min_impersonation: ImpersonationLevel


def _matches(trustees: frozenset[str], token: AccessToken) -> bool:
    return matches_trustees(trustees, token)  # anonymity by the token's level (issue 10)


class AuthorizationPolicy:
    """A set of ``AuthorizationRule``; ``check`` raises ``AccessDeniedError`` or returns."""

    def __init__(
        self, rules: Iterable[AuthorizationRule] = (), *, default: Decision = Decision.DENY
    ) -> None:
        self.rules = tuple(rules)
        for rule in self.rules:
            if not isinstance(rule, AuthorizationRule):
                raise TypeError("rules must be AuthorizationRule objects")
        if not isinstance(default, Decision):
            raise TypeError("default must be a Decision")
        self.default = default
        self._cache: dict[str, _Effective] = {}
        self._lock = threading.Lock()

    @classmethod
    def any_authenticated(cls) -> AuthorizationPolicy:
        """Every authenticated caller (not ANONYMOUS) may call every method; handlers then do
        access checks as the caller (``access_check``), the seed's impersonation model."""
        return cls([AuthorizationRule("*", allow=frozenset({EVERYONE}))])

    def _effective(self, method: str) -> _Effective:
        cached = self._cache.get(method)
        if cached is not None:
            return cached
        service = method.rpartition("/")[0]
        keys = {"*", method, f"{service}/*"}
        matching = [rule for rule in self.rules if rule.method in keys]
        effective = _Effective(
            allow=frozenset().union(*(_trustees(r.allow) for r in matching)),
            deny=frozenset().union(*(_trustees(r.deny) for r in matching)),
            min_protection=max((r.min_protection for r in matching), default=ProtectionLevel.NONE),
            min_impersonation=max(
                (r.min_impersonation for r in matching), default=ImpersonationLevel.ANONYMOUS
            ),
        )
        with self._lock:
            if len(self._cache) < _MAX_CACHED_METHODS:
                self._cache[method] = effective
        return effective

    def check(self, method: str, token: AccessToken) -> None:
        """AccessCheck for one call: ``token`` is the caller at this call's protection level."""
        try:
            self._decide(method, token)
        except AccessDeniedError as exc:
            audit.denied(exc, token, by="policy", method=method)  # the audit record
            raise

    def _decide(self, method: str, token: AccessToken) -> None:
        rules = self._effective(method)
        if rules.deny and _matches(rules.deny, token):
            raise AccessDeniedError(f"{token.principal} is denied {method}")
        if token.protection_level < rules.min_protection:
            raise AccessDeniedError(
                f"{method} needs protection level {rules.min_protection.name}, the call has "
                f"{token.protection_level.name}"
            )
        if token.impersonation_level < rules.min_impersonation:
            raise AccessDeniedError(
                f"{method} needs impersonation level {rules.min_impersonation.name}, the "
                f"caller allowed {token.impersonation_level.name}"
            )
        if rules.allow and _matches(rules.allow, token):
            return
        if self.default is Decision.ALLOW and not token.is_anonymous:
            return  # an ANONYMOUS caller is admitted only by a rule naming "anonymous"
        raise AccessDeniedError(f"{token.principal} is not allowed {method}")

    def __repr__(self) -> str:
        return f"AuthorizationPolicy({len(self.rules)} rules, default={self.default.name})"
