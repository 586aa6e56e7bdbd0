"""The one table between the core's ContextReq and GSS-API's request flags (RFC 2744 §5.19).

REPLAY_DETECT and SEQUENCE_DETECT are deliberately absent: the core runs its own anti-replay
window and sequence counter over a header it binds into every token, so the GSS context is
established *without* GSS_C_REPLAY_FLAG / GSS_C_SEQUENCE_FLAG. Otherwise krb5's strict per-token
sequence check would reject calls that a multiplexed HTTP/2 connection delivers out of order.
"""

from __future__ import annotations

from rpcsec.sspi._flags import ContextReq, ImpersonationLevel

from ._native import gss

__all__ = ["from_gss", "to_gss"]


def _table() -> tuple[tuple[ContextReq, int], ...]:
    if gss is None:  # pragma: no cover
        return ()
    flag = gss.RequirementFlag
    return (
        (ContextReq.DELEGATE, int(flag.delegate_to_peer)),
        (ContextReq.MUTUAL_AUTH, int(flag.mutual_authentication)),
        (ContextReq.CONFIDENTIALITY, int(flag.confidentiality)),
        (ContextReq.INTEGRITY, int(flag.integrity)),
        (ContextReq.IDENTIFY, int(flag.identify)),
        (ContextReq.EXTENDED_ERROR, int(flag.extended_error)),
    )


_TABLE = _table()


def to_gss(requested: ContextReq, impersonation: ImpersonationLevel) -> int:
    """GSS request flags for InitializeSecurityContext.

    Integrity and confidentiality are always asked for (the grant travels in a GSS wrap token
    and MIT sets them anyway). The TGT is forwarded (GSS_C_DELEG_FLAG) only when the caller
    asked for DELEGATE *and* allows the DELEGATE impersonation level: a ticket the server could
    impersonate us with anywhere must never leave on a lesser request.
    """
    wanted = requested.normalized() | ContextReq.INTEGRITY | ContextReq.CONFIDENTIALITY
    if impersonation < ImpersonationLevel.DELEGATE:
        wanted &= ~ContextReq.DELEGATE
    if impersonation <= ImpersonationLevel.IDENTIFY:
        wanted |= ContextReq.IDENTIFY
    flags = 0
    for ours, theirs in _TABLE:
        if wanted & ours:
            flags |= theirs
    return flags


def from_gss(flags: int) -> ContextReq:
    """The ContextReq attributes a GSS context reports (ret_flags) it has."""
    result = ContextReq.NONE
    for ours, theirs in _TABLE:
        if int(flags) & theirs:
            result |= ours
    return result
