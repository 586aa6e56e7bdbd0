"""The server's memory: established contexts by handle, and handshakes in progress.

``ContextTable`` is bounded (least recently used contexts are evicted first), forgets contexts
idle too long and refuses those past their lifetime; a client whose context was forgotten
re-binds (the server says ``context-unknown``). ``HandshakeLimiter`` bounds handshakes in
progress, globally and per peer, and cancels half-open ones after a timeout, so a flood of
abandoned handshakes can hold neither memory nor server threads for long (DESIGN §5). Both
take a ``clock`` so expiry is tested without sleeping. Neither does I/O.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rpcsec.security import AccessToken
from rpcsec.sspi import (
    BusyError,
    ContextExpiredError,
    InvalidHandleError,
    ProtectionLevel,
    ServerContext,
)

from ._calls import CallProtection
from ._responses import TicketServerProtection
from ._wire import HANDLE_SIZE, call_prefix, message_prefix, open_aad

__all__ = [
    "ContextEntry",
    "ContextTable",
    "HandshakeLimiter",
    "HandshakeTicket",
    "stale_entry",
]

_LOG = logging.getLogger("rpcsec.grpc")

DEFAULT_MAX_CONTEXTS = 10_000
DEFAULT_IDLE_TIMEOUT = 3600.0
DEFAULT_MAX_HANDSHAKES = 64
DEFAULT_MAX_HANDSHAKES_PER_PEER = 8
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
TOUCH = 1.0  # seconds between LRU refreshes of one entry


class ContextEntry:
    """One established server context and what every call on it needs, computed once."""

    __slots__ = (
        "call_prefix",
        "context",
        "expires_at",
        "handle",
        "issued_at",
        "keys",
        "last_used",
        "methods",
        "msg_label",
        "open_prefix",
        "peer",
        "protection",
        "ticket_id",
        "tokens",
    )

    def __init__(
        self,
        handle: bytes,
        context: ServerContext,
        peer: str,
        now: float,
        expires_at: float | None,
        *,
        protection: CallProtection | None = None,
        caller: AccessToken | None = None,
        ticket_id: bytes | None = None,
        issued_at: float = 0.0,
    ) -> None:
        self.handle = handle
        self.context = context
        self.peer = peer
        self.protection = protection or CallProtection(context, handle)
        # A ticket's per-message keys (requests: the epoch key the server core opens them
        # with, cached by the first request that verifies -- not now: an idle context holds
        # no AEAD of its own; responses: per-call keys); None for a process-local context,
        # whose requests go through the context's own replay window (``unwrap``).
        self.keys: TicketServerProtection | None = None
        if ticket_id is not None and isinstance(self.protection, TicketServerProtection):
            self.keys = self.protection
        self.call_prefix = call_prefix(handle)
        self.msg_label = message_prefix(handle, b"")
        self.open_prefix = open_aad(handle, b"")
        self.methods: dict[str, Any] = {}  # per-method state (``_server_core.EntryMethod``)
        self.last_used = now
        self.expires_at = expires_at
        # A ticket's entry is a cache of what the ticket says: the replay store, not this
        # process, decides freshness, and dropping the entry forgets nothing.
        self.ticket_id = ticket_id
        self.issued_at = issued_at
        if caller is None:
            caller = context.peer
        # The caller's token as handlers see it, one per protection level a call may use.
        self.tokens: dict[ProtectionLevel, AccessToken] = {
            level: caller.replace(protection_level=level)
            for level in (ProtectionLevel.INTEGRITY, ProtectionLevel.PRIVACY)
        }

    def delete(self) -> None:
        """DeleteSecurityContext: the context and the keys cached from it are gone (a call
        that found this entry before it left the table then fails like one after)."""
        keys = self.keys
        if keys is not None:
            keys.receive = None
            self.keys = None
        self.context.delete()

    def __repr__(self) -> str:
        return f"<ContextEntry peer={self.peer!r} caller={self.tokens[ProtectionLevel.INTEGRITY]}>"


class ContextTable:
    """Established contexts by handle: bounded, LRU-evicted, with idle and lifetime expiry."""

    def __init__(
        self,
        *,
        max_contexts: int = DEFAULT_MAX_CONTEXTS,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        max_lifetime: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_contexts < 1:
            raise ValueError("max_contexts must be at least 1")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if max_lifetime is not None and max_lifetime <= 0:
            raise ValueError("max_lifetime must be positive")
        self.max_contexts = max_contexts
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.clock = clock
        self._entries: OrderedDict[bytes, ContextEntry] = OrderedDict()
        # The entry cached under a handle, without any check: for the server core's per-call
        # path, which checks idle time and expiry inline exactly as ``lookup`` does, and takes
        # ``lookup`` (which refuses and removes) for anything but a fresh entry.
        self.cached = self._entries.get
        self._lock = threading.Lock()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, context: ServerContext, peer: str) -> bytes:
        """Remember an established context; returns its new, unguessable handle."""
        now = self.clock()
        expires_at = context.expires_at
        if self.max_lifetime is not None:
            own = now + self.max_lifetime
            expires_at = own if expires_at is None else min(expires_at, own)
        handle = secrets.token_bytes(HANDLE_SIZE)
        self.insert(ContextEntry(handle, context, peer, now, expires_at))
        return handle

    def insert(self, entry: ContextEntry) -> None:
        """Cache ``entry`` under its handle, evicting the least recently used beyond the
        bound. An evicted process-local context is deleted (its client re-binds); an evicted
        ticket is only forgotten here (its next call opens the ticket again, and a call in
        flight on it finishes)."""
        evicted: list[ContextEntry] = []
        with self._lock:
            self._entries[entry.handle] = entry
            while len(self._entries) > self.max_contexts:
                evicted.append(self._entries.popitem(last=False)[1])
            self.evictions += len(evicted)
        for old in evicted:
            _LOG.info("context of %s evicted (table full)", old.tokens[ProtectionLevel.INTEGRITY])
            if old.ticket_id is None:
                old.delete()

    def lookup(self, handle: bytes) -> ContextEntry:
        """The entry for ``handle``; ``InvalidHandleError`` (context-unknown) if never known,
        evicted or idle too long, ``ContextExpiredError`` if past its lifetime.

        The hot path takes no lock: a dict read and an attribute write are atomic, and the LRU
        order is refreshed at most once per ``TOUCH`` seconds per entry (eviction order is
        exact to within that)."""
        now = self.clock()
        entry = self._entries.get(handle)
        if entry is None:
            raise InvalidHandleError("no such security context")
        idle = self.idle_timeout
        last = entry.last_used
        if (idle is None or now - last <= idle) and (
            entry.expires_at is None or now < entry.expires_at
        ):
            entry.last_used = now
            if now - last >= TOUCH:
                self.touch(handle)
            return entry
        with self._lock:
            if self._entries.get(handle) is entry:
                del self._entries[handle]
        # The entry leaves the table now; its keys go with the refusal (``stale_entry``) so
        # the server can sign that this call did not run, then delete the context.
        error: InvalidHandleError | ContextExpiredError
        if idle is not None and now - last > idle:
            error = InvalidHandleError("security context was idle too long and has been forgotten")
        else:
            error = ContextExpiredError("security context has expired")
        error.stale_entry = entry  # type: ignore[union-attr]
        raise error

    def touch(self, handle: bytes) -> None:
        """Refresh ``handle``'s place in the LRU order (at most once per ``TOUCH`` seconds)."""
        with self._lock:
            if handle in self._entries:
                self._entries.move_to_end(handle)

    def release(self, handle: bytes) -> bool:
        """DeleteSecurityContext on the client's behalf (``channel.close()``)."""
        with self._lock:
            entry = self._entries.pop(handle, None)
        if entry is None:
            return False
        entry.delete()
        return True

    def entries(self) -> list[ContextEntry]:
        with self._lock:
            return list(self._entries.values())

    def discard(self, entry: ContextEntry) -> None:
        """Forget ``entry`` if it is still the cached one (a stale ticket entry)."""
        with self._lock:
            if self._entries.get(entry.handle) is entry:
                del self._entries[entry.handle]

    def purge(self) -> int:
        """Drop every idle or expired entry now; returns how many."""
        now = self.clock()
        dropped: list[ContextEntry] = []
        with self._lock:
            for handle, entry in list(self._entries.items()):
                idle = self.idle_timeout is not None and now - entry.last_used > self.idle_timeout
                dead = entry.expires_at is not None and now >= entry.expires_at
                if idle or dead:
                    dropped.append(self._entries.pop(handle))
        for entry in dropped:
            entry.delete()
        return len(dropped)


def stale_entry(error: BaseException) -> ContextEntry | None:
    """The entry a refusal from ``lookup`` just removed (its context not yet deleted)."""
    entry = getattr(error, "stale_entry", None)
    return entry if isinstance(entry, ContextEntry) else None


@dataclass(eq=False, slots=True)
class HandshakeTicket:
    """One admitted handshake; ``cancel`` ends its stream when it times out half-open."""

    peer: str
    started_at: float
    cancel: Callable[[], None]


class HandshakeLimiter:
    """Bounds handshakes in progress globally and per peer (``context.peer()``).

    A new handshake first reaps every one older than ``timeout`` (cancelling its stream, which
    frees the thread or task serving it), then is admitted only below both limits; otherwise it
    is refused at once with ``BusyError``. Admission order is start order, so reaping is
    O(reaped).
    """

    def __init__(
        self,
        *,
        max_pending: int = DEFAULT_MAX_HANDSHAKES,
        max_per_peer: int = DEFAULT_MAX_HANDSHAKES_PER_PEER,
        timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_pending < 1 or max_per_peer < 1:
            raise ValueError("handshake limits must be at least 1")
        if timeout <= 0:
            raise ValueError("handshake timeout must be positive")
        self.max_pending = max_pending
        self.max_per_peer = max_per_peer
        self.timeout = timeout
        self._clock = clock
        self._pending: OrderedDict[HandshakeTicket, None] = OrderedDict()
        self._per_peer: dict[str, int] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.refused = 0
        self.timed_out = 0

    def __len__(self) -> int:
        return len(self._pending)

    def pending_for(self, peer: str) -> int:
        return self._per_peer.get(peer, 0)

    @property
    def peers(self) -> int:
        return len(self._per_peer)

    def admit(self, peer: str, cancel: Callable[[], None]) -> HandshakeTicket:
        now = self._clock()
        reaped = self._reap(now)
        try:
            with self._lock:
                if len(self._pending) >= self.max_pending:
                    self.refused += 1
                    raise BusyError("too many handshakes in progress")
                if self._per_peer.get(peer, 0) >= self.max_per_peer:
                    self.refused += 1
                    raise BusyError("too many handshakes in progress from this peer")
                ticket = HandshakeTicket(peer, now, cancel)
                self._pending[ticket] = None
                self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
                return ticket
        finally:
            for stale in reaped:
                _cancel_quietly(stale)

    def reap(self) -> int:
        """Cancel every handshake older than the timeout now; returns how many."""
        reaped = self._reap(self._clock())
        for stale in reaped:
            _cancel_quietly(stale)
        return len(reaped)

    def _reap(self, now: float) -> list[HandshakeTicket]:
        reaped: list[HandshakeTicket] = []
        with self._lock:
            while self._pending:
                oldest = next(iter(self._pending))
                if now - oldest.started_at < self.timeout:
                    break
                self._forget(oldest)
                reaped.append(oldest)
            self.timed_out += len(reaped)
        return reaped

    def done(self, ticket: HandshakeTicket) -> None:
        """The handshake finished (or failed); idempotent."""
        with self._lock:
            if ticket in self._pending:
                self._forget(ticket)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no handshake is in progress (graceful shutdown, tests)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def _forget(self, ticket: HandshakeTicket) -> None:
        del self._pending[ticket]
        count = self._per_peer[ticket.peer] - 1
        if count:
            self._per_peer[ticket.peer] = count
        else:
            del self._per_peer[ticket.peer]
        if not self._pending:
            self._idle.notify_all()


def _cancel_quietly(ticket: HandshakeTicket) -> None:
    _LOG.info("half-open handshake from %s timed out", ticket.peer)
    try:
        ticket.cancel()
    except Exception:  # the stream may already be gone; the slot is free either way
        _LOG.debug("cancelling a timed-out handshake failed", exc_info=True)
