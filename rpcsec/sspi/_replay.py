"""Anti-replay state for the receive direction of a context.

``ReplayWindow`` is the sliding-window bitmap of RFC 4303 §3.4.3, laid out as the ring of
64-bit blocks of RFC 6479 so that advancing the window costs O(1) instead of a shift of the
whole bitmap. It accepts messages out of order inside the window (calls multiplexed on one
HTTP/2 connection arrive out of order) and rejects duplicates and messages older than the
window. ``SequenceCounter`` is the stricter SEQUENCE_DETECT rule: exactly the next number.

Both are *only* updated through ``accept`` after the message's integrity check passed
(RFC 4303: "the receive window is updated only if the integrity verification succeeds"), so a
forged message can never move the window.
"""

from __future__ import annotations

import threading

from ._errors import OutOfSequenceError, ReplayError

__all__ = ["DEFAULT_WINDOW", "ReceiveOrder", "ReplayWindow", "SequenceCounter"]

DEFAULT_WINDOW = 16384
_BLOCK_BITS = 64
_BLOCK_MASK = _BLOCK_BITS - 1
_FULL_BLOCK = (1 << _BLOCK_BITS) - 1


class ReceiveOrder:
    """Interface of the receive-side ordering check (a window or a strict counter)."""

    def check(self, seq: int) -> None:
        """Cheap pre-check before spending work on verification; raises, changes nothing."""
        raise NotImplementedError

    def accept(self, seq: int) -> None:
        """Atomically check again and record ``seq``; call only after the message verified."""
        raise NotImplementedError


class ReplayWindow(ReceiveOrder):
    """RFC 4303 / RFC 6479 anti-replay window of ``size`` sequence numbers (a multiple of 64).

    Sequence numbers are non-negative integers; the first message may carry any number.
    """

    __slots__ = ("_blocks", "_lock", "_nblocks", "_top", "size")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if not isinstance(size, int) or size <= 0 or size % _BLOCK_BITS:
            raise ValueError("replay window size must be a positive multiple of 64")
        self.size = size
        # One spare block so the window never shares a block with bits that must be cleared.
        self._nblocks = size // _BLOCK_BITS + 1
        self._blocks = [0] * self._nblocks
        self._top = -1
        self._lock = threading.Lock()

    @property
    def highest(self) -> int:
        """The highest sequence number accepted so far (-1 before the first)."""
        return self._top

    def check(self, seq: int) -> None:
        top = self._top
        if seq > top:
            return
        if top - seq >= self.size:
            raise ReplayError("message is older than the replay window")
        block = (seq >> 6) % self._nblocks
        if self._blocks[block] >> (seq & _BLOCK_MASK) & 1:
            raise ReplayError("message was already received")

    def accept(self, seq: int) -> None:
        with self._lock:
            refused = self.record(seq)
        if refused is not None:
            raise ReplayError(refused)

    def record(self, seq: int) -> str | None:
        """``accept`` without taking the window's own lock, for an owner that already
        serializes every access under one lock of its own (a replay store): records ``seq``
        and returns None, or returns why it is refused (a replay) and changes nothing."""
        # ``check`` inlined: this runs for every message and call (the bindings' hot path).
        blocks = self._blocks
        nblocks = self._nblocks
        top = self._top
        new_block = seq >> 6
        if seq > top:
            old_block = top >> 6 if top >= 0 else -1
            if new_block != old_block:
                # Clear every block the window slides past (at most the whole ring).
                start = max(old_block + 1, new_block - nblocks + 1)
                for index in range(start, new_block + 1):
                    blocks[index % nblocks] = 0
            self._top = seq
        elif top - seq >= self.size:
            return "message is older than the replay window"
        elif blocks[new_block % nblocks] >> (seq & _BLOCK_MASK) & 1:
            return "message was already received"
        blocks[new_block % nblocks] |= 1 << (seq & _BLOCK_MASK)
        return None

    def resume(self, highest: int) -> None:
        """ImportSecurityContext: every number up to ``highest`` counts as already received
        (the exporter's window is not carried; its top is). Constant work per block."""
        if not isinstance(highest, int) or highest < 0:
            raise ValueError("highest must be a non-negative sequence number")
        with self._lock:
            self._blocks = [_FULL_BLOCK] * self._nblocks
            self._blocks[(highest >> 6) % self._nblocks] = (1 << ((highest & _BLOCK_MASK) + 1)) - 1
            self._top = highest


class SequenceCounter(ReceiveOrder):
    """SEQUENCE_DETECT: accept exactly the next number; a duplicate is a replay, a gap is out of
    sequence. ``first`` is the number the peer's first message carries."""

    __slots__ = ("_lock", "_next")

    def __init__(self, first: int = 0) -> None:
        self._next = first
        self._lock = threading.Lock()

    @property
    def expected(self) -> int:
        return self._next

    def check(self, seq: int) -> None:
        expected = self._next
        if seq < expected:
            raise ReplayError("message was already received")
        if seq > expected:
            raise OutOfSequenceError("message arrived out of order or one is missing")

    def accept(self, seq: int) -> None:
        with self._lock:
            self.check(seq)
            self._next = seq + 1
