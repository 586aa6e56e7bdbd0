"""The replay store replicas share: a real Redis server, one atomic round trip per claim.

``claim`` runs one Lua script (EVALSHA; redis-py loads it again after a Redis restart): check
the store's epoch marker, then the ticket's revocation key, then ``SET NX PX`` on the key of
(ticket, sequence), expiring with the ticket. Redis runs a script atomically, so of any number
of replicas claiming the same (ticket, sequence) exactly one gets FRESH (RFC 4120 §3.2.3:
servers sharing a key share a replay cache).

Fail closed: any connection, timeout, script or reply error raises
``ReplayStoreUnavailableError`` (reason ``replay-store-unavailable``; bindings answer
UNAVAILABLE and the handler never runs). Timeouts are short (0.25 s) by default.

Data loss: a Redis restarted without its data would take a captured request as fresh. The
epoch marker (``<prefix>epoch``, no expiry) records when this dataset began; when a claim finds
it missing the script sets it to Redis' own time plus ``reset_skew``, and a claim whose
``issued_at`` predates the marker is REVOKED (its client re-binds). Run Redis with
``maxmemory-policy noeviction`` (evicted keys would be forgotten claims; with noeviction a full
Redis refuses writes, which fails closed here).

The key layout and scripts are written once (``RedisLayout``) for the sync and asyncio stores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rpcsec.sspi import ReplayStoreUnavailableError

from ._replay_store import ReplayVerdict, check_claim_arguments

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = [
    "CLAIM_SCRIPT",
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "AsyncRedisReplayStore",
    "RedisLayout",
    "RedisReplayStore",
]

DEFAULT_PREFIX = "rpcsec:replay:"
DEFAULT_TIMEOUT = 0.25
DEFAULT_RESET_SKEW = 5.0

CLAIM_SCRIPT = """
-- KEYS[1] epoch marker, KEYS[2] ticket revocation, KEYS[3] (ticket, sequence) claim
-- ARGV[1] ms until the ticket expires, ARGV[2] ticket issued_at in ms or -1,
-- ARGV[3] ms added to Redis' time when the marker is missing (clock skew of sealers)
local birth = redis.call('GET', KEYS[1])
if birth then
  birth = tonumber(birth)
else
  local t = redis.call('TIME')
  birth = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
  redis.call('SET', KEYS[1], string.format('%.0f', birth))
end
local issued = tonumber(ARGV[2])
if issued >= 0 and issued < birth then return 2 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
if redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[1]) then return 0 end
redis.call('PEXPIRE', KEYS[3], ARGV[1], 'GT')
return 1
"""

_VERDICTS = {0: ReplayVerdict.FRESH, 1: ReplayVerdict.REPLAY, 2: ReplayVerdict.REVOKED}


def _redis_module() -> Any:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - the extra is in [test]
        raise ImportError(
            "the Redis replay store needs the redis client: pip install 'rpcsec[redis]'"
        ) from exc
    return redis


class RedisLayout:
    """Keys, script arguments and reply decoding, without I/O (shared by sync and aio).

    Keys: ``<prefix>epoch``; per ticket ``<prefix>{<hex id>}:revoked`` and
    ``<prefix>{<hex id>}:<sequence>`` (the hash tag keeps one ticket's keys in one slot).
    """

    def __init__(self, prefix: str, clock: Callable[[], float], reset_skew: float) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("key prefix must be a non-empty string")
        if isinstance(reset_skew, bool) or not isinstance(reset_skew, int | float):
            raise ValueError("reset_skew must be a number of seconds")
        if not 0 <= reset_skew <= 3600:
            raise ValueError("reset_skew must be 0..3600 seconds")
        self.prefix = prefix
        self.clock = clock
        self.reset_skew_ms = int(reset_skew * 1000)
        self.epoch_key = f"{prefix}epoch"

    def ttl_ms(self, expires_at: float) -> int:
        """Milliseconds until ``expires_at`` (rounded up), 0 if it has passed."""
        return max(0, math.ceil((expires_at - self.clock()) * 1000))

    def claim_call(
        self, ticket_id: bytes, sequence: int, expires_at: float, issued_at: float | None
    ) -> tuple[list[str], list[int]] | None:
        """(keys, args) for CLAIM_SCRIPT, or None when the ticket expired (REVOKED, no trip)."""
        check_claim_arguments(ticket_id, sequence, expires_at, issued_at)
        ttl = self.ttl_ms(expires_at)
        if ttl <= 0:
            return None
        tag = f"{self.prefix}{{{ticket_id.hex()}}}"
        issued_ms = -1 if issued_at is None else max(0, math.floor(issued_at * 1000))
        keys = [self.epoch_key, f"{tag}:revoked", f"{tag}:{sequence}"]
        return keys, [ttl, issued_ms, self.reset_skew_ms]

    def revoke_call(
        self, ticket_id: bytes, expires_at: float, issued_at: float | None
    ) -> tuple[str, int] | None:
        """(key, ttl ms) for the revocation ``SET``, or None when the ticket already expired."""
        check_claim_arguments(ticket_id, 0, expires_at, issued_at)
        ttl = self.ttl_ms(expires_at)
        if ttl <= 0:
            return None
        return f"{self.prefix}{{{ticket_id.hex()}}}:revoked", ttl

    def init_marker_ms(self) -> int:
        """The epoch marker a new store sets if the dataset has none (``SET NX``): its own
        creation time, so tickets it seals after starting are claimable at once."""
        return math.floor(self.clock() * 1000)

    @staticmethod
    def verdict(reply: object) -> ReplayVerdict:
        """Decode the script's reply; anything unexpected fails closed."""
        if isinstance(reply, bool) or not isinstance(reply, int) or reply not in _VERDICTS:
            raise ReplayStoreUnavailableError("replay store gave an unexpected reply")
        return _VERDICTS[reply]


def _client_options(timeout: float) -> dict[str, Any]:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError("timeout must be a positive number of seconds")
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry_on_timeout": False,
        "retry": Retry(NoBackoff(), 0),  # a failure is reported at once: the binding decides
    }


def _unavailable(exc: BaseException) -> ReplayStoreUnavailableError:
    return ReplayStoreUnavailableError(f"replay store unavailable: {type(exc).__name__}")


class RedisReplayStore:
    """Replay store on a Redis server shared by the replicas (sync; ``AsyncRedisReplayStore``
    for asyncio). ``target`` is a ``redis://`` URL (timeouts from ``timeout``) or a
    ``redis.Redis`` client (its own timeouts). Thread-safe (redis-py pools connections)."""

    def __init__(
        self,
        target: str | redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        reset_skew: float = DEFAULT_RESET_SKEW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        module = _redis_module()
        self._layout = RedisLayout(prefix, clock, reset_skew)
        if isinstance(target, str):
            self._client = module.Redis.from_url(target, **_client_options(timeout))
            self._owned = True
        elif isinstance(target, module.Redis):
            self._client, self._owned = target, False
        else:
            raise TypeError("target must be a redis:// URL or a redis.Redis client")
        self._script = self._client.register_script(CLAIM_SCRIPT)
        self._marker_ms = self._layout.init_marker_ms()
        self._marker_set = False
        self._errors: tuple[type[BaseException], ...] = (module.RedisError, OSError)

    @property
    def client(self) -> redis.Redis:
        return self._client

    def claim(
        self,
        ticket_id: bytes,
        sequence: int,
        expires_at: float,
        *,
        issued_at: float | None = None,
    ) -> ReplayVerdict:
        """Check and record (ticket, sequence) in one atomic round trip (see module doc)."""
        call = self._layout.claim_call(ticket_id, sequence, expires_at, issued_at)
        if call is None:
            return ReplayVerdict.REVOKED
        keys, args = call
        try:
            self._ensure_marker()
            reply = self._script(keys=keys, args=args)
        except self._errors as exc:
            raise _unavailable(exc) from exc
        return self._layout.verdict(reply)

    def revoke(
        self, ticket_id: bytes, expires_at: float, *, issued_at: float | None = None
    ) -> None:
        """Refuse every later claim for ``ticket_id`` on every replica until it expires."""
        call = self._layout.revoke_call(ticket_id, expires_at, issued_at)
        if call is None:
            return
        key, ttl = call
        try:
            self._client.set(key, b"1", px=ttl)
        except self._errors as exc:
            raise _unavailable(exc) from exc

    def ping(self) -> None:
        """Raise ``ReplayStoreUnavailableError`` unless Redis answers (a readiness check)."""
        try:
            self._client.ping()
        except self._errors as exc:
            raise _unavailable(exc) from exc

    def close(self) -> None:
        if self._owned:
            self._client.close()

    def _ensure_marker(self) -> None:
        # Once only: if this first attempt fails, a missing marker is left to the script
        # (Redis' own time), never set later to this store's creation time.
        if not self._marker_set:
            self._marker_set = True
            self._client.set(self._layout.epoch_key, self._marker_ms, nx=True)

    def __enter__(self) -> RedisReplayStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncRedisReplayStore:
    """``RedisReplayStore`` for asyncio (``redis.asyncio``): same script, keys and rules."""

    def __init__(
        self,
        target: str | redis.asyncio.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        reset_skew: float = DEFAULT_RESET_SKEW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        module = _redis_module()
        import redis.asyncio as aioredis

        self._layout = RedisLayout(prefix, clock, reset_skew)
        if isinstance(target, str):
            self._client = aioredis.Redis.from_url(target, **_client_options(timeout))
            self._owned = True
        elif isinstance(target, aioredis.Redis):
            self._client, self._owned = target, False
        else:
            raise TypeError("target must be a redis:// URL or a redis.asyncio.Redis client")
        self._script = self._client.register_script(CLAIM_SCRIPT)
        self._marker_ms = self._layout.init_marker_ms()
        self._marker_set = False
        self._errors: tuple[type[BaseException], ...] = (module.RedisError, OSError)

    @property
    def client(self) -> redis.asyncio.Redis:
        return self._client

    async def claim(
        self,
        ticket_id: bytes,
        sequence: int,
        expires_at: float,
        *,
        issued_at: float | None = None,
    ) -> ReplayVerdict:
        call = self._layout.claim_call(ticket_id, sequence, expires_at, issued_at)
        if call is None:
            return ReplayVerdict.REVOKED
        keys, args = call
        try:
            await self._ensure_marker()
            reply = await self._script(keys=keys, args=args)
        except self._errors as exc:
            raise _unavailable(exc) from exc
        return self._layout.verdict(reply)

    async def revoke(
        self, ticket_id: bytes, expires_at: float, *, issued_at: float | None = None
    ) -> None:
        call = self._layout.revoke_call(ticket_id, expires_at, issued_at)
        if call is None:
            return
        key, ttl = call
        try:
            await self._client.set(key, b"1", px=ttl)
        except self._errors as exc:
            raise _unavailable(exc) from exc

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except self._errors as exc:
            raise _unavailable(exc) from exc

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

    async def _ensure_marker(self) -> None:
        # Once only: if this first attempt fails, a missing marker is left to the script
        # (Redis' own time), never set later to this store's creation time.
        if not self._marker_set:
            self._marker_set = True
            await self._client.set(self._layout.epoch_key, self._marker_ms, nx=True)

    async def __aenter__(self) -> AsyncRedisReplayStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
