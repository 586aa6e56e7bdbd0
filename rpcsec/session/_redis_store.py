"""The replay store replicas share: a real Redis server, one atomic round trip per claim.

``claim`` runs one Lua script (EVALSHA; redis-py loads it again after a Redis restart) that
checks the store's epoch marker, then the ticket's revocation key, then the ticket's sliding
window: the RFC 4303 §3.4.3 anti-replay window in the RFC 6479 ring-of-64-bit-blocks layout,
the same window as the core's ``ReplayWindow`` and ``MemoryReplayStore`` (so a verdict means
the same in one process and across replicas). Redis runs a script atomically, so of any
number of replicas claiming the same (ticket, sequence) exactly one gets FRESH (RFC 4120
§3.2.3: servers sharing a key share a replay cache).

Why a window and not one ``SET NX`` key per (ticket, sequence): such keys live as long as the
ticket (up to days), one per call -- a context making 1 000 calls/s would hold 3.6 million
keys per hour. The window is one string per ticket (a 16-byte top plus ``window / 8 + 8``
bytes of bits, about 2 KiB by default) expiring with the ticket plus ``max_clock_skew``; a
window slide clears at most two byte ranges (``SETRANGE``), so a peer jumping sequence
numbers costs O(1) commands.

Fail closed: any connection, timeout, script or reply error raises
``ReplayStoreUnavailableError`` (reason ``replay-store-unavailable``; bindings answer
UNAVAILABLE and the handler never runs). Timeouts are short (0.25 s) by default.

Data loss: a Redis restarted without its data would take a captured request as fresh. The
epoch marker (``<prefix>epoch``, no expiry) records when this dataset began; when a claim finds
it missing the script sets it to Redis' own time plus ``max_clock_skew``, and a claim whose
``issued_at`` predates the marker is REVOKED (its client re-binds). Run Redis with
``maxmemory-policy noeviction`` (evicted keys would be forgotten claims; with noeviction a full
Redis refuses writes, which fails closed here) and without partial persistence (an RDB
snapshot restored after a crash brings back an old marker with old windows).

The key layout and scripts are written once (``RedisLayout``) for the sync and asyncio stores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rpcsec.sspi import DEFAULT_WINDOW, ReplayStoreUnavailableError

from ._replay_store import ReplayVerdict, check_claim_arguments

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = [
    "CLAIM_SCRIPT",
    "DEFAULT_MAX_CLOCK_SKEW",
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "AsyncRedisReplayStore",
    "RedisLayout",
    "RedisReplayStore",
]

DEFAULT_PREFIX = "rpcsec:replay:"
DEFAULT_TIMEOUT = 0.25
DEFAULT_MAX_CLOCK_SKEW = 5.0
MAX_SCRIPT_SEQUENCE = (1 << 53) - 1
"""Lua numbers are doubles: larger sequence numbers are refused as replays (fail closed;
2**53 calls on one context is centuries of traffic)."""

CLAIM_SCRIPT = """
-- KEYS[1] epoch marker, KEYS[2] ticket revocation, KEYS[3] ticket window
-- ARGV[1] ms the keys live (ticket expiry + skew), ARGV[2] issued_at ms or -1,
-- ARGV[3] skew ms, ARGV[4] sequence (< 2^53), ARGV[5] window size (a multiple of 64)
-- Window string: bytes 0..15 the highest sequence accepted (decimal), then a ring of
-- window/64 + 1 blocks of 64 bits (RFC 6479); bit of s = s mod (64 * blocks).
local function extend(key, ttl)
  if redis.call('PTTL', key) < 0 then
    redis.call('PEXPIRE', key, ttl)
  else
    redis.call('PEXPIRE', key, ttl, 'GT')
  end
end
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
local ttl = ARGV[1]
local seq = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local nblocks = window / 64 + 1
local bit = 128 + seq % (nblocks * 64)
local top = redis.call('GETRANGE', KEYS[3], 0, 15)
if top == '' then top = -1 else top = tonumber(top) end
if seq > top then
  local new_block = math.floor(seq / 64)
  local old_block = -1
  if top >= 0 then old_block = math.floor(top / 64) end
  if new_block ~= old_block then
    local start = math.max(old_block + 1, new_block - nblocks + 1)
    local count = new_block - start + 1
    local first = start % nblocks
    local head = math.min(count, nblocks - first)
    redis.call('SETRANGE', KEYS[3], 16 + first * 8, string.rep('\0', head * 8))
    if count > head then
      redis.call('SETRANGE', KEYS[3], 16, string.rep('\0', (count - head) * 8))
    end
  end
  redis.call('SETRANGE', KEYS[3], 0, string.format('%016.0f', seq))
elseif top - seq >= window or redis.call('GETBIT', KEYS[3], bit) == 1 then
  extend(KEYS[3], ttl)  -- a re-sealed ticket id with a later expiry keeps its window
  return 1
end
redis.call('SETBIT', KEYS[3], bit, 1)
extend(KEYS[3], ttl)
return 0
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

    Keys: ``<prefix>epoch``; per ticket ``<prefix>{<hex id>}:window`` and
    ``<prefix>{<hex id>}:revoked`` (the hash tag keeps one ticket's keys in one slot).
    """

    def __init__(
        self,
        prefix: str,
        clock: Callable[[], float],
        max_clock_skew: float,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("key prefix must be a non-empty string")
        if isinstance(max_clock_skew, bool) or not isinstance(max_clock_skew, int | float):
            raise ValueError("max_clock_skew must be a number of seconds")
        if not 0 <= max_clock_skew <= 3600:
            raise ValueError("max_clock_skew must be 0..3600 seconds")
        if isinstance(window, bool) or not isinstance(window, int) or window <= 0 or window % 64:
            raise ValueError("replay window size must be a positive multiple of 64")
        self.prefix = prefix
        self.clock = clock
        self.skew_ms = int(max_clock_skew * 1000)
        self.window = window
        self.epoch_key = f"{prefix}epoch"

    def _tag(self, ticket_id: bytes) -> str:
        return f"{self.prefix}{{{ticket_id.hex()}}}"

    def ttl_ms(self, expires_at: float) -> int:
        """Milliseconds until ``expires_at`` (rounded up), 0 if it has passed."""
        return max(0, math.ceil((expires_at - self.clock()) * 1000))

    def claim_call(
        self, ticket_id: bytes, sequence: int, expires_at: float, issued_at: float | None
    ) -> tuple[list[str], list[int]] | ReplayVerdict:
        """(keys, args) for CLAIM_SCRIPT, or the verdict when it needs no round trip: REVOKED
        for an expired ticket, REPLAY for a sequence number Lua cannot represent exactly."""
        check_claim_arguments(ticket_id, sequence, expires_at, issued_at)
        ttl = self.ttl_ms(expires_at)
        if ttl <= 0:
            return ReplayVerdict.REVOKED
        if sequence > MAX_SCRIPT_SEQUENCE:
            return ReplayVerdict.REPLAY
        tag = self._tag(ticket_id)
        issued_ms = -1 if issued_at is None else max(0, math.floor(issued_at * 1000))
        keys = [self.epoch_key, f"{tag}:revoked", f"{tag}:window"]
        return keys, [ttl + self.skew_ms, issued_ms, self.skew_ms, sequence, self.window]

    def revoke_call(
        self, ticket_id: bytes, expires_at: float, issued_at: float | None
    ) -> tuple[str, int] | None:
        """(key, ms) for the revocation ``SET``, or None when the ticket already expired."""
        check_claim_arguments(ticket_id, 0, expires_at, issued_at)
        ttl = self.ttl_ms(expires_at)
        if ttl <= 0:
            return None
        return f"{self._tag(ticket_id)}:revoked", ttl + self.skew_ms

    def init_marker_ms(self) -> int:
        """The epoch marker a new store sets if the dataset has none (``SET NX``): its own
        creation time, so tickets sealed after it started are claimable at once."""
        return math.floor(self.clock() * 1000)

    @staticmethod
    def verdict(reply: object) -> ReplayVerdict:
        """Decode the script's reply; anything unexpected fails closed."""
        if isinstance(reply, bool) or not isinstance(reply, int) or reply not in _VERDICTS:
            raise ReplayStoreUnavailableError("replay store gave an unexpected reply")
        return _VERDICTS[reply]


DEFAULT_MAX_CONNECTIONS = 32


def _pooled_client(module: Any, url: str, timeout: float, max_connections: int) -> Any:
    """A client on a bounded pool: a burst of concurrent claims queues for one of
    ``max_connections`` connections (waiting at most ``timeout``) instead of opening hundreds
    of sockets at once, each racing its connect timeout."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError("timeout must be a positive number of seconds")
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise ValueError("max_connections must be a positive integer")
    if max_connections < 1:
        raise ValueError("max_connections must be a positive integer")
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pool = module.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 0),  # a failure is reported at once: the binding decides
    )
    return module.Redis.from_pool(pool)


def _unavailable(exc: BaseException) -> ReplayStoreUnavailableError:
    return ReplayStoreUnavailableError(f"replay store unavailable: {type(exc).__name__}")


class RedisReplayStore:
    """Replay store on a Redis server shared by the replicas (sync; ``AsyncRedisReplayStore``
    for asyncio). Thread-safe (redis-py pools connections).

    ``target``: a ``redis://`` URL (socket, connect and pool-wait timeouts ``timeout``, at
    most ``max_connections`` sockets, no retries: a failure is reported at once) or a
    ``redis.Redis`` client (its own settings). ``prefix``
    separates services sharing a Redis; every replica of one service uses the same prefix
    and ``window``. ``max_clock_skew``: how far replicas' clocks may differ from each other
    and from Redis (keys outlive their ticket by this much; after a data loss, tickets issued
    within this much of the new marker are refused)."""

    def __init__(
        self,
        target: str | redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
        window: int = DEFAULT_WINDOW,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        module = _redis_module()
        self._layout = RedisLayout(prefix, clock, max_clock_skew, window)
        if isinstance(target, str):
            self._client = _pooled_client(module, target, timeout, max_connections)
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
        if isinstance(call, ReplayVerdict):
            return call
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
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
        window: int = DEFAULT_WINDOW,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        module = _redis_module()
        import redis.asyncio as aioredis

        self._layout = RedisLayout(prefix, clock, max_clock_skew, window)
        if isinstance(target, str):
            self._client = _pooled_client(aioredis, target, timeout, max_connections)
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
        if isinstance(call, ReplayVerdict):
            return call
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
