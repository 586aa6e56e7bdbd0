"""The optional python-gssapi backend behind one import guard (MIT krb5's GSS-API, RFC 2743).

Everything native the kerberos package touches is reached through this module, so the rest of
the package imports cleanly without gssapi and ``KerberosPackage.availability()`` can say why
it is missing.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "INSTALL_HINT",
    "KRB5_MECH",
    "SPNEGO_MECH",
    "SSPI_SESSION_KEY",
    "gss",
    "gssapi_unavailable_reason",
    "require_gssapi",
]

INSTALL_HINT = (
    "pip install 'rpcsec[kerberos]' (python-gssapi; needs libkrb5-dev, e.g. "
    "apt-get install krb5-user libkrb5-dev)"
)

gss: Any
try:
    import gssapi.raw as gss
except ImportError as exc:  # pragma: no cover - exercised only where gssapi is absent
    gss = None
    _IMPORT_ERROR: str | None = f"python-gssapi is not installed ({exc})"
else:
    _IMPORT_ERROR = None

# The Kerberos V5 mechanism (RFC 1964 §1) and MIT's "SSPI session key" inquiry, which returns
# the context's per-message key and, as a second element, its enctype as an OID.
KRB5_MECH: Any = gss.OID.from_int_seq("1.2.840.113554.1.2.2") if gss else None
SPNEGO_MECH: Any = gss.OID.from_int_seq("1.3.6.1.5.5.2") if gss else None  # RFC 4178
SSPI_SESSION_KEY: Any = gss.OID.from_int_seq("1.2.840.113554.1.2.2.5.5") if gss else None


def gssapi_unavailable_reason() -> str | None:
    """None when python-gssapi (with the credential-store and AEAD extensions) is usable."""
    if _IMPORT_ERROR is not None:
        return f"{_IMPORT_ERROR}: {INSTALL_HINT}"
    for needed in ("acquire_cred_from", "wrap_aead", "unwrap_aead", "inquire_sec_context_by_oid"):
        if not hasattr(gss, needed):
            return f"this GSS-API library lacks {needed} (MIT krb5 1.11 or later is needed)"
    return None


def require_gssapi() -> Any:
    """The ``gssapi.raw`` module, or ``NoCredentialsError`` saying how to install it."""
    reason = gssapi_unavailable_reason()
    if reason is not None:
        from rpcsec.sspi._errors import NoCredentialsError

        raise NoCredentialsError(f"kerberos package unavailable: {reason}")
    return gss
