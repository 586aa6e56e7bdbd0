"""What a client application sees of a call's outcome: the server's signed word, or not.

``call_status(call_or_error)`` returns the ``CallStatus`` (``_call_status``) of a call made on
a secure channel: ``verified`` says whether the server signed this very call's status, details
and response metadata. The call objects and errors the sync channel hands out for a signed
outcome answer ``initial_metadata()`` / ``trailing_metadata()`` with the signed entries only;
an outcome that does not match its signature raises ``MessageAlteredError`` (also a
``grpc.RpcError``) instead. An outcome nobody signed (a proxy's error, an rpcsec refusal, a
handler that raised) is passed on as gRPC gave it, and ``call_status`` says it is unverified.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from rpcsec.sspi import SecurityError

from ._call_status import CallStatus, open_status, open_stream_outcome, open_unary_outcome
from ._client_errors import as_rpc_error

__all__ = [
    "VerifiedCall",
    "VerifiedRpcError",
    "call_status",
    "checked_error",
    "checked_response",
    "checked_status",
    "checked_stream_status",
]


def checked_status(protection: Any, prefix: bytes, call_seq: bytes, call: Any) -> CallStatus:
    """``open_status`` of a finished grpc call; a mismatch raises as a ``grpc.RpcError``."""
    try:
        return open_status(
            protection,
            prefix,
            call_seq,
            call.code(),
            call.details(),
            call.initial_metadata(),
            call.trailing_metadata(),
        )
    except SecurityError as exc:
        raise as_rpc_error(exc) from None


def checked_response(
    protection: Any,
    prefix: bytes,
    call_seq: bytes,
    response: bytes,
    encrypt: bool,
    call: Any,
    open_ok: Callable[[bytes, bytes], bytes | None] | None = None,
) -> tuple[bytes, CallStatus]:
    """``open_unary_outcome`` of a finished grpc call that returned ``response``; a response
    or outcome that does not verify raises as a ``grpc.RpcError``."""
    try:
        return open_unary_outcome(
            protection,
            prefix,
            call_seq,
            response,
            encrypt,
            call.code(),
            call.details(),
            call.initial_metadata(),
            call.trailing_metadata(),
            open_ok,
        )
    except SecurityError as exc:
        raise as_rpc_error(exc) from None


def checked_stream_status(
    protection: Any, prefix: bytes, call_seq: bytes, inbound: Any, call: Any
) -> CallStatus:
    """``open_stream_outcome`` of a finished response stream; a mismatch raises as a
    ``grpc.RpcError``."""
    try:
        return open_stream_outcome(
            protection,
            prefix,
            call_seq,
            inbound,
            call.code(),
            call.details(),
            call.initial_metadata(),
            call.trailing_metadata(),
        )
    except SecurityError as exc:
        raise as_rpc_error(exc) from None


class RawCallDelegate:
    """``grpc.Call`` / ``grpc.RpcContext`` answered by the underlying call ``self._raw``
    (everything but metadata, which each wrapper answers from what was verified)."""

    __slots__ = ()
    _raw: Any

    def code(self) -> grpc.StatusCode:
        return self._raw.code()

    def details(self) -> str:
        return self._raw.details()

    def is_active(self) -> bool:
        return self._raw.is_active()

    def time_remaining(self) -> float | None:
        return self._raw.time_remaining()

    def cancel(self) -> bool:
        return self._raw.cancel()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._raw.add_callback(callback)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._raw, name)


class _Outcome:
    __slots__ = ()
    rpcsec_status: CallStatus

    def initial_metadata(self) -> Any:
        return self.rpcsec_status.initial_metadata

    def trailing_metadata(self) -> Any:
        return self.rpcsec_status.trailing_metadata


class VerifiedCall(_Outcome, RawCallDelegate, grpc.Call):
    """A finished call whose outcome the server signed: metadata = the signed entries."""

    __slots__ = ("_raw", "rpcsec_status")

    def __init__(self, raw: Any, status: CallStatus) -> None:
        self._raw = raw
        self.rpcsec_status = status


class VerifiedRpcError(_Outcome, grpc.RpcError, grpc.Call):
    """A failed call whose status the *server* signed for this call (the application's own
    error, e.g. NOT_FOUND from ``context.abort``): metadata = the signed entries."""

    def __init__(self, raw: Any, status: CallStatus) -> None:
        super().__init__(str(raw))
        self._raw = raw
        self.rpcsec_status = status

    def code(self) -> grpc.StatusCode:
        return self.rpcsec_status.code

    def details(self) -> str:
        return self.rpcsec_status.details

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def __str__(self) -> str:
        return f"<VerifiedRpcError {self.rpcsec_status.code}: {self.rpcsec_status.details!r}>"


def checked_error(protection: Any, prefix: bytes, call_seq: bytes, error: Any) -> BaseException:
    """What to raise for a failed call: ``error`` itself if nobody signed its status, a
    ``VerifiedRpcError`` if the server did, ``MessageAlteredError`` if it was altered."""
    try:
        status = checked_status(protection, prefix, call_seq, error)
    except grpc.RpcError as exc:
        return exc
    except Exception:  # not a grpc.Call (e.g. a transport error without a status)
        return error
    if not status.verified:
        return error
    return VerifiedRpcError(error, status)


def call_status(call: Any) -> CallStatus:
    """The ``CallStatus`` of a call object or ``grpc.RpcError`` from a secure channel
    (unverified for anything rpcsec did not see signed)."""
    status = getattr(call, "rpcsec_status", None)
    if isinstance(status, CallStatus):
        return status
    if isinstance(call, SecurityError) and isinstance(call, grpc.RpcError):
        return CallStatus(False, call.code(), call.details(), (), (), (), ())  # type: ignore[attr-defined]
    return CallStatus(
        False,
        call.code(),
        call.details() or "",
        (),
        (),
        tuple(call.initial_metadata() or ()),
        tuple(call.trailing_metadata() or ()),
    )
