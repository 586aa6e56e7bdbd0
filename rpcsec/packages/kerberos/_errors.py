"""Native GSS-API / krb5 failures translated to the core's typed errors (one table).

A GSS error carries a major (routine) status, which says little ("unspecified failure"), and a
minor status, which for the Kerberos mechanism is a krb5 error code (``krb5.h``) naming what
really happened. The krb5 code decides first; the routine class is the fallback. The same
code can mean different things depending on who saw it -- a ticket that does not decrypt on
the acceptor means the client holds a ticket for a key this service does not have (SSPI's
SEC_E_WRONG_PRINCIPAL), while a failed decrypt during AcquireCredentialsHandle with a password
is a wrong password (SEC_E_LOGON_DENIED) -- so translation takes the phase.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager

from rpcsec.sspi._errors import (
    BadBindingsError,
    ContextExpiredError,
    InvalidTokenError,
    LogonDeniedError,
    MessageAlteredError,
    NoCredentialsError,
    OutOfSequenceError,
    ReplayError,
    SecurityError,
    TargetUnknownError,
    TimeSkewError,
    WrongPrincipalError,
)

from ._native import gss

__all__ = ["Phase", "native_call", "translate"]


class Phase(enum.Enum):
    """Which SSPI call a native failure happened in."""

    ACQUIRE = "acquire"  # AcquireCredentialsHandle
    INITIATE = "initiate"  # InitializeSecurityContext
    ACCEPT = "accept"  # AcceptSecurityContext
    MESSAGE = "message"  # MakeSignature / VerifySignature / EncryptMessage / DecryptMessage


# krb5 error codes (com_err table "krb5", base -1765328384) -> error class.
_KRB5: dict[int, type[SecurityError]] = {
    -1765328378: LogonDeniedError,  # KDC_ERR_C_PRINCIPAL_UNKNOWN: no such client
    -1765328377: TargetUnknownError,  # KDC_ERR_S_PRINCIPAL_UNKNOWN: no such service
    -1765328373: ContextExpiredError,  # KDC_ERR_NEVER_VALID
    -1765328372: LogonDeniedError,  # KDC_ERR_POLICY
    -1765328366: LogonDeniedError,  # KDC_ERR_CLIENT_REVOKED
    -1765328361: LogonDeniedError,  # KDC_ERR_KEY_EXP: password expired
    -1765328360: LogonDeniedError,  # KDC_ERR_PREAUTH_FAILED: wrong password
    -1765328353: LogonDeniedError,  # KRB_AP_ERR_BAD_INTEGRITY (phase-dependent, below)
    -1765328352: ContextExpiredError,  # KRB_AP_ERR_TKT_EXPIRED
    -1765328351: TimeSkewError,  # KRB_AP_ERR_TKT_NYV: ticket not yet valid
    -1765328350: ReplayError,  # KRB_AP_ERR_REPEAT: the replay cache saw this authenticator
    -1765328349: WrongPrincipalError,  # KRB_AP_ERR_NOT_US
    -1765328348: InvalidTokenError,  # KRB_AP_ERR_BADMATCH
    -1765328347: TimeSkewError,  # KRB_AP_ERR_SKEW
    -1765328345: InvalidTokenError,  # KRB_AP_ERR_BADVERSION
    -1765328344: InvalidTokenError,  # KRB_AP_ERR_MSG_TYPE
    -1765328343: InvalidTokenError,  # KRB_AP_ERR_MODIFIED
    -1765328340: WrongPrincipalError,  # KRB_AP_ERR_BADKEYVER: keytab has another kvno
    -1765328339: WrongPrincipalError,  # KRB_AP_ERR_NOKEY
    -1765328338: InvalidTokenError,  # KRB_AP_ERR_MUT_FAIL: the AP-REP did not verify
    -1765328316: TargetUnknownError,  # KDC_ERR_WRONG_REALM
    -1765328243: NoCredentialsError,  # KRB5_CC_NOTFOUND: no matching credentials in ccache
    -1765328241: NoCredentialsError,  # KRB5_NO_TKT_SUPPLIED
    -1765328239: InvalidTokenError,  # KRB_AP_ERR_TKT_INVALID
    -1765328238: WrongPrincipalError,  # KRB5_PRINC_NOMATCH
    -1765328236: TimeSkewError,  # KRB5_KDCREP_SKEW: the KDC's reply is out of our clock window
    -1765328230: TargetUnknownError,  # KRB5_REALM_UNKNOWN: no KDC known for the realm
    -1765328228: NoCredentialsError,  # KRB5_KDC_UNREACH: no KDC answered
    -1765328203: WrongPrincipalError,  # KRB5_KT_NOTFOUND (phase-dependent, below)
    -1765328189: NoCredentialsError,  # KRB5_FCC_NOFILE: no credentials cache
    -1765328185: NoCredentialsError,  # KRB5_CC_FORMAT
    -1765328174: LogonDeniedError,  # KRB5_PREAUTH_FAILED
    -1765328164: TargetUnknownError,  # KRB5_REALM_CANT_RESOLVE
    -1765328154: WrongPrincipalError,  # KRB5_KT_KVNONOTFOUND
    -1765328149: NoCredentialsError,  # KRB5_KT_FORMAT
}
_KRB5_BY_PHASE: dict[tuple[Phase, int], type[SecurityError]] = {
    # The acceptor could not decrypt the ticket: it was made for a key this keytab lacks.
    (Phase.ACCEPT, -1765328353): WrongPrincipalError,
    # The initiator could not decrypt the acceptor's AP-REP.
    (Phase.INITIATE, -1765328353): InvalidTokenError,
    # No keytab entry: while acquiring, the keytab lacks the principal we asked for.
    (Phase.ACQUIRE, -1765328203): NoCredentialsError,
    (Phase.ACQUIRE, -1765328154): NoCredentialsError,
}
_DEFAULT: dict[Phase, type[SecurityError]] = {
    Phase.ACQUIRE: NoCredentialsError,
    Phase.INITIATE: InvalidTokenError,
    Phase.ACCEPT: InvalidTokenError,
    Phase.MESSAGE: MessageAlteredError,
}


def _routine_table() -> tuple[tuple[type[BaseException], type[SecurityError]], ...]:
    if gss is None:  # pragma: no cover
        return ()
    ex = gss.exceptions
    return (
        (ex.BadChannelBindingsError, BadBindingsError),
        (ex.DuplicateTokenError, ReplayError),
        (ex.TokenTooLateError, ReplayError),  # GSS_S_OLD_TOKEN
        (ex.TokenOutOfSequenceError, OutOfSequenceError),
        (ex.ExpiredContextError, ContextExpiredError),
        (ex.ExpiredCredentialsError, ContextExpiredError),
        (ex.MissingCredentialsError, NoCredentialsError),
        (ex.InvalidCredentialsError, LogonDeniedError),
        (ex.BadNameError, TargetUnknownError),
        (ex.BadNameTypeError, TargetUnknownError),
        (ex.BadMICError, MessageAlteredError),
        (ex.InvalidTokenError, InvalidTokenError),
        (ex.BadMechanismError, InvalidTokenError),
    )


_ROUTINE = _routine_table()


def _signed(code: int) -> int:
    return code - (1 << 32) if code >= 1 << 31 else code


def translate(exc: BaseException, phase: Phase, what: str) -> SecurityError:
    """The typed error for a native failure (the caller raises it ``from exc``)."""
    detail = str(exc).strip() or type(exc).__name__
    if phase is Phase.MESSAGE:
        expired = gss is not None and isinstance(
            exc, gss.exceptions.ExpiredContextError | gss.exceptions.ExpiredCredentialsError
        )
        cls: type[SecurityError] = ContextExpiredError if expired else MessageAlteredError
        return cls(f"{what}: {detail}")
    minor = getattr(exc, "min_code", None)
    if isinstance(minor, int):
        code = _signed(minor)
        found = _KRB5_BY_PHASE.get((phase, code)) or _KRB5.get(code)
        if found is not None:
            return found(f"{what}: {detail}")
    for native, mapped in _ROUTINE:
        if isinstance(exc, native):
            return mapped(f"{what}: {detail}")
    return _DEFAULT[phase](f"{what}: {detail}")


@contextmanager
def native_call(phase: Phase, what: str) -> Iterator[None]:
    """Run native GSS code; any GSS error leaves as the typed ``SecurityError``."""
    try:
        yield
    except SecurityError:
        raise
    except Exception as exc:
        if gss is not None and isinstance(exc, gss.GSSError):
            raise translate(exc, phase, what) from exc
        raise
