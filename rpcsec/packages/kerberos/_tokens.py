"""Structure checks for every Kerberos GSS token a peer sends, made before any native call.

MIT krb5 trusts a token's framing more than it should: 1.20 dereferences NULL when
``gss_unwrap_aead`` or ``gss_verify_mic`` gets an RFC 1964 token id (``01 01``, ``02 01``,
``01 02``) on an RFC 4121 (AES) context, so a single unauthenticated message could kill the
process. Peer bytes therefore reach libkrb5 only after these pure-Python checks:

* per-message tokens, RFC 4121 §4.2.6: ``TOK_ID`` 04 04 (MIC) / 05 04 (Wrap), the flags octet
  (SentByAcceptor, Sealed, AcceptorSubkey; nothing else), the filler (0xFF), EC and RRC, and
  the lengths the context's checksum implies;
* handshake tokens, RFC 2743 §3.1 InitialContextToken framing (``0x60``, a minimal definite
  DER length, the Kerberos mechanism OID) with the RFC 4121 §4.1 inner token id -- 01 00
  AP-REQ, 02 00 AP-REP, 03 00 KRB-ERROR -- and the matching RFC 4120 APPLICATION tag (14, 15,
  30) over a DER tree whose every length nests exactly.

Each check raises the core's typed error (``InvalidTokenError`` for handshake tokens,
``MessageAlteredError`` for per-message ones) and says which rule failed, never a byte value.
"""

from __future__ import annotations

from dataclasses import dataclass

from rpcsec.sspi._errors import InternalSecurityError, InvalidTokenError, MessageAlteredError

__all__ = [
    "AP_REP",
    "AP_REQ",
    "KRB_ERROR",
    "MIC_HEADER",
    "WRAP_HEADER",
    "TokenShape",
    "check_any_mic_token",
    "check_initial_token",
    "check_mic_token",
    "check_wrap_token",
]

MIC_ID = b"\x04\x04"
WRAP_ID = b"\x05\x04"
MIC_HEADER = 16
WRAP_HEADER = 16
FLAG_SENT_BY_ACCEPTOR = 0x01
FLAG_SEALED = 0x02
FLAG_ACCEPTOR_SUBKEY = 0x04
_KNOWN_FLAGS = FLAG_SENT_BY_ACCEPTOR | FLAG_SEALED | FLAG_ACCEPTOR_SUBKEY
_CONFOUNDER = 16  # one AES / Camellia block (RFC 3961 §5.3, RFC 3962, RFC 6803, RFC 8009)
_CHECKSUM_SIZES = frozenset({12, 16, 24})  # hmac-sha1-96, cmac / sha256-128, sha384-192

# RFC 4121 §4.1 inner token ids, each with the RFC 4120 APPLICATION tag it must carry.
AP_REQ = b"\x01\x00"
AP_REP = b"\x02\x00"
KRB_ERROR = b"\x03\x00"
_APPLICATION_TAG = {AP_REQ: 0x6E, AP_REP: 0x6F, KRB_ERROR: 0x7E}
# DER of the Kerberos V5 mechanism OIDs: 1.2.840.113554.1.2.2 (RFC 1964) and the one Windows
# lists in SPNEGO, 1.2.840.48018.1.2.2 (MIT accepts both in the framing).
_MECH_OIDS = (
    bytes.fromhex("06092a864886f712010202"),
    bytes.fromhex("06092a864882f712010202"),
)
_MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class TokenShape:
    """What a peer's per-message tokens must look like on one context.

    Learnt from this side's own tokens: the peer's SentByAcceptor flag is the opposite of
    ours, its AcceptorSubkey flag the same, and its checksum as long as ours."""

    peer_is_acceptor: bool
    acceptor_subkey: bool
    checksum_size: int

    @classmethod
    def from_own_mic(cls, mic: bytes) -> TokenShape:
        if len(mic) < MIC_HEADER or mic[:2] != MIC_ID:
            raise InternalSecurityError("the GSS library made a token that is not RFC 4121")
        flags = mic[2]
        return cls(
            peer_is_acceptor=not flags & FLAG_SENT_BY_ACCEPTOR,
            acceptor_subkey=bool(flags & FLAG_ACCEPTOR_SUBKEY),
            checksum_size=len(mic) - MIC_HEADER,
        )

    def _check_flags(self, flags: int, sealed: bool | None) -> None:
        if flags & ~_KNOWN_FLAGS:
            raise MessageAlteredError("GSS token has unknown flags")
        if bool(flags & FLAG_SENT_BY_ACCEPTOR) != self.peer_is_acceptor:
            raise MessageAlteredError("GSS token claims the wrong direction")
        if bool(flags & FLAG_ACCEPTOR_SUBKEY) != self.acceptor_subkey:
            raise MessageAlteredError("GSS token names the wrong subkey")
        if sealed is not None and bool(flags & FLAG_SEALED) != sealed:
            raise MessageAlteredError("GSS token has the wrong confidentiality")


def check_mic_token(token: bytes, shape: TokenShape) -> None:
    """RFC 4121 §4.2.6.1 MIC token: 04 04 | flags | FF*5 | SND_SEQ:8 | checksum."""
    if len(token) != MIC_HEADER + shape.checksum_size:
        raise MessageAlteredError("GSS MIC token has the wrong length")
    if token[:2] != MIC_ID:
        raise MessageAlteredError("GSS MIC token has the wrong token id")
    if token[3:8] != b"\xff" * 5:
        raise MessageAlteredError("GSS MIC token has a bad filler")
    shape._check_flags(token[2], sealed=False)


def check_wrap_token(token: bytes, shape: TokenShape, *, sealed: bool | None = True) -> None:
    """RFC 4121 §4.2.6.2 Wrap token: 05 04 | flags | FF | EC:2 | RRC:2 | SND_SEQ:8 | body.

    Sealed: body = confounder + data + EC filler + encrypted header copy + checksum (CTS needs
    no padding, so MIT's EC is 0; other implementations add filler, which must fit).
    Integrity only: EC is the checksum length, body = data + checksum.
    RRC may rotate the body (RFC 4121 §4.2.5) but never by more than its length.
    """
    if len(token) < WRAP_HEADER or token[:2] != WRAP_ID:
        raise MessageAlteredError("GSS wrap token has the wrong token id")
    flags = token[2]
    if token[3] != 0xFF:
        raise MessageAlteredError("GSS wrap token has a bad filler")
    shape._check_flags(flags, sealed)
    ec = int.from_bytes(token[4:6], "big")
    rrc = int.from_bytes(token[6:8], "big")
    body = len(token) - WRAP_HEADER
    if flags & FLAG_SEALED:
        # EC filler bytes are encrypted with the data (MIT sends none; Windows sends 16).
        minimum = _CONFOUNDER + ec + WRAP_HEADER + shape.checksum_size
    else:
        if ec != shape.checksum_size:
            raise MessageAlteredError("GSS wrap token has the wrong checksum length")
        minimum = shape.checksum_size
    if body < minimum:
        raise MessageAlteredError("GSS wrap token is truncated")
    if rrc > body:
        raise MessageAlteredError("GSS wrap token rotates past its end")


# -- handshake tokens ----------------------------------------------------------------------


def _der_length(data: bytes, offset: int) -> tuple[int, int]:
    """(length, offset after it) of a DER definite length at ``offset`` (minimal form)."""
    if offset >= len(data):
        raise InvalidTokenError("Kerberos token is truncated")
    first = data[offset]
    offset += 1
    if first < 0x80:
        return first, offset
    count = first & 0x7F
    if count == 0 or count > 4:
        raise InvalidTokenError("Kerberos token has an indefinite or oversized length")
    if offset + count > len(data):
        raise InvalidTokenError("Kerberos token is truncated")
    raw = data[offset : offset + count]
    value = int.from_bytes(raw, "big")
    if raw[0] == 0 or value < 0x80:
        raise InvalidTokenError("Kerberos token length is not minimal DER")
    return value, offset + count


def _check_der_tree(data: bytes, start: int, end: int, depth: int = 0) -> None:
    """Every TLV between ``start`` and ``end`` nests exactly (constructed ones recursively)."""
    if depth > _MAX_DEPTH:
        raise InvalidTokenError("Kerberos token nests too deeply")
    offset = start
    while offset < end:
        tag = data[offset]
        if tag & 0x1F == 0x1F:
            raise InvalidTokenError("Kerberos token uses a high tag number")
        length, body = _der_length(data, offset + 1)
        if body + length > end:
            raise InvalidTokenError("Kerberos token element overruns its container")
        if tag & 0x20:
            _check_der_tree(data, body, body + length, depth + 1)
        offset = body + length


def check_initial_token(token: bytes, *allowed: bytes) -> bytes:
    """RFC 2743 §3.1 framing around an RFC 4121 §4.1 Kerberos token whose id is in
    ``allowed``; returns the inner token id. ``InvalidTokenError`` otherwise."""
    data = bytes(token)
    if len(data) < 2 or data[0] != 0x60:
        raise InvalidTokenError("Kerberos token lacks the GSS InitialContextToken framing")
    length, offset = _der_length(data, 1)
    if offset + length != len(data):
        raise InvalidTokenError("Kerberos token length does not match its framing")
    for oid in _MECH_OIDS:
        if data.startswith(oid, offset):
            offset += len(oid)
            break
    else:
        raise InvalidTokenError("Kerberos token is for another mechanism")
    token_id = data[offset : offset + 2]
    if token_id not in allowed:
        raise InvalidTokenError("Kerberos token is not the message expected at this step")
    offset += 2
    if offset >= len(data) or data[offset] != _APPLICATION_TAG[token_id]:
        raise InvalidTokenError("Kerberos token id and message type disagree")
    inner, body = _der_length(data, offset + 1)
    if body + inner != len(data) or inner == 0:
        raise InvalidTokenError("Kerberos message length does not match its token")
    _check_der_tree(data, body, body + inner)
    return token_id


def check_any_mic_token(token: bytes) -> None:
    """An RFC 4121 MIC from a context whose own tokens we cannot see (SPNEGO's mechListMIC,
    RFC 4178 §5): token id, flags, filler and one of the RFC 3961-family checksum lengths."""
    data = bytes(token)
    if len(data) - MIC_HEADER not in _CHECKSUM_SIZES:
        raise MessageAlteredError("GSS MIC token has the wrong length")
    if data[:2] != MIC_ID:
        raise MessageAlteredError("GSS MIC token has the wrong token id")
    if data[2] & ~(FLAG_SENT_BY_ACCEPTOR | FLAG_ACCEPTOR_SUBKEY):
        raise MessageAlteredError("GSS MIC token has unknown flags")
    if data[3:8] != b"\xff" * 5:
        raise MessageAlteredError("GSS MIC token has a bad filler")
