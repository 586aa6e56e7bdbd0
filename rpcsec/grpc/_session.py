"""One channel's binding as a state machine with no I/O, shared by the sync and aio clients.

h11 style: the states and their transitions are a table, an unknown transition raises, and
CLOSED is final. The shells (``_client._Session``, ``aio._client._Session``) own the lock and
run the handshake; everything they decide -- whether the current binding may be used, how long
to wait before a re-bind or after ``busy``, what a refused call means -- is asked here::

    UNBOUND --established--> BOUND --invalidated--> STALE --established--> BOUND
       any state --closed--> CLOSED

STALE means the last binding was dropped because the server (or someone on the path) said it
no longer knows it: the next bind is a re-bind, and ``RebindBackoff`` caps how often those
happen (``_recovery``).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._binding import ChannelSecurity, ClientBound, refusal_action
from ._calls import MethodKeys
from ._recovery import Action, busy_delay

if TYPE_CHECKING:
    from ._cloaking import CallerSessions

__all__ = ["CloakedSessionCore", "SessionCore", "SessionState", "refusal_decision"]


class SessionState(enum.Enum):
    UNBOUND = "unbound"
    BOUND = "bound"
    STALE = "stale"
    CLOSED = "closed"


class _Event(enum.Enum):
    ESTABLISHED = "established"
    INVALIDATED = "invalidated"
    CLOSED = "closed"


_TRANSITIONS: dict[tuple[SessionState, _Event], SessionState] = {
    (SessionState.UNBOUND, _Event.ESTABLISHED): SessionState.BOUND,
    (SessionState.STALE, _Event.ESTABLISHED): SessionState.BOUND,
    (SessionState.BOUND, _Event.ESTABLISHED): SessionState.BOUND,  # expired, bound again
    (SessionState.BOUND, _Event.INVALIDATED): SessionState.STALE,
    (SessionState.UNBOUND, _Event.CLOSED): SessionState.CLOSED,
    (SessionState.BOUND, _Event.CLOSED): SessionState.CLOSED,
    (SessionState.STALE, _Event.CLOSED): SessionState.CLOSED,
    (SessionState.CLOSED, _Event.CLOSED): SessionState.CLOSED,
}


class SessionCore:
    """The binding of one channel: its state, its current ``ClientBound``, and the policy."""

    __slots__ = ("_random", "current", "security", "state")

    def __init__(
        self, security: ChannelSecurity, *, random_source: Callable[[], float] = random.random
    ) -> None:
        self.security = security
        self.state = SessionState.UNBOUND
        self.current: ClientBound | None = None
        self._random = random_source

    def _transition(self, event: _Event) -> None:
        try:
            self.state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise ValueError(f"the channel is {self.state.value}: cannot {event.value}") from None

    def usable(self, stale: ClientBound | None = None) -> ClientBound | None:
        """The current binding if a call may use it now (not expired, not ``stale``)."""
        bound = self.current
        if bound is None or bound is stale or not bound.usable(self.security.clock()):
            return None
        return bound

    def before_bind(self) -> float:
        """A bind is about to start: seconds to wait first (a capped re-bind backoff).
        Raises ``ValueError`` on a closed channel."""
        if self.state is SessionState.CLOSED:
            raise ValueError("the channel is closed")
        self.current = None
        if self.state is SessionState.STALE:
            return self.security.backoff.before_rebind()
        return 0.0

    def busy(self, attempt: int, remaining: float) -> float | None:
        """The handshake was refused ``busy`` (attempt ``attempt``): seconds to wait before
        the next one, or None when that would pass the handshake's deadline."""
        delay = busy_delay(attempt, jitter=self._random())
        return None if delay >= remaining else delay

    def established(self, bound: ClientBound) -> None:
        self._transition(_Event.ESTABLISHED)
        self.current = bound

    def invalidate(self, bound: ClientBound) -> None:
        """The server does not know ``bound`` any more: the next call binds again."""
        if self.current is bound and self.state is SessionState.BOUND:
            self.current = None
            self._transition(_Event.INVALIDATED)

    def close(self) -> ClientBound | None:
        """The channel closes: returns the binding to release, if any."""
        self._transition(_Event.CLOSED)
        bound, self.current = self.current, None
        return bound

    def refused(
        self,
        bound: ClientBound,
        error: BaseException,
        idempotent: bool,
        resendable: bool,
        attempt: int,
        keys: MethodKeys | None = None,
        call_seq: bytes | None = None,
    ) -> bool:
        """Apply the recovery rule (``_recovery.decide``) to a refused call; True: the shell
        sends the call again (after binding again if the binding was dropped)."""
        action = refusal_action(
            error,
            idempotent=idempotent,
            resendable=resendable,
            attempt=attempt,
            bound=bound,
            keys=keys,
            call_seq=call_seq,
        )
        if action is Action.REBIND or action is Action.RESEND:
            self.invalidate(bound)
        return action is Action.RESEND or action is Action.RETRY


def refusal_decision(
    bound: ClientBound,
    error: BaseException,
    idempotent: bool,
    resendable: bool,
    attempt: int,
    keys: MethodKeys | None = None,
    call_seq: bytes | None = None,
) -> bool:
    """``SessionCore.refused``'s answer for a binding no session holds any more (a cloaked
    channel evicted it): nothing to invalidate, the same rule."""
    action = refusal_action(
        error,
        idempotent=idempotent,
        resendable=resendable,
        attempt=attempt,
        bound=bound,
        keys=keys,
        call_seq=call_seq,
    )
    return action is Action.RESEND or action is Action.RETRY


class CloakedSessionCore:
    """What the sync and aio dynamic-cloaking shells share: the session per identity
    (``_cloaking.CallerSessions``) and the outcome of a call routed to the session that owns
    its binding. The shells add binding (blocking or awaited) and release; their sessions
    (``_client._Session``, ``aio._client._Session``) answer ``refused`` / ``invalidate``
    without I/O (a verified call resets its own binding's backoff: ``ClientBound.succeeded``)."""

    callers: CallerSessions[Any]

    @property
    def current(self) -> ClientBound | None:
        session = self.callers.peek()
        return None if session is None else session.current

    def _owner_of(self, bound: ClientBound) -> Any:
        for session in self.callers.sessions():
            if session.current is bound:
                return session
        return None

    def refused(
        self,
        bound: ClientBound,
        error: BaseException,
        idempotent: bool,
        resendable: bool,
        attempt: int,
        keys: MethodKeys | None = None,
        call_seq: bytes | None = None,
    ) -> bool:
        session = self._owner_of(bound)
        if session is not None:
            return session.refused(bound, error, idempotent, resendable, attempt, keys, call_seq)
        # Evicted meanwhile: nothing to invalidate, the rule is the same.
        return refusal_decision(bound, error, idempotent, resendable, attempt, keys, call_seq)

    def invalidate(self, bound: ClientBound) -> None:
        session = self._owner_of(bound)
        if session is not None:
            session.invalidate(bound)
