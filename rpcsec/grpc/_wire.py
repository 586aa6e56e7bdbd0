"""The binding's per-call wire format: metadata keys and what each signature covers.

Every call carries, in its request metadata::

    rpcsec-context-bin : the 16-byte context handle the server returned from Negotiate
    rpcsec-call-bin    : level:u8 | MIC token = ctx.sign(b"", aad=CALL_AAD)

    CALL_AAD = "rpcsec call v1" 0x00 | handle | level:u8 | len(method):u16 | method

The MIC's sequence number (bytes 1..9 of a core MIC token, see ``rpcsec.sspi._context``) is the
*call sequence*. The server's replay window accepts each sequence number once, so a replayed
call header is refused even when the call has no request message at all.

Every request and response message is one core token (``ctx.wrap``: sealed for PRIVACY, signed
for INTEGRITY) over the serialized message, binding::

    MSG_AAD = "rpcsec msg v1" 0x00 | handle | len(method):u16 | method
              | call_seq:u64 | direction:u8 | index:u32

so a message cut from one call, method, direction or stream position and pasted into another
does not verify (DESIGN §5). A *stream* direction ends with an end-of-stream marker, a MIC token
(``ctx.sign(b"", aad=MSG_AAD with direction | END and index = message count)``) whose kind byte
differs from every wrap token's, so truncating a stream is detected as well. Unary directions
carry exactly one message and need no marker.
"""

from __future__ import annotations

import struct

from rpcsec.sspi import ProtectionLevel

__all__ = [
    "CALL_KEY",
    "CONTEXT_KEY",
    "END",
    "END_MARKER_KIND",
    "HANDLE_SIZE",
    "LEVEL_BYTES",
    "NEGOTIATE_METHOD",
    "RELEASE_METHOD",
    "REQUEST",
    "RESPONSE",
    "SEQ_SLICE",
    "call_prefix",
    "level_from_byte",
    "message_prefix",
    "method_part",
    "position",
]

CONTEXT_KEY = "rpcsec-context-bin"
CALL_KEY = "rpcsec-call-bin"
HANDLE_SIZE = 16

SERVICE = "rpcsec.v1.SecurityHandshake"
NEGOTIATE_METHOD = f"/{SERVICE}/Negotiate"
RELEASE_METHOD = f"/{SERVICE}/Release"

REQUEST = 0x01
RESPONSE = 0x02
END = 0x80

# The core's MIC token kind (0x4D, rpcsec.sspi._context): wrap tokens are 0x57 or 0x53.
END_MARKER_KIND = 0x4D
# Where a core token carries its sequence number (kind:u8 | seq:u64 | ...).
SEQ_SLICE = slice(1, 9)

_CALL_LABEL = b"rpcsec call v1\x00"
_MSG_LABEL = b"rpcsec msg v1\x00"
_POSITION = struct.Struct(">BI")

LEVEL_BYTES: dict[ProtectionLevel, bytes] = {
    ProtectionLevel.INTEGRITY: bytes((int(ProtectionLevel.INTEGRITY),)),
    ProtectionLevel.PRIVACY: bytes((int(ProtectionLevel.PRIVACY),)),
}
_LEVELS = {value[0]: level for level, value in LEVEL_BYTES.items()}


def method_part(method: str) -> bytes:
    """The length-prefixed method path every signature of a call covers."""
    raw = method.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("method path is too long")
    return len(raw).to_bytes(2, "big") + raw


def call_prefix(handle: bytes) -> bytes:
    """CALL_AAD up to the level byte."""
    return _CALL_LABEL + handle


def message_prefix(handle: bytes, method: bytes) -> bytes:
    """MSG_AAD up to the call sequence; ``method`` is ``method_part(path)``."""
    return _MSG_LABEL + handle + method


def position(direction: int, index: int) -> bytes:
    """The direction:u8 | index:u32 tail of MSG_AAD."""
    return _POSITION.pack(direction, index)


def level_from_byte(value: int) -> ProtectionLevel | None:
    return _LEVELS.get(value)
