"""The security audit trail: NT's security event log as stdlib ``logging`` records.

Every security-relevant event is ONE record on the logger ``rpcsec.audit`` (``AUDIT_LOGGER``):
a human-readable message plus the structured fields in ``record.rpcsec_audit`` (a dict with
stable names, see ``FIELDS``), which ``AuditJsonFormatter`` writes as one JSON object per line.
Event ids and names are stable (``AuditEvent``); the NT event each one mirrors is in
docs/audit.md. A record carries principals, packages, levels, delegation chains, methods, the
transport peer and coarse reasons -- never keys, tokens, passwords, ticket bytes or context
handles: each emitter below builds its fields from an ``AccessToken``'s public attributes
(never ``delegated_credentials``) and from strings, and a free-text ``detail`` is cut short.

When ``opentelemetry-api`` is installed the same facts become attributes of the active span
(``rpcsec.principal``, ``rpcsec.package``, ``rpcsec.protection_level``,
``rpcsec.delegation_chain``, ``rpcsec.reason``, ...) and failures a span event; without it, or
without a recording span, that costs one ``is None`` check. Cost on the call path: each emitter
first asks ``isEnabledFor`` once (a cached dict lookup in stdlib logging) and whether a span
records; when neither, nothing is built or formatted. Whether a span can record at all is
decided once per process state, not per call (``find_recorders``).
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

from rpcsec.sspi import AccessDeniedError, SecurityError

from ._token import AccessToken

try:  # optional: span attributes only when the OpenTelemetry API is there
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover - exercised in a subprocess test
    _otel_trace = None  # type: ignore[assignment]

__all__ = [
    "AUDIT_LOGGER",
    "FIELDS",
    "AuditEvent",
    "AuditJsonFormatter",
    "audit_key_rotation",
]

AUDIT_LOGGER = "rpcsec.audit"
_LOG = logging.getLogger(AUDIT_LOGGER)
# A library's logger: nothing reaches stderr through logging's last-resort handler unless the
# application configures logging (a refusal flood must not become a stderr flood).
_LOG.addHandler(logging.NullHandler())
_DETAIL_MAX = 160

FIELDS = (
    "event",
    "event_id",
    "outcome",
    "principal",
    "package",
    "impersonation_level",
    "protection_level",
    "groups",
    "delegation_chain",
    "method",
    "peer",
    "target",
    "by",
    "desired_access",
    "reason",
    "detail",
    "key_kind",
    "key_id",
    "retired_key_id",
)
"""Every field name a record may carry, in the order the JSON formatter writes them."""


class AuditEvent(enum.Enum):
    """Stable event ids and names (the NT security log's 4624 / 4625 / ... in spirit)."""

    LOGON = (1000, "logon", logging.INFO)
    LOGON_FAILED = (1001, "logon-failed", logging.WARNING)
    IMPERSONATION = (1100, "impersonation", logging.DEBUG)
    DELEGATION = (1101, "delegation", logging.INFO)
    ACCESS_DENIED = (1200, "access-denied", logging.WARNING)
    MESSAGE_ALTERED = (1300, "message-altered", logging.WARNING)
    REPLAY = (1301, "replay", logging.WARNING)
    EXPIRED = (1302, "expired", logging.WARNING)
    CALL_REFUSED = (1303, "call-refused", logging.WARNING)
    KEY_ROTATION = (1400, "key-rotation", logging.INFO)

    def __init__(self, event_id: int, event_name: str, level: int) -> None:
        self.event_id = event_id
        self.event_name = event_name
        self.level = level


_current_span = None if _otel_trace is None else _otel_trace.get_current_span
_modules = sys.modules
# Whether an OpenTelemetry implementation that can record spans is loaded, and the size of
# ``sys.modules`` when that was last looked for (``find_recorders``). Read inline by the
# per-call impersonation (``_impersonation.run_as``): no span can record while
# ``not recorders_loaded and len(sys.modules) == modules_seen``.
recorders_loaded = False
modules_seen = -1


def find_recorders() -> bool:
    """Is a span implementation loaded? The API alone only ever makes ``NonRecordingSpan``s
    (OpenTelemetry's "no-op unless an SDK is installed"); whatever records -- the SDK's
    ``opentelemetry.sdk.trace.Span`` or any vendor's -- is a subclass of the API's public
    ``opentelemetry.trace.Span``, defined when its module is imported. So this walks
    ``Span.__subclasses__()`` (public Python and OpenTelemetry API, no private attribute),
    and the callers walk again only when ``sys.modules`` grew. Once found, it stays found."""
    global recorders_loaded, modules_seen
    modules_seen = len(_modules)
    if _otel_trace is None:
        return False
    pending = list(_otel_trace.Span.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls is not _otel_trace.NonRecordingSpan:
            recorders_loaded = True
            return True
        pending.extend(cls.__subclasses__())
    return False


def _span() -> Any:
    """The active span if it records, else None. Until a span implementation is loaded
    (``find_recorders``) no span can record, and this costs a length compare: the six frames
    of ``get_current_span`` / ``is_recording`` are paid only where something can record."""
    if not recorders_loaded and (len(_modules) == modules_seen or not find_recorders()):
        return None
    span = _current_span()  # type: ignore[misc]
    return span if span.is_recording() else None


IMPERSONATION_LEVEL = AuditEvent.IMPERSONATION.level
LOG = _LOG


def _wanted(event: AuditEvent) -> tuple[bool, Any]:
    return _LOG.isEnabledFor(event.level), _span()


def _token_fields(token: AccessToken) -> dict[str, Any]:
    # Public attributes only: delegated_credentials never appear.
    return {
        "principal": token.principal,
        "package": token.package,
        "impersonation_level": token.impersonation_level.name,
        "protection_level": token.protection_level.name,
        "groups": sorted(token.groups),
        "delegation_chain": list(token.delegation_chain),
    }


def _detail(error: BaseException) -> str:
    text = str(error)
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 3] + "..."


def _emit(event: AuditEvent, enabled: bool, span: Any, fields: dict[str, Any]) -> None:
    failure = event.level >= logging.WARNING
    record = {
        "event": event.event_name,
        "event_id": event.event_id,
        "outcome": "failure" if failure else "success",
    }
    record.update((k, v) for k, v in fields.items() if v is not None)
    if enabled:
        summary = " ".join(
            f"{key}={json.dumps(record[key], ensure_ascii=True)}"
            for key in ("principal", "method", "reason", "peer")
            if key in record
        )
        _LOG.log(
            event.level,
            "%s %s",
            event.event_name,
            summary,
            extra={"rpcsec_audit": record},
        )
    if span is not None:
        attributes = _span_attributes(record)
        if failure or event is AuditEvent.DELEGATION or event is AuditEvent.KEY_ROTATION:
            span.add_event(f"rpcsec.{event.event_name}", attributes)
        span.set_attributes(attributes)


def _span_attributes(record: Mapping[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for key, value in record.items():
        if key in ("event_id", "outcome", "detail"):
            continue
        name = "rpcsec.event" if key == "event" else f"rpcsec.{key}"
        attributes[name] = tuple(value) if isinstance(value, list) else value
    return attributes


# -- the emitters (one per event kind; called from the bindings) ------------------------------


def logon(token: AccessToken, peer: str | None = None) -> None:
    """A security context was established with ``token``'s principal (AcceptSecurityContext
    returned OK): NT 4624."""
    enabled, span = _wanted(AuditEvent.LOGON)
    if enabled or span is not None:
        _emit(AuditEvent.LOGON, enabled, span, {**_token_fields(token), "peer": peer})


def impersonation(token: AccessToken) -> None:
    """A thread of control started running as ``token`` (ImpersonateSecurityContext). Per
    call, so DEBUG: enabling INFO does not flood the log with one record per call."""
    # Per call: no tuple, no enum attribute lookups, ``_span``'s gate inlined.
    enabled = _LOG.isEnabledFor(IMPERSONATION_LEVEL)
    span = _span() if recorders_loaded or len(_modules) != modules_seen else None
    if enabled or span is not None:
        _emit(AuditEvent.IMPERSONATION, enabled, span, _token_fields(token))


def delegation(token: AccessToken | None, target: str | None) -> None:
    """An onward context is being made for ``token``'s principal with its delegated
    credentials (cloaking): the chain so far and the next target. None: not delegating."""
    if token is None:
        return
    enabled, span = _wanted(AuditEvent.DELEGATION)
    if enabled or span is not None:
        _emit(AuditEvent.DELEGATION, enabled, span, {**_token_fields(token), "target": target})


def denied(
    error: AccessDeniedError,
    token: AccessToken,
    *,
    by: str,
    method: str | None = None,
    desired: int | None = None,
) -> AccessDeniedError:
    """Record an authorization denial (``by`` = "policy" or "descriptor") and return ``error``
    for the caller to raise: ``raise audit.denied(AccessDeniedError(...), token, by=...)``."""
    error._rpcsec_audited = True  # type: ignore[attr-defined]
    enabled, span = _wanted(AuditEvent.ACCESS_DENIED)
    if enabled or span is not None:
        fields = {
            **_token_fields(token),
            "by": by,
            "method": method,
            "desired_access": desired,
            "reason": error.reason,
            "detail": _detail(error),
        }
        _emit(AuditEvent.ACCESS_DENIED, enabled, span, fields)
    return error


def descriptor_denied(message: str, token: AccessToken, desired: int) -> AccessDeniedError:
    """The ``AccessDeniedError`` an access check raises, recorded (``by="descriptor"``)."""
    return denied(AccessDeniedError(message), token, by="descriptor", desired=desired)


_BY_REASON: dict[str, AuditEvent] = {
    "message-altered": AuditEvent.MESSAGE_ALTERED,
    "replay": AuditEvent.REPLAY,
    "out-of-sequence": AuditEvent.REPLAY,
    "expired": AuditEvent.EXPIRED,
    "access-denied": AuditEvent.ACCESS_DENIED,
}


def refusal(
    method: str,
    peer: str | None,
    error: BaseException,
    reason: str | None = None,
    *,
    handshake: bool = False,
) -> None:
    """A call (or, with ``handshake``, a bind) the server refused: tamper, replay, expiry,
    denial, or any other ``reason`` (default: the error's). An error that is not a
    ``SecurityError`` is a refusal relayed from a service further down (``by="downstream"``).
    A denial already recorded where it was decided (policy, descriptor, or a handshake refusal
    recorded when it was made) is not recorded twice."""
    if getattr(error, "_rpcsec_audited", False):
        return
    local = isinstance(error, SecurityError)
    if reason is None:
        reason = error.reason if isinstance(error, SecurityError) else "internal-error"
    if handshake:
        event = AuditEvent.LOGON_FAILED
        with contextlib.suppress(AttributeError):
            error._rpcsec_audited = True  # type: ignore[attr-defined]
    else:
        event = _BY_REASON.get(reason, AuditEvent.CALL_REFUSED)
    enabled, span = _wanted(event)
    if enabled or span is not None:
        fields: dict[str, Any] = {
            "method": method,
            "peer": peer,
            "reason": reason,
            "detail": _detail(error) if local else None,
        }
        if not local:
            fields["by"] = "downstream"
        elif event is AuditEvent.ACCESS_DENIED:
            fields["by"] = "handler"
        _emit(event, enabled, span, fields)


def audit_key_rotation(kind: str, key_id: str, *, retired_key_id: str | None = None) -> None:
    """A service key (e.g. ``kind="ticket-key"``) was rotated: ``key_id`` names the new key
    (its public name, never its bytes), ``retired_key_id`` the one no longer used to seal."""
    if not isinstance(kind, str) or not isinstance(key_id, str):
        raise TypeError("kind and key_id are strings (a key's name, never the key itself)")
    enabled, span = _wanted(AuditEvent.KEY_ROTATION)
    if enabled or span is not None:
        fields = {"key_kind": kind, "key_id": key_id, "retired_key_id": retired_key_id}
        _emit(AuditEvent.KEY_ROTATION, enabled, span, fields)


key_rotation = audit_key_rotation


class AuditJsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, then the
    audit fields in ``FIELDS`` order; a record that is not an audit event gets ``message``.

    ``logging.getLogger("rpcsec.audit").addHandler(h)`` with ``h.setFormatter(
    AuditJsonFormatter())`` gives a security event log a SIEM can ingest line by line.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "rpcsec_audit", None)
        if isinstance(fields, dict):
            out.update((key, fields[key]) for key in FIELDS if key in fields)
        else:
            out["message"] = record.getMessage()
        return json.dumps(out, ensure_ascii=True, separators=(",", ":"))
