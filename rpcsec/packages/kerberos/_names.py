"""Kerberos principal names: what callers write and what GSS-API reports.

Targets are service principals, written either as a GSS hostbased service (``storage@localhost``,
RFC 2743 §4.1, the realm coming from the client's domain_realm mapping) or as a Kerberos
principal (``storage/localhost@KRBTEST.COM`` or ``storage/localhost`` in the default realm,
RFC 1964 §2.1.1). Users are Kerberos principals (``alice@KRBTEST.COM``).
"""

from __future__ import annotations

from typing import Any

from rpcsec.sspi._errors import InvalidTokenError, TargetUnknownError

from ._native import gss

__all__ = ["display", "service_name", "user_name"]

_MAX_NAME = 1024


def _check(text: object, what: str) -> str:
    if not isinstance(text, str) or not text or len(text) > _MAX_NAME:
        raise TargetUnknownError(f"{what} must be a non-empty principal name")
    if any(ord(ch) < 0x20 for ch in text):
        raise TargetUnknownError(f"{what} contains control characters")
    return text


def service_name(text: object) -> Any:
    """A GSS name for a service: ``svc/host[@REALM]`` or hostbased ``svc@host``."""
    name = _check(text, "service principal")
    if "/" in name:
        return gss.import_name(name.encode(), gss.NameType.kerberos_principal)
    if "@" in name:
        return gss.import_name(name.encode(), gss.NameType.hostbased_service)
    raise TargetUnknownError("service principal must be 'service@host' or 'service/host@REALM'")


def user_name(text: object) -> Any:
    """A GSS name for a user (or any principal written in Kerberos form)."""
    name = _check(text, "principal")
    return gss.import_name(name.encode(), gss.NameType.kerberos_principal)


def display(name: Any) -> str:
    """The printable principal of a GSS name (the KDC vouched for it, but decode strictly)."""
    raw = gss.display_name(name, name_type=False).name
    try:
        return bytes(raw).rstrip(b"\x00").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidTokenError("principal name is not UTF-8") from exc
