"""The one place that maps a ``SecurityError`` to a gRPC status (style habit 4).

A refused call ends with UNAVAILABLE when the shared replay store could not answer
(``replay-store-unavailable``: the handler never ran), UNAUTHENTICATED (the caller could not
be authenticated: bad, expired or unknown context, bad signature, replay, missing handle) or
PERMISSION_DENIED (the caller is
known but may not do this: authorization policy, access check, impersonation level, delegation
required or forbidden), never INTERNAL or UNKNOWN. The trailing metadata carries the coarse
reason (``SecurityError.reason``, e.g. ``message-altered``) under ``rpcsec-reason``; the status
details say no more than the reason (style habit 10): the local log has the detail.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from rpcsec.sspi import SecStatus, SecurityError, error_for_status

from ._wire import NOT_RUN_KEY

__all__ = [
    "REASON_KEY",
    "details_for",
    "error_from_rpc",
    "not_run_of",
    "passthrough_status",
    "reason_of",
    "status_for",
    "trailing_metadata_for",
]

REASON_KEY = "rpcsec-reason"

_PERMISSION_DENIED = frozenset(
    {
        SecStatus.ACCESS_DENIED,
        SecStatus.NO_IMPERSONATION,
        SecStatus.DELEGATION_REQUIRED,
        SecStatus.DELEGATION_POLICY,
        SecStatus.INSUFFICIENT_ATTRIBUTES,
        SecStatus.QOP_NOT_SUPPORTED,
    }
)
_RESOURCE_EXHAUSTED = frozenset({SecStatus.BUSY})
# The call could not be proven fresh because the shared replay store did not answer: the
# handler never ran, and the caller may try again (fail closed, never open).
_UNAVAILABLE = frozenset({SecStatus.REPLAY_STORE_UNAVAILABLE})

_BY_STATUS: dict[SecStatus, grpc.StatusCode] = {}
for _status in SecStatus:
    if not _status.is_error:
        continue
    if _status in _PERMISSION_DENIED:
        _BY_STATUS[_status] = grpc.StatusCode.PERMISSION_DENIED
    elif _status in _RESOURCE_EXHAUSTED:
        _BY_STATUS[_status] = grpc.StatusCode.RESOURCE_EXHAUSTED
    elif _status in _UNAVAILABLE:
        _BY_STATUS[_status] = grpc.StatusCode.UNAVAILABLE
    else:
        _BY_STATUS[_status] = grpc.StatusCode.UNAUTHENTICATED

_REASONS = frozenset(status.value for status in _BY_STATUS)


def status_for(error: SecurityError) -> grpc.StatusCode:
    """The gRPC status a refused call ends with."""
    return _BY_STATUS.get(error.status, grpc.StatusCode.UNAUTHENTICATED)


def details_for(reason: str) -> str:
    """Status details a peer may read: the coarse reason and nothing else."""
    return f"rpcsec: {reason}"


def trailing_metadata_for(
    reason: str, not_run: bytes | None = None
) -> tuple[tuple[str, str | bytes], ...]:
    """The refusal's trailers: the reason, and the signed "did not run" when there is one."""
    if not_run is None:
        return ((REASON_KEY, reason),)
    return ((REASON_KEY, reason), (NOT_RUN_KEY, not_run))


def not_run_of(error: BaseException) -> bytes | None:
    """The ``rpcsec-not-run-bin`` token a refused call carried (unverified), or None."""
    trailing = getattr(error, "trailing_metadata", None)
    if not callable(trailing):
        return None
    try:
        metadata = trailing()
    except Exception:
        return None
    for item in metadata or ():
        if item[0] == NOT_RUN_KEY and isinstance(item[1], bytes):
            return bytes(item[1])
    return None


_MAX_REASON = 48
_REASON_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _metadata_reason(metadata: Iterable[Any] | None) -> str | None:
    for item in metadata or ():
        key, value = item[0], item[1]
        if key == REASON_KEY:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            return _bounded(text)
    return None


def _bounded(text: str) -> str:
    """A reason as a peer may state it: rpcsec's reasons are short lowercase codes. Anything
    else (5 000 characters, newlines, escapes) is not repeated to the application or a log:
    it becomes ``unknown-reason`` (issue 10 item 7)."""
    if not text or len(text) > _MAX_REASON or not set(text) <= _REASON_CHARS:
        return "unknown-reason"
    return text


def reason_of(error: BaseException) -> str | None:
    """The ``rpcsec-reason`` a refused call carried, or None (not an rpcsec refusal).

    Works for the sync ``grpc.RpcError`` (a ``grpc.Call``) and ``grpc.aio.AioRpcError``.
    """
    trailing = getattr(error, "trailing_metadata", None)
    if not callable(trailing):
        return None
    try:
        metadata = trailing()
    except Exception:  # an RpcError that is not a finished call has no metadata
        return None
    return _metadata_reason(metadata)


def passthrough_status(error: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """For a ``grpc.RpcError`` an onward rpcsec call raised inside a handler: the status and
    reason to end *this* call with, so a refusal several hops away reaches the first caller
    clearly. None when the error is not an rpcsec refusal."""
    reason = reason_of(error)
    if reason is None:
        return None
    if reason not in _REASONS:
        return None  # not a reason rpcsec gives: do not repeat what another server made up
    code_of = getattr(error, "code", None)
    try:
        code = code_of() if callable(code_of) else None
    except Exception:
        code = None
    if code is not _BY_STATUS[SecStatus(reason)]:
        return None
    return code, reason


def error_from_rpc(error: BaseException) -> SecurityError | None:
    """The typed ``SecurityError`` an rpcsec refusal stands for, or None."""
    reason = reason_of(error)
    if reason is None:
        return None
    return error_for_status(reason, f"server refused the call: {reason}")
