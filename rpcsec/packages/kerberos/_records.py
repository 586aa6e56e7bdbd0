"""Handshake framing and the offer record, shared by the kerberos and negotiate packages.

Every handshake token of these packages is one frame (big-endian)::

    frame = magic:2 | version:u8 | kind:u8 | length:u32 | first[length] | second

``first`` is the mechanism's own token (AP-REQ, AP-REP, SPNEGO), ``second`` our record riding
with it: the client's offer record in its first leg, the server's protected grant in its last.

The offer record is the core's ``ContextOffer`` followed by the delegation chain the client
claims (the services a delegated credential came through, oldest first)::

    record = ContextOffer (9 bytes) | count:u8 | (length:u16 | UTF-8 name) * count

It travels in clear text but is *bound into the mechanism's authenticator* through GSS channel
bindings (``application_data``, RFC 2744 §3.11): the Kerberos AP-REQ authenticator carries an
MD5 of the bindings in its checksum (RFC 4121 §4.1.1.2) and NTLMv2 in MsvAvChannelBindings
(MS-NLMP §2.2.2.1), both under the session key, so a changed offer fails the handshake with
BAD_BINDINGS and costs no extra leg.

Every parser here faces the network: it checks lengths before slicing and raises
``InvalidTokenError`` for anything malformed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from rpcsec.sspi._errors import InvalidTokenError
from rpcsec.sspi._negotiation import OFFER_SIZE, ContextOffer

__all__ = [
    "MAX_CHAIN",
    "MAX_CHAIN_NAME",
    "Frame",
    "OfferRecord",
    "bindings_data",
    "decode_frame",
    "encode_frame",
]

VERSION = 1
MAX_CHAIN = 16
MAX_CHAIN_NAME = 512
_HEADER = struct.Struct(">2sBBI")
_NAME_LENGTH = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded handshake token."""

    kind: int
    first: bytes
    second: bytes


def encode_frame(magic: bytes, kind: int, first: bytes, second: bytes = b"") -> bytes:
    return _HEADER.pack(magic, VERSION, kind, len(first)) + first + second


def decode_frame(magic: bytes, token: bytes, *kinds: int) -> Frame:
    """Parse a frame whose kind must be one of ``kinds``."""
    if len(token) < _HEADER.size:
        raise InvalidTokenError("handshake token is truncated")
    got_magic, version, kind, length = _HEADER.unpack_from(token)
    if got_magic != magic:
        raise InvalidTokenError("handshake token is for another security package")
    if version != VERSION:
        raise InvalidTokenError("handshake token has an unsupported version")
    if kind not in kinds:
        raise InvalidTokenError("handshake token is not the one expected at this step")
    end = _HEADER.size + length
    if end > len(token):
        raise InvalidTokenError("handshake token is truncated")
    return Frame(kind, bytes(token[_HEADER.size : end]), bytes(token[end:]))


@dataclass(frozen=True, slots=True)
class OfferRecord:
    """The client's ContextOffer and the delegation chain it claims."""

    offer: ContextOffer
    chain: tuple[str, ...] = ()

    def encode(self) -> bytes:
        if len(self.chain) > MAX_CHAIN:
            raise ValueError(f"a delegation chain has at most {MAX_CHAIN} services")
        parts = [self.offer.encode(), bytes((len(self.chain),))]
        for name in self.chain:
            data = name.encode("utf-8")
            if not data or len(data) > MAX_CHAIN_NAME:
                raise ValueError("delegation chain names must be 1..512 bytes of UTF-8")
            parts += [_NAME_LENGTH.pack(len(data)), data]
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> OfferRecord:
        if len(data) < OFFER_SIZE + 1:
            raise InvalidTokenError("offer record is truncated")
        offer = ContextOffer.decode(bytes(data[:OFFER_SIZE]))
        count = data[OFFER_SIZE]
        if count > MAX_CHAIN:
            raise InvalidTokenError("offer record claims too long a delegation chain")
        offset = OFFER_SIZE + 1
        chain = []
        for _ in range(count):
            if offset + _NAME_LENGTH.size > len(data):
                raise InvalidTokenError("offer record is truncated")
            (length,) = _NAME_LENGTH.unpack_from(data, offset)
            offset += _NAME_LENGTH.size
            if not 0 < length <= MAX_CHAIN_NAME or offset + length > len(data):
                raise InvalidTokenError("offer record has a malformed delegation chain")
            try:
                name = bytes(data[offset : offset + length]).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidTokenError("delegation chain name is not UTF-8") from None
            if any(ord(ch) < 0x20 for ch in name):
                raise InvalidTokenError("delegation chain name contains control characters")
            chain.append(name)
            offset += length
        if offset != len(data):
            raise InvalidTokenError("offer record has trailing bytes")
        return cls(offer, tuple(chain))


def bindings_data(label: bytes, record: bytes, external: bytes = b"") -> bytes:
    """The channel-bindings application data binding ``record`` (and any channel binding the
    caller supplied, e.g. a TLS exporter value) into the mechanism's authenticator."""
    return b"".join(
        (label, len(record).to_bytes(4, "big"), record, len(external).to_bytes(4, "big"), external)
    )
