"""Length-prefixed frames over a byte stream: the seed's SendMsg / ReceiveMsg (Comm.c).

Each frame is a 4-byte big-endian length followed by that many bytes. The decoder is sans-IO:
``feed()`` what the socket returned, ``next_frame()`` until it returns ``None``. The length
prefix is checked against ``max_size`` before anything is buffered for the frame, and the buffer
only ever holds bytes that really arrived, so a peer cannot make this side allocate a size of
its choosing.
"""

from __future__ import annotations

import struct

from ._errors import FrameTooLargeError, TruncatedFrameError

__all__ = ["LENGTH_PREFIX", "FrameDecoder", "encode_frame"]

_PREFIX = struct.Struct(">I")
LENGTH_PREFIX = _PREFIX.size
_MAX_LENGTH = (1 << 32) - 1
# Compact the receive buffer only once this much has been consumed (amortised O(1) per byte).
_COMPACT_AT = 64 * 1024


def encode_frame(payload: bytes, *, max_size: int | None = None) -> bytes:
    """One frame holding ``payload``. Raises ``ValueError`` if it exceeds ``max_size``."""
    size = len(payload)
    limit = _MAX_LENGTH if max_size is None else max_size
    if size > limit:
        raise ValueError(f"frame of {size} bytes exceeds the limit of {limit}")
    return _PREFIX.pack(size) + bytes(payload)


class FrameDecoder:
    """Splits a received byte stream into frames of at most ``max_size`` bytes."""

    __slots__ = ("_buffer", "_offset", "max_size")

    def __init__(self, max_size: int) -> None:
        if not isinstance(max_size, int) or not 0 < max_size <= _MAX_LENGTH:
            raise ValueError("max_size must be a positive 32-bit length")
        self.max_size = max_size
        self._buffer = bytearray()
        self._offset = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned in a frame."""
        return len(self._buffer) - self._offset

    def feed(self, data: bytes) -> None:
        """Append bytes read from the connection."""
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete frame's payload, or ``None`` if more bytes are needed.

        Raises ``FrameTooLargeError`` as soon as a length prefix exceeds ``max_size``.
        """
        buffer, offset = self._buffer, self._offset
        available = len(buffer) - offset
        if available < LENGTH_PREFIX:
            return None
        (length,) = _PREFIX.unpack_from(buffer, offset)
        if length > self.max_size:
            raise FrameTooLargeError(
                f"peer announced a {length}-byte frame; the limit is {self.max_size}"
            )
        end = offset + LENGTH_PREFIX + length
        if len(buffer) < end:
            return None
        payload = bytes(buffer[offset + LENGTH_PREFIX : end])
        self._offset = end
        if end == len(buffer):
            buffer.clear()
            self._offset = 0
        elif end >= _COMPACT_AT:
            del buffer[:end]
            self._offset = 0
        return payload

    def take_remaining(self) -> bytes:
        """Everything buffered after the last frame (for a switch to another record layer)."""
        rest = bytes(self._buffer[self._offset :])
        self._buffer.clear()
        self._offset = 0
        return rest

    def end_of_stream(self) -> None:
        """The peer closed its side. Raises ``TruncatedFrameError`` inside a frame."""
        if self.buffered:
            raise TruncatedFrameError("connection closed inside a frame")

    def __repr__(self) -> str:
        return f"<FrameDecoder buffered={self.buffered} max_size={self.max_size}>"
