"""SecBuffer / SecBufferDesc for the buffer-level message calls.

The seed's Sender puts the message in a ``DATA | READONLY`` buffer and an ``EMPTY`` buffer
after it; MakeSignature fills the latter with the signature and turns it into a ``TOKEN``.
The Receiver passes ``DATA | READONLY`` and ``TOKEN`` to VerifySignature.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["BufferType", "SecBuffer"]


class BufferType(enum.IntFlag):
    """SECBUFFER_* types; ``READONLY`` (and ``READONLY_WITH_CHECKSUM``) combine with the others.

    A ``DATA | READONLY`` buffer is authenticated but never changed (not encrypted) by
    encrypt_message, as in SSPI.
    """

    EMPTY = 0
    DATA = 1
    TOKEN = 2
    PADDING = 9
    STREAM = 10
    EXTRA = 5
    MISSING = 4
    STREAM_TRAILER = 6
    STREAM_HEADER = 7
    READONLY_WITH_CHECKSUM = 0x10000000
    READONLY = 0x80000000

    @property
    def base(self) -> BufferType:
        """The type without the READONLY attribute bits."""
        return BufferType(int(self) & 0x0FFFFFFF)

    @property
    def readonly(self) -> bool:
        return bool(self & (BufferType.READONLY | BufferType.READONLY_WITH_CHECKSUM))


@dataclass(slots=True)
class SecBuffer:
    """One buffer of a SecBufferDesc. Mutable on purpose: the message calls fill them in."""

    type: BufferType
    data: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.type, BufferType):
            self.type = BufferType(self.type)
        if not isinstance(self.data, bytes | bytearray | memoryview):
            raise TypeError(f"SecBuffer data must be bytes-like, not {type(self.data).__name__}")

    def __repr__(self) -> str:  # never show contents: they may be plaintext or key material
        return f"SecBuffer({self.type!r}, <{len(self.data)} bytes>)"
