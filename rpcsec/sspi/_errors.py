"""The SecurityError hierarchy: one class per failure, each with a class-level status.

What the *peer* did wrong raises a ``SecurityError`` subclass; what the *caller* did wrong
(wrong type, missing argument, calling out of order) raises ``TypeError`` / ``ValueError`` /
``InvalidStateError`` at once. ``str(error)`` is local detail for logs and never contains key
material; ``error.reason`` is the coarse code a peer may be told.
"""

from __future__ import annotations

from typing import ClassVar

from ._status import SecStatus

__all__ = [
    "AccessDeniedError",
    "BadBindingsError",
    "BusyError",
    "CertificateExpiredError",
    "ContextExpiredError",
    "DelegationPolicyError",
    "DelegationRequiredError",
    "IncompleteMessageError",
    "InsufficientAttributesError",
    "InternalSecurityError",
    "InvalidHandleError",
    "InvalidStateError",
    "InvalidTokenError",
    "LogonDeniedError",
    "MessageAlteredError",
    "NoCredentialsError",
    "NoImpersonationError",
    "OutOfSequenceError",
    "QopNotSupportedError",
    "ReplayError",
    "ReplayStoreUnavailableError",
    "SecurityError",
    "TargetUnknownError",
    "TimeSkewError",
    "UnsupportedFunctionError",
    "UntrustedRootError",
    "WrongPrincipalError",
    "error_for_status",
]


class InvalidStateError(RuntimeError):
    """The caller used a context out of order (e.g. signing before the handshake completed)."""


class SecurityError(Exception):
    """Base of every failure caused by the peer, the network or the credentials."""

    status: ClassVar[SecStatus] = SecStatus.INTERNAL_ERROR

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.status.value)

    @property
    def reason(self) -> str:
        """Coarse, machine-readable reason safe to send to the peer."""
        return self.status.value


class InvalidTokenError(SecurityError):
    """A handshake token could not be parsed or was rejected (SEC_E_INVALID_TOKEN)."""

    status = SecStatus.INVALID_TOKEN


class IncompleteMessageError(SecurityError):
    """More bytes are needed (SEC_E_INCOMPLETE_MESSAGE). No state changed; call again.

    ``missing`` is how many more bytes are known to be needed (SECBUFFER_MISSING), or 0.
    """

    status = SecStatus.INCOMPLETE_MESSAGE

    def __init__(self, message: str | None = None, *, missing: int = 0) -> None:
        super().__init__(message)
        self.missing = missing


class MessageAlteredError(SecurityError):
    """The signature or tag did not verify (SEC_E_MESSAGE_ALTERED)."""

    status = SecStatus.MESSAGE_ALTERED


class OutOfSequenceError(SecurityError):
    """A message arrived out of order on a SEQUENCE_DETECT context (SEC_E_OUT_OF_SEQUENCE)."""

    status = SecStatus.OUT_OF_SEQUENCE


class ReplayError(SecurityError):
    """A message was seen before or is older than the replay window (SEC_E_REPLAY)."""

    status = SecStatus.REPLAY


class ContextExpiredError(SecurityError):
    """The context's lifespan ended or it was deleted (SEC_E_CONTEXT_EXPIRED)."""

    status = SecStatus.CONTEXT_EXPIRED


class InvalidHandleError(SecurityError):
    """The peer named a context this side does not know (SEC_E_INVALID_HANDLE)."""

    status = SecStatus.INVALID_HANDLE


class LogonDeniedError(SecurityError):
    """The credentials were rejected: wrong password, unknown user (SEC_E_LOGON_DENIED)."""

    status = SecStatus.LOGON_DENIED


class UntrustedRootError(SecurityError):
    """The peer's certificate chain does not lead to a trusted authority."""

    status = SecStatus.UNTRUSTED_ROOT


class CertificateExpiredError(SecurityError):
    """A certificate in the peer's chain is outside its validity period (SEC_E_CERT_EXPIRED)."""

    status = SecStatus.CERT_EXPIRED


class TargetUnknownError(SecurityError):
    """The target name is unknown to the package (SEC_E_TARGET_UNKNOWN)."""

    status = SecStatus.TARGET_UNKNOWN


class WrongPrincipalError(SecurityError):
    """The server proved an identity other than the target name (SEC_E_WRONG_PRINCIPAL)."""

    status = SecStatus.WRONG_PRINCIPAL


class NoCredentialsError(SecurityError):
    """No usable credentials (SEC_E_NO_CREDENTIALS)."""

    status = SecStatus.NO_CREDENTIALS


class QopNotSupportedError(SecurityError):
    """The package cannot give the requested quality of protection (SEC_E_QOP_NOT_SUPPORTED)."""

    status = SecStatus.QOP_NOT_SUPPORTED


class UnsupportedFunctionError(SecurityError):
    """The package does not implement this call (SEC_E_UNSUPPORTED_FUNCTION)."""

    status = SecStatus.UNSUPPORTED_FUNCTION


class NoImpersonationError(SecurityError):
    """The context's impersonation level does not allow this (SEC_E_NO_IMPERSONATION)."""

    status = SecStatus.NO_IMPERSONATION


class DelegationRequiredError(SecurityError):
    """An onward call on a caller's behalf needs a delegation-level context (seed: "WATCH OUT
    FOR THIS"). Raised by the onward InitializeSecurityContext (SEC_E_DELEGATION_REQUIRED)."""

    status = SecStatus.DELEGATION_REQUIRED


class DelegationPolicyError(SecurityError):
    """Delegated credentials exist but their policy forbids this use: target not allowed,
    depth exhausted, proxy expired or not signed by the principal it claims."""

    status = SecStatus.DELEGATION_POLICY


class BadBindingsError(SecurityError):
    """Channel bindings did not match (SEC_E_BAD_BINDINGS)."""

    status = SecStatus.BAD_BINDINGS


class InsufficientAttributesError(SecurityError):
    """The established context lacks attributes the caller required."""

    status = SecStatus.INSUFFICIENT_ATTRIBUTES


class AccessDeniedError(SecurityError):
    """An access check or authorization policy refused the caller (E_ACCESSDENIED)."""

    status = SecStatus.ACCESS_DENIED


class TimeSkewError(SecurityError):
    """The peers' clocks differ by more than allowed (SEC_E_TIME_SKEW)."""

    status = SecStatus.TIME_SKEW


class BusyError(SecurityError):
    """Too many handshakes in progress; try later (SEC_E_INSUFFICIENT_MEMORY analogue)."""

    status = SecStatus.BUSY


class ReplayStoreUnavailableError(SecurityError):
    """The shared replay store could not answer (connection, timeout, script error), so the
    call cannot be proven fresh and is refused (fail closed). Bindings map it to UNAVAILABLE:
    the caller may retry; the handler never ran."""

    status = SecStatus.REPLAY_STORE_UNAVAILABLE


class InternalSecurityError(SecurityError):
    """A failure inside the package that is not the peer's fault (SEC_E_INTERNAL_ERROR)."""

    status = SecStatus.INTERNAL_ERROR


_BY_STATUS: dict[SecStatus, type[SecurityError]] = {
    cls.status: cls
    for cls in (
        InvalidTokenError,
        IncompleteMessageError,
        MessageAlteredError,
        OutOfSequenceError,
        ReplayError,
        ContextExpiredError,
        InvalidHandleError,
        LogonDeniedError,
        UntrustedRootError,
        CertificateExpiredError,
        TargetUnknownError,
        WrongPrincipalError,
        NoCredentialsError,
        QopNotSupportedError,
        UnsupportedFunctionError,
        NoImpersonationError,
        DelegationRequiredError,
        DelegationPolicyError,
        BadBindingsError,
        InsufficientAttributesError,
        AccessDeniedError,
        TimeSkewError,
        BusyError,
        ReplayStoreUnavailableError,
        InternalSecurityError,
    )
}


def error_for_status(reason: str | SecStatus, message: str | None = None) -> SecurityError:
    """Rebuild the typed error a peer reported by its coarse reason code.

    Unknown codes become ``InvalidTokenError``: a peer cannot make us raise anything else.
    """
    try:
        status = reason if isinstance(reason, SecStatus) else SecStatus(reason)
    except ValueError:
        return InvalidTokenError(message or "peer reported an unknown failure")
    cls = _BY_STATUS.get(status, InvalidTokenError)
    return cls(message)
