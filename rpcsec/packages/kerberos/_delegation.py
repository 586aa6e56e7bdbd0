"""Delegated Kerberos credentials as bytes, so a context that was delegated to can be exported.

A server context's delegation material is the client's forwarded TGT, which MIT keeps in a
memory ccache behind a GSS credential handle. ``gss_export_cred`` (MIT krb5 1.14+, the
credential export/import extension) serialises it -- the ticket *and its session key* -- and
``gss_import_cred`` rebuilds the handle in another process, so a session layer can seal the
blob into a context ticket and any replica can call onward as the client.

Blob (JSON, version 1)::

    {"v": 1, "principal": "alice@REALM", "chain": ["svc/host@REALM", ...], "gss": base64}

where ``gss`` is MIT's export token: ``length:u32 | mechanism OID | length:u32 | "K5C1" JSON``. Its
structure is checked before ``gss_import_cred`` sees it (the blob should only ever come from a
sealed ticket, but a native parser gets nothing unchecked).

WARNING: the blob holds a TGT and its key; whoever has it can act as the client until the
ticket expires. Seal it (context tickets do) and never log it.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

from rpcsec.sspi._errors import InvalidTokenError

from ._credentials import KerberosCredentials
from ._errors import Phase, native_call
from ._native import gss
from ._records import MAX_CHAIN, MAX_CHAIN_NAME

__all__ = ["MAX_EXPORT", "export_kerberos_credentials", "import_kerberos_credentials"]

MAX_EXPORT = 64 * 1024
_KRB5_OID = bytes.fromhex("2a864886f712010202")  # 1.2.840.113554.1.2.2, content octets
_OID_LENGTH = struct.Struct(">I")


def _check_gss_export(token: bytes) -> None:
    """MIT's export token: the Kerberos mechanism OID, then its "K5C1" JSON credential."""
    if len(token) < _OID_LENGTH.size or len(token) > MAX_EXPORT:
        raise InvalidTokenError("exported Kerberos credential has the wrong size")
    (length,) = _OID_LENGTH.unpack_from(token)
    end = _OID_LENGTH.size + length
    if token[_OID_LENGTH.size : end] != _KRB5_OID:
        raise InvalidTokenError("exported credential is not a Kerberos one")
    if len(token) < end + _OID_LENGTH.size:
        raise InvalidTokenError("exported Kerberos credential is truncated")
    (body_length,) = _OID_LENGTH.unpack_from(token, end)
    if end + _OID_LENGTH.size + body_length != len(token):
        raise InvalidTokenError("exported Kerberos credential has the wrong length")
    try:
        body = json.loads(token[end + _OID_LENGTH.size :].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidTokenError("exported Kerberos credential is malformed") from None
    if not isinstance(body, list) or not body or body[0] != "K5C1":
        raise InvalidTokenError("exported Kerberos credential has an unknown format")


def export_kerberos_credentials(material: KerberosCredentials) -> bytes:
    """The blob for OUTBOUND credentials received by delegation (see the module docstring)."""
    if material.initiator is None:
        raise ValueError("only OUTBOUND (delegated) kerberos credentials can be exported")
    raw = getattr(material.initiator, "raw_creds", material.initiator)  # high-level or raw
    with native_call(Phase.ACQUIRE, "cannot export the delegated Kerberos credentials"):
        token = bytes(gss.export_cred(raw))
    state = {
        "v": 1,
        "principal": material.principal,
        "chain": list(material.delegation_chain),
        "gss": base64.b64encode(token).decode(),
    }
    return json.dumps(state).encode()


def import_kerberos_credentials(blob: bytes) -> tuple[KerberosCredentials, Any]:
    """(material, raw GSS handle) from ``export_kerberos_credentials``' blob.

    Raises ``InvalidTokenError`` for anything malformed, before any native call."""
    if not isinstance(blob, bytes | bytearray | memoryview) or len(blob) > 2 * MAX_EXPORT:
        raise InvalidTokenError("exported delegation is malformed")
    try:
        state = json.loads(bytes(blob))
        if not isinstance(state, dict) or state.get("v") != 1:
            raise ValueError("version")
        principal = state["principal"]
        chain = state["chain"]
        if not isinstance(principal, str) or not principal or not isinstance(chain, list):
            raise ValueError("names")
        if len(chain) > MAX_CHAIN or not all(
            isinstance(n, str) and 0 < len(n.encode()) <= MAX_CHAIN_NAME for n in chain
        ):
            raise ValueError("chain")
        token = base64.b64decode(state["gss"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidTokenError("exported delegation is malformed") from None
    _check_gss_export(token)
    with native_call(Phase.ACQUIRE, "cannot import the delegated Kerberos credentials"):
        raw = gss.import_cred(token)
    material = KerberosCredentials(
        principal=principal, initiator=raw, delegation_chain=tuple(chain)
    )
    return material, raw
