"""A strict DER (ITU-T X.690 §10) reader and writer for the few shapes our extensions use.

`cryptography` parses and writes every standard extension but has no general ASN.1 codec, and
the two structures of ours (the groups extension and the RFC 3820 ProxyCertInfo with our
policy) are tiny. This module handles exactly SEQUENCE, INTEGER (non-negative), OBJECT
IDENTIFIER, OCTET STRING and UTF8String, in their DER form only: definite minimal lengths,
minimal integers, no trailing bytes. Anything else raises ``DerError`` (an
``InvalidTokenError``): these bytes come from certificates a peer sent.
"""

from __future__ import annotations

from rpcsec.sspi._errors import InvalidTokenError

__all__ = [
    "INTEGER",
    "OBJECT_IDENTIFIER",
    "OCTET_STRING",
    "SEQUENCE",
    "UTF8_STRING",
    "DerError",
    "decode_integer",
    "decode_oid",
    "decode_utf8",
    "encode_integer",
    "encode_oid",
    "encode_tlv",
    "encode_utf8",
    "expect",
    "read_all",
]

INTEGER = 0x02
OCTET_STRING = 0x04
OBJECT_IDENTIFIER = 0x06
UTF8_STRING = 0x0C
SEQUENCE = 0x30

_MAX_LENGTH = 1 << 20  # nothing of ours comes near; refuse absurd lengths early


class DerError(InvalidTokenError):
    """The bytes are not the DER this module expects."""


def encode_tlv(tag: int, content: bytes) -> bytes:
    """One TLV with a definite, minimal length (X.690 §10.1)."""
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def read_all(data: bytes) -> list[tuple[int, bytes]]:
    """Split ``data`` into consecutive (tag, content) pairs, all of it, strictly."""
    items = []
    offset = 0
    view = bytes(data)
    while offset < len(view):
        tag, content, offset = _read_one(view, offset)
        items.append((tag, content))
    return items


def _read_one(data: bytes, offset: int) -> tuple[int, bytes, int]:
    if offset + 2 > len(data):
        raise DerError("DER value is truncated")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DerError("DER high-tag-number form is not used here")
    first = data[offset + 1]
    offset += 2
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        if count == 0:
            raise DerError("DER forbids indefinite lengths")
        if count > 4 or offset + count > len(data):
            raise DerError("DER length is truncated or too large")
        size = int.from_bytes(data[offset : offset + count], "big")
        if size < 0x80 or data[offset] == 0:
            raise DerError("DER length is not minimal")
        offset += count
    if size > _MAX_LENGTH or offset + size > len(data):
        raise DerError("DER value is truncated")
    return tag, data[offset : offset + size], offset + size


def expect(items: list[tuple[int, bytes]], index: int, tag: int) -> bytes:
    """The content of ``items[index]``, which must have ``tag``."""
    if index >= len(items) or items[index][0] != tag:
        raise DerError("DER structure has an unexpected element")
    return items[index][1]


def encode_integer(value: int) -> bytes:
    if value < 0:
        raise ValueError("only non-negative integers are encoded")
    return encode_tlv(INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def decode_integer(content: bytes) -> int:
    if not content:
        raise DerError("DER INTEGER is empty")
    if len(content) > 1 and content[0] == 0 and content[1] < 0x80:
        raise DerError("DER INTEGER is not minimal")
    if content[0] >= 0x80:
        raise DerError("negative INTEGER where a count is expected")
    if len(content) > 8:
        raise DerError("INTEGER is out of range")
    return int.from_bytes(content, "big")


def encode_oid(dotted: str) -> bytes:
    """OBJECT IDENTIFIER (X.690 §8.19) from its dotted form; arcs may be arbitrarily large."""
    try:
        arcs = [int(part) for part in dotted.split(".")]
    except ValueError:
        raise ValueError(f"not a dotted OID: {dotted!r}") from None
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39) or min(arcs) < 0:
        raise ValueError(f"not a valid OID: {dotted!r}")
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return encode_tlv(OBJECT_IDENTIFIER, bytes(body))


def decode_oid(content: bytes) -> str:
    if not content or content[-1] & 0x80:
        raise DerError("DER OBJECT IDENTIFIER is truncated")
    if len(content) > 64:
        raise DerError("OBJECT IDENTIFIER is too long")
    arcs: list[int] = []
    value = 0
    start = True
    for byte in content:
        if start and byte == 0x80:
            raise DerError("DER OBJECT IDENTIFIER arc is not minimal")
        value = (value << 7) | (byte & 0x7F)
        start = not byte & 0x80
        if start:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(arc) for arc in head + arcs[1:])


def encode_utf8(text: str) -> bytes:
    return encode_tlv(UTF8_STRING, text.encode("utf-8"))


def decode_utf8(content: bytes) -> str:
    try:
        return content.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise DerError("UTF8String is not valid UTF-8") from None
