"""Which credentials an outbound channel uses when none are given (DESIGN §6, DCOM cloaking).

Inside an impersonation scope (a handler running as its caller) a new channel speaks *for the
caller*: it uses ``token.delegated_credentials``, which a package sets only on a delegation
level context. A caller whose context is not delegation level cannot be spoken for: that is the
seed's "If this fails, then the client security context is not delegation level, WATCH OUT FOR
THIS", raised here as ``DelegationRequiredError`` before anything is sent. Outside any scope the
process speaks for itself with the credentials given to ``set_default_credentials``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from rpcsec._settings import effective_settings
from rpcsec.security import AccessToken, current_token
from rpcsec.sspi import (
    Credentials,
    CredentialUse,
    DelegationPolicyError,
    DelegationRequiredError,
    ImpersonationLevel,
    NoCredentialsError,
)

from ._cloaking_release import DroppedSessions

if TYPE_CHECKING:
    from ._binding import ChannelSecurity

__all__ = [
    "CLOAKING_MODES",
    "CONCURRENT_BINDS",
    "DEFAULT_MAX_CALLERS",
    "CallerSessions",
    "cloaking_mode",
    "early_credentials",
    "get_default_credentials",
    "resolve_credentials",
    "set_default_credentials",
]

CLOAKING_MODES = ("static", "dynamic")
DEFAULT_MAX_CALLERS = 256
# Handshakes one cloaked channel runs at once, whatever the number of callers binding: half the
# server's default per-peer bound (``_table.DEFAULT_MAX_HANDSHAKES_PER_PEER``), so a front's
# first calls queue here instead of being refused ``busy`` and retried there.
CONCURRENT_BINDS = 4
# How often (seconds, by the cache's clock) a call looks for cached bindings whose delegation
# ended, to drop and release them even if their caller never calls again.
SWEEP_INTERVAL = 1.0

_default: Credentials | None = None
_lock = threading.Lock()


def set_default_credentials(credentials: Credentials | None) -> None:
    """The process's own OUTBOUND credentials, used by channels made outside any impersonation
    scope without explicit credentials. ``None`` forgets them."""
    global _default
    if credentials is not None:
        if not isinstance(credentials, Credentials):
            raise TypeError("default credentials must come from acquire_credentials_handle()")
        if not credentials.use & CredentialUse.OUTBOUND:
            raise ValueError("default credentials must be OUTBOUND")
    with _lock:
        _default = credentials


def get_default_credentials() -> Credentials | None:
    return _default


def resolve_credentials(
    credentials: Credentials | None,
) -> tuple[Credentials, AccessToken | None]:
    """The credentials a new channel uses and, when they are a caller's delegated credentials,
    that caller's token (the channel then belongs to that caller alone)."""
    if credentials is not None:
        if not isinstance(credentials, Credentials):
            raise TypeError("credentials must come from acquire_credentials_handle()")
        if not credentials.use & CredentialUse.OUTBOUND:
            raise ValueError("a channel needs OUTBOUND credentials")
        return credentials, None
    token = current_token()
    if token is not None:
        delegated = token.delegated_credentials
        if delegated is None or token.impersonation_level < ImpersonationLevel.DELEGATE:
            raise DelegationRequiredError(
                f"the caller's context ({token.principal}, {token.package}, "
                f"{token.impersonation_level.name}) is not delegation level: an onward call "
                "on its behalf is impossible"
            )
        if not isinstance(delegated, Credentials):
            raise TypeError("the token's delegated_credentials are not a Credentials handle")
        return delegated, token
    default = _default if _default is not None else effective_settings().outbound_credentials()
    if default is None:
        raise NoCredentialsError(
            "no credentials given, none set with rpcsec.grpc.set_default_credentials() or "
            "rpcsec.initialize_security(), and not impersonating a caller"
        )
    return default, None


def early_credentials() -> Credentials | None:
    """What a dynamically cloaked channel can check when it is made: inside a handler, the
    caller's delegated credentials (``DelegationRequiredError`` at once for a caller who did
    not delegate, as a static channel would); outside, the process's defaults if any (None:
    the process's identity is only needed when a call is made outside any handler)."""
    if current_token() is not None:
        return resolve_credentials(None)[0]
    if _default is not None:
        return _default
    return effective_settings().outbound_credentials()


def cloaking_mode(cloaking: str | None, credentials: Credentials | None) -> str:
    """``secure_channel``'s ``cloaking`` argument: None means dynamic without credentials
    (EOAC_DYNAMIC_CLOAKING), static with them (the identity is the one given)."""
    if cloaking is None:
        return "dynamic" if credentials is None else "static"
    if cloaking not in CLOAKING_MODES:
        raise ValueError(f"cloaking must be one of {CLOAKING_MODES}, not {cloaking!r}")
    if cloaking == "dynamic" and credentials is not None:
        raise ValueError("dynamic cloaking chooses the credentials per call: give none")
    return cloaking


def _delegation_expiry(credentials: Credentials) -> float | None:
    """When delegated credentials stop being usable, where the package says: x509's proxy
    chain end (a Kerberos forwarded TGT outlives the service ticket the token expires with)."""
    delegated = getattr(credentials.material, "delegated", None)
    delegation = getattr(delegated, "delegation", None)
    expires = getattr(delegation, "expires_at", None)
    return float(expires) if isinstance(expires, (int, float)) else None


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


S = TypeVar("S")
_DELEGATE = ImpersonationLevel.DELEGATE


class _Entry(Generic[S]):
    __slots__ = ("credentials", "expires_at", "session")

    def __init__(self, credentials: Credentials, expires_at: float | None, session: S) -> None:
        self.credentials = credentials  # held: the key (its id) is never reused while cached
        self.expires_at = expires_at
        self.session = session


class CallerSessions(Generic[S]):
    """Dynamic cloaking's cache: one session (binding) per identity a call is made as.

    DCOM's EOAC_DYNAMIC_CLOAKING: the proxy uses the thread's impersonation token *at call
    time*. Here that is ``rpcsec.current_token()``: each call resolves its credentials
    (``resolve_credentials``: the caller's delegated credentials inside a handler,
    ``DelegationRequiredError`` for a caller who did not delegate, the process's own outside)
    and is sent on the session made for exactly those credentials. The key is the identity of
    the credentials object (each delegation is its own handle; the entry holds it, so the id
    is not reused while cached), never a principal name: two contexts of one principal, or a
    re-delegation, never share a binding. An entry expires with the caller's token and its
    delegation and is then dropped, never re-used (a call as an ended delegation is
    ``DelegationPolicyError``, as the x509 package says for an expired proxy chain); at most
    ``max_callers`` entries are kept (least recently used evicted; a later call of that
    caller binds again). Sessions are made by ``make`` (the sync or aio shell), all over one
    underlying grpc channel. A dropped session (evicted, or its delegation ended: found at its
    caller's next call, or by a sweep at most every ``SWEEP_INTERVAL``) goes to ``dropped``,
    which sends its Release once its last call has ended (``_cloaking_release``), never on the
    call that dropped it. No I/O here.
    """

    def __init__(
        self,
        template: ChannelSecurity,
        make: Callable[[ChannelSecurity], S],
        *,
        max_callers: int = DEFAULT_MAX_CALLERS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(max_callers, int) or max_callers < 1:
            raise ValueError("max_callers must be a positive integer")
        self.template = template
        self._make = make
        self._max = max_callers
        self._clock = clock
        self._entries: OrderedDict[int, _Entry[S]] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False
        self._sweep_at = clock() + SWEEP_INTERVAL
        self._recent: _Entry[S] | None = None  # the entry last selected (the newest in LRU)
        self.dropped: DroppedSessions[S] = DroppedSessions(
            limit=max(max_callers, DEFAULT_MAX_CALLERS), clock=clock
        )
        self.made = 0  # sessions made (one per caller per delegation lifetime)
        self.evicted = 0  # dropped by the bound
        self.expired = 0  # dropped because the delegation ended

    def select(self) -> S:
        """The session for the identity current now, made on first use.

        The delegated hop's per-call cost: an identity already cached is found without the
        lock (a dict read is atomic) when it was also the last one selected; the lock is taken
        to refresh the LRU order only when another identity came in between (exact LRU).
        Anything else -- a miss, an ended delegation, a sweep due, a caller who did not
        delegate, settings from ``initialize_security`` -- takes the full path."""
        token = current_token()
        credentials: Credentials | None = None
        ends: float | None = None
        if token is None:
            credentials = _default  # what resolve_credentials picks first
        elif token.impersonation_level >= _DELEGATE:
            credentials, ends = token.delegated_credentials, token.expires_at
        if credentials is not None:
            key = id(credentials)
            entry = self._entries.get(key)
            if entry is not None and entry.credentials is credentials:
                now = self._clock()
                expires = entry.expires_at
                if (
                    (expires is None or now < expires)
                    and (ends is None or now < ends)
                    and now < self._sweep_at
                ):
                    if entry is not self._recent:
                        with self._lock:
                            if self._entries.get(key) is entry:
                                self._entries.move_to_end(key)
                                self._recent = entry
                    return entry.session
        return self._select(*resolve_credentials(None))

    def _select(self, credentials: Credentials, owner: AccessToken | None) -> S:
        now = self._clock()
        if owner is not None and owner.expired(now):
            raise DelegationPolicyError(
                f"the delegation of {owner.principal} has expired: no onward call as them"
            )
        key = id(credentials)
        dropped: list[S] = []
        try:
            with self._lock:
                if self._closed:
                    raise ValueError("the channel is closed")
                if now >= self._sweep_at:
                    self._sweep_locked(now, dropped)
                entry = self._entries.get(key)
                if entry is not None:
                    if entry.credentials is credentials and (
                        entry.expires_at is None or now < entry.expires_at
                    ):
                        self._entries.move_to_end(key)
                        self._recent = entry
                        return entry.session
                    # ended (or another handle at a reused id): never reused
                    del self._entries[key]
                    dropped.append(entry.session)
                    self.expired += 1
                    del entry
                return self._make_locked(credentials, owner, key, now, dropped)
        finally:
            if dropped:
                self.dropped.add(dropped)
                dropped.clear()

    def _make_locked(
        self,
        credentials: Credentials,
        owner: AccessToken | None,
        key: int,
        now: float,
        dropped: list[S],
    ) -> S:
        """A new session for ``credentials`` (the lock held); the least recently used beyond
        the bound go to ``dropped``."""
        expires = None
        if owner is not None:
            expires = _earliest(owner.expires_at, _delegation_expiry(credentials))
            if expires is not None and now >= expires:
                raise DelegationPolicyError(
                    f"the delegation of {owner.principal} has expired: no onward call"
                )
        session = self._make(self.template.for_caller(credentials, owner))
        self._entries[key] = self._recent = _Entry(credentials, expires, session)
        self.made += 1
        while len(self._entries) > self._max:
            dropped.append(self._entries.popitem(last=False)[1].session)
            self.evicted += 1
        return session

    def _sweep_locked(self, now: float, dropped: list[S]) -> None:
        """Drop every cached binding whose delegation has ended (to be released)."""
        self._sweep_at = now + SWEEP_INTERVAL
        for key in [
            key
            for key, entry in self._entries.items()
            if entry.expires_at is not None and now >= entry.expires_at
        ]:
            dropped.append(self._entries.pop(key).session)
            self.expired += 1

    def peek(self) -> S | None:
        """The session the identity current now would use, if one is cached (no binding)."""
        try:
            credentials, _owner = resolve_credentials(None)
        except (DelegationRequiredError, NoCredentialsError):
            return None
        with self._lock:
            entry = self._entries.get(id(credentials))
        if entry is None or entry.credentials is not credentials:
            return None
        return entry.session

    def sessions(self) -> Iterator[S]:
        """The cached sessions (a snapshot)."""
        with self._lock:
            return iter([entry.session for entry in self._entries.values()])

    def close(self) -> list[S]:
        """The channel closes: every cached session, to release; no session is made after."""
        with self._lock:
            self._closed = True
            sessions = [entry.session for entry in self._entries.values()]
            self._entries.clear()
            self._recent = None
        return sessions + self.dropped.close()

    def __len__(self) -> int:
        return len(self._entries)
