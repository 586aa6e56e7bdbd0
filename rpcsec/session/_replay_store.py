"""Replay stores: has this (ticket, call sequence) been accepted before, anywhere?

RFC 4120 §3.2.3: servers that share a key share a replay cache. A ticket any replica opens
needs a replay check every replica shares; one process keeps it in memory (this module),
several share a Redis server (``_redis_store``). Both answer ``claim`` with a
``ReplayVerdict`` and fail closed: an error is raised (``ReplayStoreUnavailableError``) or the
answer is REVOKED, never FRESH, whenever freshness cannot be proven.

``issued_at`` (the ticket's, authenticated) is optional but recommended: a store refuses
tickets issued before its own state began (a restarted process, a Redis that lost its data
cannot know what it accepted before), so a captured request is not fresh again after a
restart.
"""

from __future__ import annotations

import enum
import heapq
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from rpcsec.sspi import DEFAULT_WINDOW, ReplayStoreUnavailableError, ReplayWindow

__all__ = [
    "DEFAULT_MAX_REVOKED",
    "DEFAULT_MAX_TICKETS",
    "AsyncMemoryReplayStore",
    "AsyncReplayStore",
    "MemoryReplayStore",
    "ReplayStore",
    "ReplayStoreUnavailableError",
    "ReplayVerdict",
    "check_claim_arguments",
]

DEFAULT_MAX_TICKETS = 10_000
DEFAULT_MAX_REVOKED = 100_000
MAX_TICKET_ID_SIZE = 64
MAX_SEQUENCE = (1 << 64) - 1
_INF = math.inf


class ReplayVerdict(enum.Enum):
    """The answer to ``claim``. Only FRESH lets a call run."""

    FRESH = "fresh"
    """First time this (ticket, sequence) is seen: recorded, the call may run."""
    REPLAY = "replay"
    """Seen before (or older than the window): refuse as ``replay``."""
    REVOKED = "revoked"
    """The ticket was released or revoked, expired, or the store cannot vouch for it (it
    forgot the ticket's window, or the ticket predates the store's state): refuse; the client
    re-binds."""


@runtime_checkable
class ReplayStore(Protocol):
    """A replay cache shared by every server that opens the same tickets (sync)."""

    def claim(
        self,
        ticket_id: bytes,
        sequence: int,
        expires_at: float,
        *,
        issued_at: float | None = None,
    ) -> ReplayVerdict:
        """Atomically check and record ``sequence`` for ``ticket_id``. Raises
        ``ReplayStoreUnavailableError`` when the store cannot answer; never returns FRESH then."""
        ...

    def revoke(
        self, ticket_id: bytes, expires_at: float, *, issued_at: float | None = None
    ) -> None:
        """Refuse every later claim for ``ticket_id`` until ``expires_at`` (released context)."""
        ...


@runtime_checkable
class AsyncReplayStore(Protocol):
    """``ReplayStore`` for asyncio bindings."""

    async def claim(
        self,
        ticket_id: bytes,
        sequence: int,
        expires_at: float,
        *,
        issued_at: float | None = None,
    ) -> ReplayVerdict: ...

    async def revoke(
        self, ticket_id: bytes, expires_at: float, *, issued_at: float | None = None
    ) -> None: ...


def _check_time(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of seconds since the epoch")
    return float(value)


def check_claim_arguments(
    ticket_id: object, sequence: object, expires_at: object, issued_at: object
) -> None:
    """Caller mistakes raise at once (``TypeError``/``ValueError``), before any state changes;
    shared by every store."""
    if not isinstance(ticket_id, bytes):
        raise TypeError("ticket_id must be bytes")
    if not 0 < len(ticket_id) <= MAX_TICKET_ID_SIZE:
        raise ValueError(f"ticket_id must be 1..{MAX_TICKET_ID_SIZE} bytes")
    if isinstance(sequence, bool) or not isinstance(sequence, int):
        raise TypeError("sequence must be an int")
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise ValueError("sequence must be in 0..2**64-1")
    _check_time(expires_at, "expires_at")
    if issued_at is not None:
        _check_time(issued_at, "issued_at")


class _Entry:
    __slots__ = ("expires_at", "issued_at", "window")

    def __init__(self, window: ReplayWindow | None, expires_at: float, issued_at: float | None):
        self.window = window
        self.expires_at = expires_at
        self.issued_at = issued_at


class MemoryReplayStore:
    """One process's replay store: a sliding window per ticket (the core's RFC 4303 /
    RFC 6479 ``ReplayWindow``) and a set of revoked tickets, dropped when they expire.

    Bounded: at most ``max_tickets`` windows (least recently used forgotten first) and
    ``max_revoked`` revocations. Forgetting fails closed: the store remembers the latest
    ``issued_at`` and ``expires_at`` it ever forgot, and answers REVOKED for an unknown ticket
    that could be one of those, so a forgotten ticket never gets a fresh window (its client
    re-binds). Tickets issued before the store was created are REVOKED too (a restarted
    process cannot know what its predecessor accepted). Thread-safe.
    """

    def __init__(
        self,
        *,
        max_tickets: int = DEFAULT_MAX_TICKETS,
        max_revoked: int = DEFAULT_MAX_REVOKED,
        window: int = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for value, what in ((max_tickets, "max_tickets"), (max_revoked, "max_revoked")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive integer")
        ReplayWindow(window)  # validates the size now, not on the first claim
        self._max_tickets = max_tickets
        self._max_revoked = max_revoked
        self._window = window
        self._clock = clock
        self._birth = clock()
        self._lock = threading.Lock()
        self._windows: OrderedDict[bytes, _Entry] = OrderedDict()
        self._revoked: OrderedDict[bytes, _Entry] = OrderedDict()
        self._expiries: list[tuple[float, bytes]] = []
        # The fail-closed horizon: the largest issued_at / expires_at of any ticket forgotten.
        self._forgot_issued = -math.inf
        self._forgot_expiry_issued = -math.inf
        self._forgot_expiry_unissued = -math.inf

    def __len__(self) -> int:
        """Tickets with a window (for tests and metrics)."""
        return len(self._windows)

    @property
    def revoked_count(self) -> int:
        return len(self._revoked)

    def claim(
        self,
        ticket_id: bytes,
        sequence: int,
        expires_at: float,
        *,
        issued_at: float | None = None,
    ) -> ReplayVerdict:
        # The usual shapes (bytes, int, float from a ticket) are checked inline; anything else
        # takes the full check, which raises or accepts it (an int expiry, say).
        if not (
            type(ticket_id) is bytes
            and 0 < len(ticket_id) <= MAX_TICKET_ID_SIZE
            and type(sequence) is int
            and 0 <= sequence <= MAX_SEQUENCE
            and type(expires_at) is float
            and -_INF < expires_at < _INF  # False for NaN too
            and (issued_at is None or (type(issued_at) is float and -_INF < issued_at < _INF))
        ):
            check_claim_arguments(ticket_id, sequence, expires_at, issued_at)
        now = self._clock()
        if expires_at <= now:
            return ReplayVerdict.REVOKED
        with self._lock:
            expiries = self._expiries
            if expiries and expiries[0][0] <= now:
                self._purge(now)  # only when something expired: amortised over its lifetime
            if ticket_id in self._revoked:
                return ReplayVerdict.REVOKED
            entry = self._windows.get(ticket_id)
            if entry is None:
                if self._could_be_forgotten(expires_at, issued_at):
                    return ReplayVerdict.REVOKED
                entry = _Entry(ReplayWindow(self._window), expires_at, issued_at)
                self._windows[ticket_id] = entry
                self._push_expiry(expires_at, ticket_id)
                while len(self._windows) > self._max_tickets:
                    self._forget(self._windows.popitem(last=False)[1])
            else:
                self._windows.move_to_end(ticket_id)
                if expires_at > entry.expires_at or (
                    issued_at is not None
                    and (entry.issued_at is None or issued_at < entry.issued_at)
                ):
                    self._extend(entry, ticket_id, expires_at, issued_at)
            window = entry.window
            assert window is not None
            # One lock: the store's serializes the window too (``record``, not ``accept``).
            if window.record(sequence) is not None:
                return ReplayVerdict.REPLAY
            return ReplayVerdict.FRESH

    def revoke(
        self, ticket_id: bytes, expires_at: float, *, issued_at: float | None = None
    ) -> None:
        check_claim_arguments(ticket_id, 0, expires_at, issued_at)
        with self._lock:
            self._purge(self._clock())
            entry = self._windows.pop(ticket_id, None) or self._revoked.get(ticket_id)
            if entry is None:
                entry = _Entry(None, expires_at, issued_at)
                self._push_expiry(expires_at, ticket_id)
            else:
                entry.window = None
                self._extend(entry, ticket_id, expires_at, issued_at)
            self._revoked[ticket_id] = entry
            self._revoked.move_to_end(ticket_id)
            while len(self._revoked) > self._max_revoked:
                self._forget(self._revoked.popitem(last=False)[1])

    # -- internals (all under self._lock) -------------------------------------------------

    def _extend(
        self, entry: _Entry, ticket_id: bytes, expires_at: float, issued_at: float | None
    ) -> None:
        """The same ticket id claimed with a later expiry (a re-sealed ticket): keep the entry
        until the latest one, so its window is never dropped while a ticket can still use it."""
        if expires_at > entry.expires_at:
            entry.expires_at = expires_at
            self._push_expiry(expires_at, ticket_id)
        if issued_at is not None and (entry.issued_at is None or issued_at < entry.issued_at):
            entry.issued_at = issued_at

    def _could_be_forgotten(self, expires_at: float, issued_at: float | None) -> bool:
        if expires_at <= self._forgot_expiry_unissued:
            return True
        if issued_at is not None:
            return issued_at < self._birth or issued_at <= self._forgot_issued
        return expires_at <= self._forgot_expiry_issued

    def _forget(self, entry: _Entry) -> None:
        if entry.issued_at is None:
            self._forgot_expiry_unissued = max(self._forgot_expiry_unissued, entry.expires_at)
        else:
            self._forgot_issued = max(self._forgot_issued, entry.issued_at)
            self._forgot_expiry_issued = max(self._forgot_expiry_issued, entry.expires_at)

    def _push_expiry(self, expires_at: float, ticket_id: bytes) -> None:
        heapq.heappush(self._expiries, (expires_at, ticket_id))
        if len(self._expiries) > 2 * (self._max_tickets + self._max_revoked):
            # Entries of forgotten tickets linger until they expire; rebuild from live ones.
            live = [*self._windows.items(), *self._revoked.items()]
            self._expiries = [(entry.expires_at, tid) for tid, entry in live]
            heapq.heapify(self._expiries)

    def _purge(self, now: float) -> None:
        """Drop what expired: an expired ticket is refused by its expiry, so no horizon."""
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, ticket_id = heapq.heappop(expiries)
            for table in (self._windows, self._revoked):
                entry = table.get(ticket_id)
                if entry is not None and entry.expires_at <= now:
                    del table[ticket_id]


class AsyncMemoryReplayStore:
    """``MemoryReplayStore`` behind the ``AsyncReplayStore`` interface (it never blocks on
    I/O, so the coroutines just call it)."""

    def __init__(
        self,
        store: MemoryReplayStore | None = None,
        *,
        max_tickets: int = DEFAULT_MAX_TICKETS,
        max_revoked: int = DEFAULT_MAX_REVOKED,
        window: int = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if store is None:
            store = MemoryReplayStore(
                max_tickets=max_tickets, max_revoked=max_revoked, window=window, clock=clock
            )
        self.store = store

    async def claim(
        self,
        ticket_id: bytes,
        sequence: int,
        expires_at: float,
        *,
        issued_at: float | None = None,
    ) -> ReplayVerdict:
        return self.store.claim(ticket_id, sequence, expires_at, issued_at=issued_at)

    async def revoke(
        self, ticket_id: bytes, expires_at: float, *, issued_at: float | None = None
    ) -> None:
        self.store.revoke(ticket_id, expires_at, issued_at=issued_at)
