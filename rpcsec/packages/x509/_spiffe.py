"""SPIFFE IDs: the names x509 principals and targets carry.

Follows the SPIFFE ID and X509-SVID specifications (github.com/spiffe/spiffe, standards/
SPIFFE-ID.md §2, X509-SVID.md §2 and §4): ``spiffe://<trust domain>/<path>``, trust domain of
``[a-z0-9._-]``, path segments of ``[A-Za-z0-9._-]`` that are neither empty nor ``.``/``..``,
no query, fragment, port or user info, at most 2048 bytes; a leaf SVID carries exactly one URI
SAN and is not a CA. Our authority names users ``spiffe://TD/user/NAME`` and services
``spiffe://TD/svc/NAME``; any other path an external PKI issues is accepted as a principal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509

from rpcsec.sspi._errors import InvalidTokenError, UntrustedRootError

__all__ = [
    "SpiffeId",
    "certificate_spiffe_id",
    "certificate_trust_domain",
    "is_spiffe_id",
    "parse_spiffe_id",
    "validate_name",
    "validate_trust_domain",
]

_MAX_ID = 2048
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A parsed SPIFFE ID; ``str()`` gives the canonical URI."""

    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"


def validate_trust_domain(name: str) -> str:
    """``name`` if it is a valid SPIFFE trust domain name, else ``ValueError``."""
    if not isinstance(name, str):
        raise TypeError("trust domain must be a string")
    if not _TRUST_DOMAIN.fullmatch(name) or name.strip(".") != name:
        raise ValueError(
            f"invalid trust domain {name!r}: use lowercase letters, digits, '.', '-' and '_'"
        )
    return name


def validate_name(name: str) -> str:
    """``name`` if it can be a user or service name (one SPIFFE path segment), else ValueError."""
    if not isinstance(name, str):
        raise TypeError("name must be a string")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid name {name!r}: 1-64 of letters, digits, '.', '-', '_', not starting with '.'"
        )
    return name


def parse_spiffe_id(text: str) -> SpiffeId:
    """Parse and validate a SPIFFE ID; ``ValueError`` says what is wrong."""
    if not isinstance(text, str):
        raise TypeError("SPIFFE ID must be a string")
    if len(text.encode()) > _MAX_ID:
        raise ValueError("SPIFFE ID is longer than 2048 bytes")
    prefix = "spiffe://"
    if not text.startswith(prefix):
        raise ValueError(f"not a SPIFFE ID (must start with {prefix!r}): {text!r}")
    rest = text[len(prefix) :]
    domain, slash, path = rest.partition("/")
    validate_trust_domain(domain)
    if not slash:
        raise ValueError(f"SPIFFE ID has no path: {text!r}")
    for segment in path.split("/"):
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise ValueError(f"SPIFFE ID has an invalid path segment: {text!r}")
    return SpiffeId(domain, "/" + path)


def is_spiffe_id(text: object) -> bool:
    try:
        parse_spiffe_id(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    except ValueError as exc:  # malformed extension in a peer's certificate
        raise InvalidTokenError("certificate has a malformed subjectAltName") from exc
    return [str(uri) for uri in san.get_values_for_type(x509.UniformResourceIdentifier)]


def certificate_spiffe_id(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of a leaf SVID (X509-SVID §4: exactly one URI SAN, not a CA).

    Raises ``UntrustedRootError``: a chain that verified but whose leaf is not an SVID does
    not identify anyone we can name.
    """
    uris = _uris(cert)
    if len(uris) != 1:
        raise UntrustedRootError("an SVID carries exactly one URI SAN, its SPIFFE ID")
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    except ValueError as exc:
        raise InvalidTokenError("certificate has malformed basicConstraints") from exc
    if basic is not None and basic.ca:
        raise UntrustedRootError("a CA certificate cannot be a principal")
    try:
        return parse_spiffe_id(uris[0])
    except ValueError as exc:
        raise UntrustedRootError("certificate carries an invalid SPIFFE ID") from exc


def certificate_trust_domain(cert: x509.Certificate) -> str | None:
    """The trust domain a CA certificate names in a ``spiffe://TD`` URI SAN, if any.

    SPIFFE allows a signing certificate to carry the trust domain's own ID; our authority's
    root does, and then only SVIDs of that trust domain are accepted under it.
    """
    try:
        uris = _uris(cert)
    except InvalidTokenError:
        return None
    for uri in uris:
        if uri.startswith("spiffe://"):
            domain = uri[len("spiffe://") :].rstrip("/")
            try:
                return validate_trust_domain(domain)
            except ValueError:
                return None
    return None
