"""SECURITY_STATUS codes (SEC_E_* / SEC_I_*)."""

from __future__ import annotations

import enum

__all__ = ["SecStatus"]


class SecStatus(enum.Enum):
    """Result codes. Success codes come back from ``step``; error codes ride on exceptions.

    The string value is the coarse, machine-readable reason a peer may be told (style habit
    10): it names the class of failure, never which byte, key or check failed.
    """

    OK = "ok"
    CONTINUE_NEEDED = "continue-needed"
    COMPLETE_NEEDED = "complete-needed"
    COMPLETE_AND_CONTINUE = "complete-and-continue"
    INCOMPLETE_MESSAGE = "incomplete-message"
    MESSAGE_ALTERED = "message-altered"
    OUT_OF_SEQUENCE = "out-of-sequence"
    REPLAY = "replay"
    CONTEXT_EXPIRED = "expired"
    INVALID_HANDLE = "context-unknown"
    LOGON_DENIED = "logon-denied"
    UNTRUSTED_ROOT = "untrusted-root"
    CERT_EXPIRED = "cert-expired"
    TARGET_UNKNOWN = "target-unknown"
    WRONG_PRINCIPAL = "wrong-principal"
    INVALID_TOKEN = "invalid-token"
    NO_CREDENTIALS = "no-credentials"
    QOP_NOT_SUPPORTED = "qop-not-supported"
    UNSUPPORTED_FUNCTION = "unsupported-function"
    NO_IMPERSONATION = "no-impersonation"
    DELEGATION_REQUIRED = "delegation-required"
    DELEGATION_POLICY = "delegation-policy"
    BAD_BINDINGS = "bad-bindings"
    INSUFFICIENT_ATTRIBUTES = "insufficient-attributes"
    ACCESS_DENIED = "access-denied"
    TIME_SKEW = "time-skew"
    BUSY = "busy"
    REPLAY_STORE_UNAVAILABLE = "replay-store-unavailable"
    INTERNAL_ERROR = "internal-error"

    @property
    def is_error(self) -> bool:
        return self not in _SUCCESS


_SUCCESS = frozenset(
    {
        SecStatus.OK,
        SecStatus.CONTINUE_NEEDED,
        SecStatus.COMPLETE_NEEDED,
        SecStatus.COMPLETE_AND_CONTINUE,
    }
)
