"""Releasing the bindings dynamic cloaking drops (DeleteSecurityContext for the server).

``CallerSessions`` drops a caller's session when its bound evicts it (least recently used) or
its delegation ends. Unreleased, the server would keep that context -- its table entry and,
for a ticket, the replay store's live window -- until the context's own expiry, usable by
anyone who captured a call on it. So each dropped session gets its signed Release (the shell's
``release()``, what ``channel.close()`` sends), off the call path that dropped it: one drain
per channel, a daemon thread (sync) or a task on the running loop (aio), one Release at a
time, alive only while something waits to be released. Nothing here raises into a call.

A session is released only once nothing but this queue holds it or its binding: a call
between choosing its session and binding holds the session (the shell's frame), a call in
flight holds its ``ClientBound`` (a unary call's frame, a future, a response stream). That is
read from CPython's reference counts, which count exactly those holders (``sys.getrefcount``,
calibrated at import on an object held the same way): no call path change is needed, and a
call object kept after its end delays the Release until it is dropped. Bounded: a session
whose binding has expired is forgotten without a Release (the server drops the context then
by itself), and beyond ``limit`` waiting the oldest are forgotten likewise.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["POLL_MAX", "POLL_MIN", "DroppedSessions"]

_LOG = logging.getLogger("rpcsec.grpc")

POLL_MIN = 0.005  # seconds between looks at a session still in use, doubling up to POLL_MAX
POLL_MAX = 0.5

S = TypeVar("S")


class _Dropped:
    __slots__ = ("expires_at", "session")

    def __init__(self, session: Any, expires_at: float | None) -> None:
        self.session = session  # the queue's one reference: see _FREE
        self.expires_at = expires_at


# References a dropped session (or its binding, held by the session's core) has when nothing
# else holds it: the one attribute, plus getrefcount's own argument.
_PROBE = _Dropped(object(), None)
_FREE = sys.getrefcount(_PROBE.session)
del _PROBE


def _in_use(item: _Dropped) -> bool:
    """Something besides the queue holds the session, or its binding (``current``)."""
    if sys.getrefcount(item.session) > _FREE:
        return True
    current = getattr(item.session, "current", None)
    # ``current``: here a local (+1) besides the session core's attribute and the argument
    return current is not None and sys.getrefcount(current) > _FREE + 1


def _expires_at(session: Any) -> float | None:
    current = getattr(session, "current", None)
    expires = getattr(current, "expires_at", None)
    return float(expires) if isinstance(expires, (int, float)) else None


class DroppedSessions(Generic[S]):
    """The sessions ``CallerSessions`` dropped, waiting for their last call to end, and the
    drain that sends their Release. ``released``: Releases sent (sessions that had a
    binding); ``forgotten``: dropped without one (its binding expired first, over ``limit``,
    or no running loop for an aio session)."""

    def __init__(self, *, limit: int, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._clock = clock
        self._items: list[_Dropped] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._draining: threading.Thread | asyncio.Task[None] | None = None
        self._closed = False
        self._news = False  # something was added since the drain last looked: look soon
        self.released = 0
        self.forgotten = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, sessions: list[S]) -> None:
        """Queue ``sessions`` (just dropped) and make sure a drain runs. Never blocks."""
        start: Callable[[], None] | None = None
        with self._lock:
            if self._closed:
                return
            for session in sessions:
                if getattr(session, "release", None) is None:
                    self.forgotten += 1  # nothing to release (a stand-in in unit tests)
                    continue
                self._items.append(_Dropped(session, _expires_at(session)))
            while len(self._items) > self._limit:
                del self._items[0]
                self.forgotten += 1
            # (the caller empties ``sessions`` after this returns: the drain counts holders)
            draining = self._draining
            if isinstance(draining, asyncio.Task) and draining.done():
                draining = self._draining = None  # its loop went away
            if self._items and draining is None:
                start = self._start_locked()
            else:
                self._news = True
                self._wake.notify()
        if start is not None:
            start()

    def _start_locked(self) -> Callable[[], None] | None:
        if inspect.iscoroutinefunction(self._items[0].session.release):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # an aio channel used with no loop running: nothing to run on
                self.forgotten += len(self._items)
                self._items.clear()
                return None
            self._draining = loop.create_task(self._drain_async())
            return None
        thread = threading.Thread(target=self._drain, name="rpcsec-release", daemon=True)
        self._draining = thread
        return thread.start

    def _due_locked(self) -> list[S]:
        """The sessions nobody holds any more (taken off the queue); forgets those whose binding
        has expired, held or not (nothing to release: the server drops it then too)."""
        now = self._clock()
        self._news = False
        due: list[S] = []
        keep: list[_Dropped] = []
        for item in self._items:
            if item.expires_at is not None and now >= item.expires_at:
                self.forgotten += 1  # the server forgets an expired context by itself
            elif not _in_use(item):
                due.append(item.session)
            else:
                keep.append(item)
        self._items = keep
        return due

    def _finish_locked(self) -> bool:
        """True: nothing left, the drain ends (and a later ``add`` starts another)."""
        if self._closed or not self._items:
            self._draining = None
            return True
        return False

    def _release_one(self, session: Any) -> bool:
        bound = session.current is not None
        if bound:
            self.released += 1
        return bound

    def _drain(self) -> None:
        delay = POLL_MIN
        while True:
            with self._lock:
                due = self._due_locked()
                if not due:
                    if self._finish_locked():
                        return
                    self._wake.wait(delay)
                    delay = POLL_MIN if self._news else min(delay * 2, POLL_MAX)
                    continue
            delay = POLL_MIN
            while due:
                session = due.pop()
                if self._release_one(session):
                    try:
                        session.release()  # type: ignore[attr-defined]
                    except Exception:  # best effort: the server expires it anyway
                        _LOG.debug("releasing a dropped cloaked binding failed", exc_info=True)
                del session

    async def _drain_async(self) -> None:
        delay = POLL_MIN
        while True:
            with self._lock:
                due = self._due_locked()
                if not due and self._finish_locked():
                    return
            if not due:
                await asyncio.sleep(delay)
                delay = POLL_MIN if self._news else min(delay * 2, POLL_MAX)
                continue
            delay = POLL_MIN
            while due:
                session = due.pop()
                if self._release_one(session):
                    try:
                        await session.release()  # type: ignore[attr-defined]
                    except Exception:  # best effort: the server expires it anyway
                        _LOG.debug("releasing a dropped cloaked binding failed", exc_info=True)
                del session

    def close(self) -> list[S]:
        """The channel closes: what still waits, for the channel to release now; no drain
        runs after."""
        with self._lock:
            self._closed = True
            waiting = [item.session for item in self._items]
            self._items.clear()
            self._wake.notify()
        return waiting
