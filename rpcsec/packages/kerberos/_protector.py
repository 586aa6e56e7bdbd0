"""Per-message protection with the Kerberos context's own GSS tokens (RFC 4121 §4.2).

rpcsec's own (extended) mode keys the core's AEAD from the session key instead (see
``_handshake``); ``GssProtector`` is for peers that speak plain GSS wrap/get_mic (RFC 2744), and
``session_key`` serves both.

* ``sign`` is GSS_GetMIC over ``aad || data``; ``verify`` is GSS_VerifyMIC.
* ``seal`` is GSS_Wrap with confidentiality through MIT's ``gss_wrap_aead`` (the extension DCE
  RPC uses to sign its headers): ``aad`` is covered by the RFC 4121 checksum but not sent, so
  the core's 9-byte header (kind and sequence number) and the caller's associated data are
  bound without being copied into the token. ``unseal`` is ``gss_unwrap_aead`` and refuses a
  token that was not encrypted.

The core splits tokens by size, so sizes must be fixed per context. RFC 4121 tokens of the
RFC 3962/3961 enctypes (AES, Camellia, AES-SHA2) are: a MIC is 16 header bytes plus the
checksum (28 for aes*-cts-hmac-sha1-96), and a confidential Wrap adds exactly header +
confounder + encrypted header copy + checksum (60 for aes*-sha1) because CTS needs no padding.
Both are measured once per context. The RFC 1964 enctypes (DES3, RC4) pad and so vary; a
context on them is refused when established.

GSS sequence numbers inside the tokens are not checked (the context has no GSS replay/sequence
flags); the core's window over its own header decides ordering. MIT contexts are not safe for
concurrent use, so every native call holds the protector's lock. Every peer token passes the
RFC 4121 structure checks of ``_tokens`` first (MIT crashes on some malformed ones).
"""

from __future__ import annotations

import threading
from typing import Any

from rpcsec.sspi._errors import (
    InternalSecurityError,
    MessageAlteredError,
    QopNotSupportedError,
)
from rpcsec.sspi._protection import MessageProtector

from ._errors import Phase, native_call
from ._native import SSPI_SESSION_KEY, gss
from ._tokens import TokenShape, check_mic_token, check_wrap_token

__all__ = ["CFX_ENCTYPES", "GssProtector", "session_key"]

# RFC 4121 ("CFX") enctypes whose tokens have a fixed overhead: aes128/256-cts-hmac-sha1-96
# (RFC 3962), aes128-cts-hmac-sha256-128 / aes256-cts-hmac-sha384-192 (RFC 8009),
# camellia128/256-cts-cmac (RFC 6803).
CFX_ENCTYPES = frozenset({17, 18, 19, 20, 25, 26})
_ENCTYPE_OID_PREFIX = bytes.fromhex("2a864886f71201020204")  # 1.2.840.113554.1.2.2.4


def session_key(context: Any) -> tuple[bytes, int]:
    """The context's per-message key and its enctype (GSS_C_INQ_SSPI_SESSION_KEY)."""
    with native_call(Phase.MESSAGE, "cannot inquire the session key"):
        values = gss.inquire_sec_context_by_oid(context, SSPI_SESSION_KEY)
    if len(values) < 2 or not bytes(values[1]).startswith(_ENCTYPE_OID_PREFIX):
        raise InternalSecurityError("the GSS library did not report the session enctype")
    enctype = 0
    for byte in bytes(values[1])[len(_ENCTYPE_OID_PREFIX) :]:  # base-128 OID arc
        enctype = (enctype << 7) | (byte & 0x7F)
    return bytes(values[0]), enctype


class GssProtector(MessageProtector):
    """MessageProtector over an established GSS Kerberos context (both directions)."""

    __slots__ = ("_context", "_lock", "_shape", "signature_size", "trailer_size")

    def __init__(self, context: Any, enctype: int) -> None:
        if enctype not in CFX_ENCTYPES:
            raise QopNotSupportedError(
                f"session enctype {enctype} uses RFC 1964 tokens whose size varies; "
                "rpcsec needs an RFC 4121 enctype (aes or camellia)"
            )
        self._context = context
        self._lock = threading.Lock()
        with self._lock, native_call(Phase.MESSAGE, "cannot size GSS tokens"):
            own_mic = bytes(gss.get_mic(context, b""))
            probe = gss.wrap_aead(context, b"", associated=b"", confidential=True)
        self.signature_size = len(own_mic)
        self.trailer_size = len(probe.message)
        # Peer tokens are checked against the shape of our own before libkrb5 sees them.
        self._shape = TokenShape.from_own_mic(own_mic)

    def sign(self, seq: int, aad: bytes, data: bytes) -> bytes:
        with self._lock, native_call(Phase.MESSAGE, "GSS_GetMIC failed"):
            tag = bytes(gss.get_mic(self._context, bytes(aad) + bytes(data)))
        if len(tag) != self.signature_size:
            raise InternalSecurityError("GSS MIC size changed within one context")
        return tag

    def verify(self, seq: int, aad: bytes, data: bytes, tag: bytes) -> None:
        if len(tag) != self.signature_size:
            raise MessageAlteredError("message signature has the wrong size")
        check_mic_token(bytes(tag), self._shape)
        with self._lock, native_call(Phase.MESSAGE, "message signature does not verify"):
            gss.verify_mic(self._context, bytes(aad) + bytes(data), bytes(tag))

    def seal(self, seq: int, aad: bytes, plaintext: bytes) -> bytes:
        with self._lock, native_call(Phase.MESSAGE, "GSS_Wrap failed"):
            result = gss.wrap_aead(
                self._context, bytes(plaintext), associated=bytes(aad), confidential=True
            )
        sealed = bytes(result.message)
        if not result.encrypted or len(sealed) != len(plaintext) + self.trailer_size:
            raise InternalSecurityError("GSS wrap token has an unexpected size")
        return sealed

    def unseal(self, seq: int, aad: bytes, sealed: bytes | memoryview) -> bytes:
        if len(sealed) < self.trailer_size:
            raise MessageAlteredError("sealed message is shorter than its trailer")
        sealed = bytes(sealed)
        check_wrap_token(sealed, self._shape, sealed=True)
        with self._lock, native_call(Phase.MESSAGE, "sealed message does not verify"):
            result = gss.unwrap_aead(self._context, sealed, associated=bytes(aad))
        if not result.encrypted:
            raise MessageAlteredError("message that must be sealed arrived unencrypted")
        plaintext = bytes(result.message)
        if len(plaintext) + self.trailer_size != len(sealed):
            raise MessageAlteredError("sealed message has the wrong size")
        return plaintext

    def wrap_record(self, record: bytes) -> bytes:
        """Integrity-only GSS_Wrap of a handshake record (the server's grant)."""
        with self._lock, native_call(Phase.MESSAGE, "GSS_Wrap failed"):
            return bytes(gss.wrap(self._context, record, confidential=False).message)

    def unwrap_record(self, token: bytes) -> bytes:
        """GSS_Unwrap of the peer's handshake record; ``MessageAlteredError`` if it fails."""
        token = bytes(token)
        check_wrap_token(token, self._shape, sealed=False)
        with self._lock, native_call(Phase.MESSAGE, "handshake record does not verify"):
            return bytes(gss.unwrap(self._context, token).message)

    def __repr__(self) -> str:
        return "GssProtector(<context hidden>)"
