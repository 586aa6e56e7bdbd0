"""Process-wide security settings: DCOM's CoInitializeSecurity.

``initialize_security(credentials=..., protection=..., impersonation=..., policy=...)`` sets,
once per process, what ``secure_channel()`` and ``SecurityInterceptor`` use when their own
arguments are omitted. Explicit arguments always win; what neither gives falls back to the
built-in defaults (INTEGRITY, IMPERSONATE, any authenticated caller). Readers call
``effective_settings(...)`` with their explicit arguments, when a channel or interceptor is
made: settings changed later do not reach objects made earlier.

- ``credentials``: the process's identity, one handle or several (one per package). Outbound
  channels outside any impersonation scope use the first OUTBOUND one (after any
  ``rpcsec.grpc.set_default_credentials``); interceptors accept every INBOUND one.
- ``protection``: every channel's per-call level, and for servers the least level a call may
  have (CoInitializeSecurity's dwAuthnLevel is the server's minimum too): folded into the
  server's policy as a ``*`` rule, which can only raise what the policy's own rules require.
- ``impersonation``: the most a server may do as this process's callers (dwImpLevel).
- ``policy``: the servers' ``AuthorizationPolicy`` when an interceptor is given none.

A second call raises ``InvalidStateError`` unless ``replace=True``: like CoInitializeSecurity's
RPC_E_TOO_LATE, so that a library cannot quietly lower the security of the whole process
after the application chose it; ``replace=True`` says the caller means it (a configuration
reload, tests). ``CoSetProxyBlanket`` (per stub/call) is not here: see docs/settings.md.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rpcsec.sspi import (
    Credentials,
    CredentialUse,
    ImpersonationLevel,
    InvalidStateError,
    NoCredentialsError,
    ProtectionLevel,
)

if TYPE_CHECKING:
    from rpcsec.grpc._policy import AuthorizationPolicy

__all__ = [
    "SecuritySettings",
    "current_security_settings",
    "effective_settings",
    "initialize_security",
    "uninitialize_security",
]

_LEVELS = (ProtectionLevel.INTEGRITY, ProtectionLevel.PRIVACY)


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """One set of security settings: the process's, or those a channel/interceptor uses.

    ``minimum_protection`` is the process's ``protection`` (None when it set none): the floor a
    server applies to every call.
    """

    credentials: tuple[Credentials, ...] = ()
    protection: ProtectionLevel = ProtectionLevel.INTEGRITY
    impersonation: ImpersonationLevel = ImpersonationLevel.IMPERSONATE
    policy: AuthorizationPolicy | None = None
    minimum_protection: ProtectionLevel | None = None

    def outbound_credentials(self) -> Credentials | None:
        """The first OUTBOUND handle (the process calling as itself), or None."""
        return next((c for c in self.credentials if c.use & CredentialUse.OUTBOUND), None)

    def inbound_credentials(self) -> tuple[Credentials, ...]:
        """Every INBOUND handle, or ``NoCredentialsError`` when there is none."""
        inbound = tuple(c for c in self.credentials if c.use & CredentialUse.INBOUND)
        if not inbound:
            raise NoCredentialsError(
                "a SecurityInterceptor needs INBOUND credentials: pass them, or set them with "
                "rpcsec.initialize_security(credentials=...)"
            )
        return inbound

    def server_policy(self) -> AuthorizationPolicy:
        """The policy a server enforces: ``policy`` (default: any authenticated caller) with
        the process's minimum protection folded in as a ``*`` rule."""
        from rpcsec.grpc._policy import AuthorizationPolicy, AuthorizationRule

        policy = self.policy if self.policy is not None else AuthorizationPolicy.any_authenticated()
        floor = self.minimum_protection
        if floor is None or not isinstance(policy, AuthorizationPolicy):
            return policy  # (the reader refuses a policy of the wrong type)
        rules = (*policy.rules, AuthorizationRule("*", min_protection=floor))
        return AuthorizationPolicy(rules, default=policy.default)


_process: SecuritySettings | None = None
_lock = threading.Lock()


def _credentials(value: Credentials | Iterable[Credentials]) -> tuple[Credentials, ...]:
    items = (value,) if isinstance(value, Credentials) else tuple(value)
    if not items:
        raise ValueError("credentials must name at least one handle")
    for item in items:
        if not isinstance(item, Credentials):
            raise TypeError("credentials must come from acquire_credentials_handle()")
    return items


def initialize_security(
    *,
    credentials: Credentials | Iterable[Credentials] | None = None,
    protection: ProtectionLevel | None = None,
    impersonation: ImpersonationLevel | None = None,
    policy: AuthorizationPolicy | None = None,
    replace: bool = False,
) -> SecuritySettings:
    """CoInitializeSecurity: the process's security defaults (see the module docstring).

    Raises:
        InvalidStateError: called before without ``replace=True``.
        TypeError, ValueError: an argument of the wrong type or value.
    """
    global _process
    handles = _credentials(credentials) if credentials is not None else ()
    if protection is not None and protection not in _LEVELS:
        raise ValueError("protection must be ProtectionLevel.INTEGRITY or PRIVACY")
    if impersonation is not None and not isinstance(impersonation, ImpersonationLevel):
        raise TypeError("impersonation must be an ImpersonationLevel")
    if policy is not None:
        from rpcsec.grpc._policy import AuthorizationPolicy

        if not isinstance(policy, AuthorizationPolicy):
            raise TypeError("policy must be an AuthorizationPolicy")
    settings = SecuritySettings(
        credentials=handles,
        protection=protection or ProtectionLevel.INTEGRITY,
        impersonation=impersonation or ImpersonationLevel.IMPERSONATE,
        policy=policy,
        minimum_protection=protection,
    )
    with _lock:
        if _process is not None and not replace:
            raise InvalidStateError(
                "initialize_security() was already called for this process; pass "
                "replace=True to change the process's security settings deliberately"
            )
        _process = settings
    return settings


def uninitialize_security() -> None:
    """Forget the process's settings (tests; CoUninitialize). Made objects keep theirs."""
    global _process
    with _lock:
        _process = None


def current_security_settings() -> SecuritySettings | None:
    """What ``initialize_security`` set, or None."""
    return _process


def effective_settings(
    *,
    credentials: Credentials | Iterable[Credentials] | None = None,
    protection: ProtectionLevel | None = None,
    impersonation: ImpersonationLevel | None = None,
    policy: AuthorizationPolicy | None = None,
) -> SecuritySettings:
    """The settings a channel or interceptor uses: each explicit argument, else the process's
    (``initialize_security``), else the built-in default. Arguments are checked by the reader
    (as they were before there were process settings)."""
    process = _process or SecuritySettings()
    explicit: dict[str, Any] = {}
    if credentials is not None:
        explicit["credentials"] = _credentials(credentials)
    return SecuritySettings(
        credentials=explicit.get("credentials", process.credentials),
        protection=protection if protection is not None else process.protection,
        impersonation=impersonation if impersonation is not None else process.impersonation,
        policy=policy if policy is not None else process.policy,
        minimum_protection=process.minimum_protection,
    )
