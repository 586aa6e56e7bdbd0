"""What a client does when a call is refused: the recovery policy, with no I/O.

gRPC's own rule for transparent retries (gRFC A6, "Transparent retries"): a call is sent again
without the application's consent only when the server provably did not run it. A refusal's
``rpcsec-reason`` trailer is *not* such a proof: trailers and status codes are not signed, so a
man in the middle can let a call run and then turn its answer into ``context-unknown``. So:

* ``context-unknown`` / ``expired`` make the channel drop its binding (the next call binds
  afresh): re-binding is always safe, whoever asked for it, and ``RebindBackoff`` keeps an
  attacker or a misconfigured deployment from turning that into one handshake per call.
* The refused call itself is sent again only when its requests can be sent again (a single
  request message) and either the server signed, with the context, that this very call (its
  sequence number) did not run (``_wire``: ``rpcsec-not-run-bin``), or the application
  declared its method idempotent (``secure_channel(idempotent_methods=...)`` or the proto's
  ``idempotency_level``, as gRPC's retry policy does). Otherwise the refusal reaches the
  application as an error.
* ``busy`` on a handshake (no call ran) is retried with jittered exponential backoff within the
  handshake's deadline (AWS architecture blog, "Exponential Backoff And Jitter": full jitter).

The sync and asyncio clients both ask ``decide()``; they differ only in how they wait.
"""

from __future__ import annotations

import enum
import random
import threading
from collections.abc import Callable, Iterable

from google.protobuf import descriptor_pool
from google.protobuf.descriptor_pb2 import MethodOptions

__all__ = [
    "LOST_STATUS",
    "REBIND_REASONS",
    "Action",
    "IdempotentMethods",
    "RebindBackoff",
    "busy_delay",
    "decide",
]

# The server says it does not know (or no longer accepts) the context: the binding is stale.
REBIND_REASONS = frozenset({"context-unknown", "expired"})
# Client-side only: the transport lost the server's status of a call the server ended before
# reading its requests (see rpcsec.grpc.aio._client). Treated as a stale binding.
LOST_STATUS = "status-lost"
_STALE = REBIND_REASONS | {LOST_STATUS}

_SAFE_LEVELS = frozenset({MethodOptions.IDEMPOTENT, MethodOptions.NO_SIDE_EFFECTS})


class Action(enum.Enum):
    """What the client does with one refused call."""

    RAISE = "raise"  # the application sees the error; the binding is kept
    REBIND = "rebind"  # the application sees the error; the next call binds afresh
    RESEND = "resend"  # bind afresh and send this call again (idempotent, first attempt)
    RETRY = "retry"  # send this idempotent call again on the same binding (transport failure)


# An idempotent call failed in transport (UNAVAILABLE with no rpcsec reason: a proxy found
# its replica gone) is sent again at most this many times in all.
MAX_TRANSPORT_ATTEMPTS = 4


def decide(
    reason: str | None,
    *,
    idempotent: bool,
    resendable: bool,
    attempt: int,
    proven_not_run: Callable[[], bool] | None = None,
    unavailable: bool = False,
) -> Action:
    """The one recovery rule for every call kind (unary, streams, futures, sync and aio).

    ``resendable``: the call's requests can be sent again (single request, nothing received
    yet). ``attempt``: 0 for the first sending; a call is sent at most twice.
    ``proven_not_run``: verifies the server's signed statement that this call did not run
    (asked only when it matters). ``unavailable``: the call ended UNAVAILABLE.
    """
    if (reason is None and unavailable) or reason == "replay":
        # A proxy found its replica gone, or gRPC's own retry policy re-sent the very same
        # sealed bytes after a first attempt got through (the replay store refused the copy:
        # it ran at most once). Only an idempotent call may be sent again, as a new call.
        if idempotent and resendable and attempt < MAX_TRANSPORT_ATTEMPTS - 1:
            return Action.RETRY
        return Action.RAISE
    if reason not in _STALE:
        return Action.RAISE
    if (
        resendable
        and attempt == 0
        and (idempotent or (proven_not_run is not None and proven_not_run()))
    ):
        return Action.RESEND
    return Action.REBIND


class IdempotentMethods:
    """The methods the application says may run twice: named paths (``/pkg.Service/Method``),
    whole services (``/pkg.Service/``), and methods whose proto declares ``idempotency_level``
    IDEMPOTENT or NO_SIDE_EFFECTS (looked up once per method in the default descriptor pool)."""

    def __init__(self, methods: Iterable[str] | None = None) -> None:
        if methods is None:
            methods = ()
        if isinstance(methods, str | bytes) or not isinstance(methods, Iterable):
            raise TypeError("idempotent_methods must be a list of method paths")
        named = []
        for method in methods:
            if not isinstance(method, str):
                raise TypeError("idempotent_methods must be a list of method paths")
            if not method.startswith("/") or method.count("/") != 2:
                raise ValueError(
                    f"{method!r} is not a method path ('/pkg.Service/Method' or '/pkg.Service/')"
                )
            named.append(method)
        self._named = frozenset(named)

    def __contains__(self, method: str) -> bool:
        if method in self._named:
            return True
        service = method[: method.rfind("/") + 1]
        return service in self._named or _declared_idempotent(method)


def _declared_idempotent(method: str) -> bool:
    full_name = method.strip("/").replace("/", ".")
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(full_name)
    except KeyError:
        return False
    return descriptor.GetOptions().idempotency_level in _SAFE_LEVELS


class RebindBackoff:
    """Caps re-binding: the first re-bind after a good call is immediate; each further one
    without a call succeeding in between waits twice as long (``base`` .. ``cap`` seconds,
    full jitter). A successful call resets it."""

    def __init__(
        self,
        *,
        base: float = 0.05,
        cap: float = 5.0,
        random_source: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.cap = cap
        self._random = random_source
        self._lock = threading.Lock()
        self.failures = 0  # re-binds since the last successful call
        self.rebinds = 0

    def before_rebind(self) -> float:
        """Seconds to wait before the next handshake of a re-bind (0 for the first)."""
        with self._lock:
            failures = self.failures
            self.failures = failures + 1
            self.rebinds += 1
        if failures == 0:
            return 0.0
        return min(self.cap, self.base * 2 ** (failures - 1)) * self._random()

    def succeeded(self) -> None:
        if self.failures:
            with self._lock:
                self.failures = 0


def busy_delay(attempt: int, *, base: float = 0.02, cap: float = 1.0, jitter: float = 1.0) -> float:
    """Full-jitter backoff before handshake attempt ``attempt + 1`` after a ``busy``."""
    return min(cap, base * 2**attempt) * jitter
