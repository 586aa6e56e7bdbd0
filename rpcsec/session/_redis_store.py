"""The replay store replicas share: a real Redis server, one atomic round trip per claim.

``claim`` runs one Lua script (EVALSHA; loaded again after a Redis restart) that
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
Redis refuses writes, which fails closed here) and either without persistence or with
``appendonly yes`` + ``appendfsync always`` (an RDB snapshot restored after a crash brings
back an old marker with old windows). The store reads these settings before its first claim
and fails every claim closed on anything else (``verify_config``); ``check()`` raises. Not
covered: a failover to a Redis replica that missed the last writes (asynchronous
replication) keeps the marker too -- use one primary, or ``WAIT``-backed replication.

The key layout and scripts are written once (``RedisLayout``) for the sync and asyncio stores.

Cost (the claim is on every call of every replica): the EVALSHA request is pre-encoded RESP
(``ClaimEncoder``: only the ticket's keys, its TTL, ``issued_at`` and the sequence filled in)
and sent on a socket of the store's own (``_redis_socket``): one per claiming thread for the sync
store, at most ``max_connections`` asyncio protocols for the asyncio store; three system calls
per sync claim (a ``poll`` for anything stale, the send, the receive; timeouts in the kernel),
the reply parsed strictly in Python (never by a native parser), ``unix://`` sockets and
AUTH/SELECT supported. TLS (``rediss://``) and other connection kinds stay on redis-py's own
connections with the same pre-encoded request. Measured in ``benchmarks/session_store.py``
(docs/session.md): what is left is the round trip itself (loopback, Redis' ~8 us of script).
"""

from __future__ import annotations

import logging
import math
import os
import select
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rpcsec.sspi import DEFAULT_WINDOW, ReplayStoreUnavailableError

from ._redis_socket import (
    AsyncRespConnection,
    BoundedConnections,
    ThreadRespConnections,
    resp_connections,
)
from ._replay_store import ReplayVerdict, check_claim_arguments
from ._resp import BULK, ERROR, INTEGER, Reply, RespAddress, encode_command

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = [
    "CLAIM_SCRIPT",
    "ClaimEncoder",
    "ClaimReplies",
    "INIT_SCRIPT",
    "REVOKE_SCRIPT",
    "DEFAULT_MAX_CLOCK_SKEW",
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "AsyncRedisReplayStore",
    "RedisLayout",
    "RedisReplayStore",
]

_LOG = logging.getLogger("rpcsec.session")

DEFAULT_PREFIX = "rpcsec:replay:"
DEFAULT_TIMEOUT = 0.25
DEFAULT_MAX_CLOCK_SKEW = 1.0
"""Replicas' clocks agree with each other and with Redis to within this (NTP does far better).
After a Redis data loss, tickets issued within this much of the new marker are refused too."""
MAX_SCRIPT_SEQUENCE = (1 << 53) - 1
"""Lua numbers are doubles: larger sequence numbers are refused as replays (fail closed;
2**53 calls on one context is centuries of traffic)."""

CLAIM_SCRIPT = """
-- KEYS[1] epoch marker, KEYS[2] ticket revocation, KEYS[3] ticket window
-- ARGV[1] ms the keys live (ticket expiry + skew), ARGV[2] issued_at ms or -1,
-- ARGV[3] skew ms, ARGV[4] sequence (< 2^53), ARGV[5] window size (a multiple of 64)
-- Window string: bytes 0..15 the highest sequence accepted (decimal), then a ring of
-- window/64 + 1 blocks of 64 bits (RFC 6479); bit of s = s mod (64 * blocks).
local function extend(key, ttl, new)
  if new then
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
local new = top == ''  -- no window yet: it gets its expiry below, never left without one
if new then top = -1 else top = tonumber(top) end
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
  extend(KEYS[3], ttl, false)  -- a re-sealed ticket id with a later expiry keeps its window
  return 1
end
redis.call('SETBIT', KEYS[3], bit, 1)
extend(KEYS[3], ttl, new)
return 0
"""

REVOKE_SCRIPT = """
-- KEYS[1] ticket revocation, KEYS[2] ticket window; ARGV[1] ms the revocation lives.
-- Revoked: no claim will ever read the window again, so it is dropped in the same step.
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""

INIT_SCRIPT = """
-- KEYS[1] epoch marker; ARGV[1] the new store's creation time (ms, its own clock).
-- A new dataset begins at the earlier of that and Redis' time: a replica whose clock runs
-- ahead must not make every other replica's fresh tickets look older than the dataset.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], string.format('%.0f', math.min(now, tonumber(ARGV[1]))))
return 1
"""

_VERDICTS = {0: ReplayVerdict.FRESH, 1: ReplayVerdict.REPLAY, 2: ReplayVerdict.REVOKED}
_REPLY_VERDICTS = {Reply(INTEGER, b"%d" % n): verdict for n, verdict in _VERDICTS.items()}


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
    ) -> tuple[list[str], list[int]] | None:
        """(keys, args) for REVOKE_SCRIPT, or None when the ticket already expired."""
        check_claim_arguments(ticket_id, 0, expires_at, issued_at)
        ttl = self.ttl_ms(expires_at)
        if ttl <= 0:
            return None
        tag = self._tag(ticket_id)
        return [f"{tag}:revoked", f"{tag}:window"], [ttl + self.skew_ms]

    def init_marker_ms(self) -> int:
        """The epoch marker a new store sets if the dataset has none (INIT_SCRIPT): its own
        creation time (or Redis' time if earlier), so tickets sealed after it started are
        claimable at once."""
        return math.floor(self.clock() * 1000)

    CHECKED_SETTINGS = ("maxmemory-policy", "save", "appendonly", "appendfsync")

    @staticmethod
    def check_config(reply: object) -> None:
        """Judge ``CONFIG GET`` of ``CHECKED_SETTINGS``; raises ``ValueError`` (a deployment
        mistake) for a Redis that could forget claims while keeping its epoch marker:

        * ``maxmemory-policy`` other than ``noeviction`` may evict a window (every key here
          has a TTL, so even ``volatile-*``);
        * RDB snapshots without AOF (``save`` set, ``appendonly no``), or AOF not fsynced on
          every write (``appendfsync`` not ``always``): a crash restores an older dataset
          *with* the marker, so claims made since are silently forgotten.

        Safe: no persistence at all (a restart comes back empty: the marker is gone and every
        older ticket is refused), or ``appendonly yes`` with ``appendfsync always``. A Redis
        that refuses CONFIG (managed services) is logged, not refused."""
        settings: dict[str, str] = {}
        if isinstance(reply, dict):
            for key, value in reply.items():
                key = key.decode("ascii", "replace") if isinstance(key, bytes) else str(key)
                text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
                settings[key] = str(text)
        if not all(name in settings for name in RedisLayout.CHECKED_SETTINGS):
            _LOG.warning(
                "replay store: cannot read Redis' configuration; it must not evict keys "
                "(maxmemory-policy noeviction) nor restore old snapshots after a crash"
            )
            return
        policy = settings["maxmemory-policy"]
        if policy != "noeviction":
            raise ValueError(
                f"Redis maxmemory-policy is {policy!r}: evicting keys forgets claims, so replays"
                " could be accepted; set maxmemory-policy noeviction"
            )
        if settings["appendonly"] == "yes":
            if settings["appendfsync"] != "always":
                raise ValueError(
                    "Redis appendfsync is not 'always': a crash loses the last claims but keeps "
                    "the epoch marker, so those requests could be replayed"
                )
        elif settings["save"].strip():
            raise ValueError(
                "Redis takes RDB snapshots without AOF: a crash restores an older dataset with "
                "its epoch marker, forgetting later claims; use save '' (no persistence) or "
                "appendonly yes with appendfsync always"
            )

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


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string (the Redis protocol's request element)."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


class ClaimEncoder:
    """CLAIM_SCRIPT's EVALSHA request as RESP bytes, the constant parts encoded once (the
    command, the script's SHA1, the key count, the epoch key, the skew and the window), so a
    claim encodes only its two ticket keys and three numbers. Byte for byte what redis-py's
    ``pack_command`` sends for the same arguments (tested)."""

    def __init__(self, layout: RedisLayout, sha: str) -> None:
        self._head = b"*11\r\n" + b"".join(
            _bulk(part)
            for part in (b"EVALSHA", sha.encode("ascii"), b"3", layout.epoch_key.encode())
        )
        self._skew = _bulk(b"%d" % layout.skew_ms)
        self._window = _bulk(b"%d" % layout.window)

    def encode(self, keys: list[str], args: list[int]) -> bytes:
        """``keys``, ``args``: ``RedisLayout.claim_call``'s."""
        ttl, issued, _skew, sequence, _window = args
        return b"".join(
            (
                self._head,
                _bulk(keys[1].encode()),
                _bulk(keys[2].encode()),
                _bulk(b"%d" % ttl),
                _bulk(b"%d" % issued),
                self._skew,
                _bulk(b"%d" % sequence),
                self._window,
            )
        )


class _ThreadConnections:
    """One redis-py ``Connection`` per thread, made like the client's pool makes them (same
    class and settings: TLS, auth, timeouts, no retries). A claim then needs no pool checkout
    and no lock; the number of sockets is the number of threads that claim (a gRPC server's
    bounded pool). ``None`` from ``of`` when the client's pool cannot say how it connects."""

    def __init__(self, connection_class: Any, kwargs: dict[str, Any]) -> None:
        self._class = connection_class
        self._kwargs = kwargs
        self._local = threading.local()
        self._lock = threading.Lock()
        self._every: weakref.WeakSet[Any] = weakref.WeakSet()

    @classmethod
    def of(cls, client: Any) -> _ThreadConnections | None:
        pool = getattr(client, "connection_pool", None)
        connection_class = getattr(pool, "connection_class", None)
        kwargs = getattr(pool, "connection_kwargs", None)
        if connection_class is None or not isinstance(kwargs, dict):
            return None
        return cls(connection_class, dict(kwargs))

    def get(self) -> Any:
        local = self._local
        connection = getattr(local, "connection", None)
        if connection is None or local.pid != os.getpid():
            # None yet, or inherited through fork(): the parent's socket is left alone (never
            # shared: two processes reading one socket would take each other's replies).
            connection = self._class(**self._kwargs)
            local.connection, local.pid = connection, os.getpid()
            with self._lock:
                self._every.add(connection)
        return connection

    def close(self) -> None:
        with self._lock:
            every = list(self._every)
        for connection in every:
            connection.disconnect()


def _redis_py_connections(
    client: Any, limit: int, timeout: float
) -> BoundedConnections[Any] | None:
    """The asyncio store's claim connections where its own sockets cannot go (TLS, custom
    connection classes): ``redis.asyncio`` connections made like the client's pool makes them,
    taken without the pool's bookkeeping, disconnected when an exchange fails or is cancelled."""
    pool = getattr(client, "connection_pool", None)
    connection_class = getattr(pool, "connection_class", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if connection_class is None or not isinstance(kwargs, dict):
        return None
    kwargs = dict(kwargs)
    return BoundedConnections(
        lambda: connection_class(**kwargs),
        limit,
        timeout,
        discard=lambda connection: connection.disconnect(nowait=True),
    )


def _resp_address(client: Any, timeout: float) -> tuple[RespAddress | None, float]:
    """Where the store's own claim sockets (``_redis_socket``) connect, when the client
    connects over plain TCP or a unix socket (``None``: redis-py's connections, e.g. for TLS),
    and their timeout: the client's socket timeout, else the store's (never none at all)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict) or not hasattr(select, "poll"):  # (no poll: Windows)
        return None, timeout
    address = RespAddress.from_redis_py(getattr(pool, "connection_class", None), kwargs)
    socket_timeout = kwargs.get("socket_timeout")
    if isinstance(socket_timeout, int | float) and not isinstance(socket_timeout, bool):
        timeout = float(socket_timeout) if socket_timeout > 0 else timeout
    return address, timeout


class ClaimReplies:
    """What the replies to a claim mean, without I/O (the sync and asyncio shells share it):
    the script's integer is the verdict; NOSCRIPT (a Redis that restarted and lost its
    scripts) means the claim did not run, so the shell sends ``load_request`` (checked by
    ``check_loaded``) and the claim once more (``final``). Anything else fails closed."""

    def __init__(self, sha: str) -> None:
        self.load_request = encode_command(b"SCRIPT", b"LOAD", CLAIM_SCRIPT.encode())
        self._loaded = Reply(BULK, sha.encode("ascii"))

    def verdict(self, reply: Reply) -> ReplayVerdict | None:
        """The verdict, or ``None`` for NOSCRIPT."""
        verdict = _REPLY_VERDICTS.get(reply)
        if verdict is not None:
            return verdict
        if reply.kind == ERROR and reply.value.startswith(b"NOSCRIPT"):
            return None
        _LOG.warning("replay store: unexpected answer to a claim: %.200r", reply.value)
        raise ReplayStoreUnavailableError("replay store gave an unexpected reply")

    def check_loaded(self, reply: Reply) -> None:
        if reply != self._loaded:
            raise ReplayStoreUnavailableError("replay store loaded another script")

    def final(self, reply: Reply) -> ReplayVerdict:
        """The verdict of the claim sent again after loading the script."""
        verdict = self.verdict(reply)
        if verdict is None:
            raise ReplayStoreUnavailableError("replay store lost the script it just loaded")
        return verdict


def _unavailable(exc: BaseException) -> ReplayStoreUnavailableError:
    return ReplayStoreUnavailableError(f"replay store unavailable: {type(exc).__name__}")


class _RedisStoreBase:
    """What the sync and asyncio stores share: the layout, the client, the three scripts
    (redis-py runs them by EVALSHA and loads them again after a Redis restart), and the
    once-only epoch-marker initialisation. The subclasses are the I/O shells."""

    def __init__(
        self,
        target: Any,
        client_module: Any,
        *,
        prefix: str,
        timeout: float,
        max_clock_skew: float,
        window: int,
        max_connections: int,
        verify_config: bool,
        clock: Callable[[], float],
    ) -> None:
        self._layout = RedisLayout(prefix, clock, max_clock_skew, window)
        self._config_unreadable: tuple[type[BaseException], ...] = (
            _redis_module().exceptions.ResponseError,  # CONFIG disabled or not permitted
        )
        if isinstance(target, str):
            self._client = _pooled_client(client_module, target, timeout, max_connections)
            self._owned = True
        elif isinstance(target, client_module.Redis):
            self._client, self._owned = target, False
        else:
            raise TypeError(f"target must be a redis:// URL or a {client_module.__name__}.Redis")
        self._claim_script = self._client.register_script(CLAIM_SCRIPT)
        self._init_script = self._client.register_script(INIT_SCRIPT)
        self._revoke_script = self._client.register_script(REVOKE_SCRIPT)
        self._marker_ms = self._layout.init_marker_ms()
        self._marker_pending = True
        self._verify_pending = bool(verify_config)
        self._config_refusal: str | None = None

    def _judge_config(self, reply: object) -> None:
        """Record the verdict on Redis' configuration (``RedisLayout.check_config``): an
        unsafe one makes every later claim fail closed, with the reason in the log."""
        self._verify_pending = False
        try:
            RedisLayout.check_config(reply)
        except ValueError as exc:
            self._config_refusal = str(exc)
            _LOG.error("replay store refuses to use this Redis: %s", exc)

    def _refuse_if_unsafe(self) -> None:
        if self._config_refusal is not None:
            raise ReplayStoreUnavailableError("replay store: Redis could forget claims")

    @property
    def _pending(self) -> bool:
        """Work left for the first claim (the configuration judgement, the epoch marker)."""
        return self._verify_pending or self._marker_pending

    def _take_marker_init(self) -> bool:
        """True once: the first claim sets the dataset's marker if it has none. If that first
        attempt fails, a missing marker is left to the claim script (Redis' own time plus the
        skew), never set later to this store's (by then old) creation time."""
        pending, self._marker_pending = self._marker_pending, False
        return pending


class RedisReplayStore(_RedisStoreBase):
    """Replay store on a Redis server shared by the replicas (sync; ``AsyncRedisReplayStore``
    for asyncio). Thread-safe (each claiming thread has its own socket).

    ``target``: a ``redis://`` or ``unix:///path`` URL (socket, connect and pool-wait
    timeouts ``timeout``, at most ``max_connections`` sockets for everything but claims, no
    retries: a failure is reported at once) or a ``redis.Redis`` client (its own settings;
    claims use its socket timeout, or ``timeout`` if it has none). ``prefix`` separates
    services sharing a Redis; every replica of one service uses the same prefix and
    ``window``. ``max_clock_skew``: how far replicas' clocks may differ from each other and
    from Redis (keys outlive their ticket by this much; after a data loss, tickets issued
    within this much of the new marker are refused). ``verify_config``: before its first
    claim the store reads Redis' eviction and persistence settings
    (``RedisLayout.check_config``) and, if they could forget claims, fails every claim closed
    (the reason is logged); a Redis that refuses CONFIG is used with a warning. ``check()``
    runs the same judgement and raises."""

    def __init__(
        self,
        target: str | redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
        window: int = DEFAULT_WINDOW,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        verify_config: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            target,
            _redis_module(),
            prefix=prefix,
            timeout=timeout,
            max_clock_skew=max_clock_skew,
            window=window,
            max_connections=max_connections,
            verify_config=verify_config,
            clock=clock,
        )
        self._encoder = ClaimEncoder(self._layout, self._claim_script.sha)
        address, timeout = _resp_address(self._client, timeout)
        self._resp = None if address is None else ThreadRespConnections(address, timeout)
        self._connections = None if self._resp else _ThreadConnections.of(self._client)
        self._replies = ClaimReplies(self._claim_script.sha)
        self._redis_errors = _redis_module().exceptions

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
        """Check and record (ticket, sequence) in one atomic round trip (see module doc).

        Raises:
            ReplayStoreUnavailableError: Redis did not answer (any error, timeout, odd reply).
            TypeError, ValueError: caller mistakes, before any I/O.
        """
        call = self._layout.claim_call(ticket_id, sequence, expires_at, issued_at)
        if isinstance(call, ReplayVerdict):
            return call
        keys, args = call
        if self._pending:
            self._prepare()
        if self._config_refusal is not None:
            raise ReplayStoreUnavailableError("replay store: Redis could forget claims")
        if self._resp is not None:
            return self._claim_on_resp(self._encoder.encode(keys, args))
        if self._connections is None:
            try:
                reply = self._claim_script(keys=keys, args=args)
            except Exception as exc:  # fail closed on anything the client raises
                raise _unavailable(exc) from exc
        else:
            reply = self._claim_on_own_connection(self._encoder.encode(keys, args))
        return self._layout.verdict(reply)

    def _claim_on_resp(self, request: bytes) -> ReplayVerdict:
        """Send a pre-encoded claim on this thread's own socket (``_redis_socket``: three system
        calls, the reply parsed strictly) and return its verdict (``ClaimReplies``). Any failure
        closes the connection (so a late reply is never read as a later claim's answer) and
        raises ``ReplayStoreUnavailableError``."""
        assert self._resp is not None
        connection = self._resp.get()
        replies = self._replies
        try:
            verdict = replies.verdict(connection.exchange(request))
            if verdict is None:  # NOSCRIPT: the claim did not run
                replies.check_loaded(connection.exchange(replies.load_request))
                verdict = replies.final(connection.exchange(request))
            return verdict
        except ReplayStoreUnavailableError:
            connection.close()
            raise
        except Exception as exc:  # fail closed on anything: OSError, a protocol error
            connection.close()
            raise _unavailable(exc) from exc

    def _claim_on_own_connection(self, request: bytes) -> object:
        """Send a pre-encoded claim on this thread's connection and read its reply.

        Any failure disconnects first, so a reply that arrives late (after a timeout) is never
        read as the answer to a later claim: that stale FRESH would let a replay through.
        A connection with unread bytes, or one Redis closed, is replaced before sending."""
        assert self._connections is not None
        connection = self._connections.get()
        errors = self._redis_errors
        try:
            try:
                if connection.can_read(timeout=0):
                    connection.disconnect()  # stray bytes: never take them for our reply
            except (errors.ConnectionError, OSError):
                connection.disconnect()  # closed by Redis (a restart): connect afresh
            connection.send_packed_command([request], check_health=False)
            try:
                return connection.read_response()
            except errors.NoScriptError:
                # Redis restarted and lost its scripts; NOSCRIPT means this claim did not run.
                connection.send_command("SCRIPT", "LOAD", CLAIM_SCRIPT, check_health=False)
                loaded = connection.read_response()
                if isinstance(loaded, bytes):
                    loaded = loaded.decode("ascii", "replace")
                if loaded != self._claim_script.sha:
                    raise ReplayStoreUnavailableError(
                        "replay store loaded another script"
                    ) from None
                connection.send_packed_command([request], check_health=False)
                return connection.read_response()
        except Exception as exc:  # fail closed on anything the client raises
            connection.disconnect()
            raise _unavailable(exc) from exc

    def _prepare(self) -> None:
        """Once: judge Redis' configuration, set the epoch marker. Then refuse if unsafe."""
        try:
            if self._verify_pending:
                try:
                    reply = self._client.config_get(*RedisLayout.CHECKED_SETTINGS)
                except self._config_unreadable:
                    reply = None
                self._judge_config(reply)
            if self._take_marker_init():
                self._init_script(keys=[self._layout.epoch_key], args=[self._marker_ms])
        except Exception as exc:
            raise _unavailable(exc) from exc
        self._refuse_if_unsafe()

    def revoke(
        self, ticket_id: bytes, expires_at: float, *, issued_at: float | None = None
    ) -> None:
        """Refuse every later claim for ``ticket_id`` on every replica until it expires."""
        call = self._layout.revoke_call(ticket_id, expires_at, issued_at)
        if call is None:
            return
        keys, args = call
        self._prepare()
        try:
            self._revoke_script(keys=keys, args=args)
        except Exception as exc:
            raise _unavailable(exc) from exc

    def ping(self) -> None:
        """Raise ``ReplayStoreUnavailableError`` unless Redis answers (a readiness check)."""
        try:
            self._client.ping()
        except Exception as exc:
            raise _unavailable(exc) from exc

    def check(self) -> None:
        """A start-up check: Redis answers and cannot forget claims (``check_config``).

        Raises:
            ReplayStoreUnavailableError: Redis did not answer.
            ValueError: its eviction policy or persistence could forget claims.
        """
        self.ping()
        try:
            reply = self._client.config_get(*RedisLayout.CHECKED_SETTINGS)
        except Exception:  # CONFIG is often disabled on managed Redis: say so, go on
            reply = None
        self._layout.check_config(reply)

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
        if self._connections is not None:
            self._connections.close()
        if self._owned:
            self._client.close()

    def __enter__(self) -> RedisReplayStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncRedisReplayStore(_RedisStoreBase):
    """``RedisReplayStore`` for asyncio (``redis.asyncio``): same scripts, keys and rules.
    Use one per event loop."""

    def __init__(
        self,
        target: str | redis.asyncio.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
        window: int = DEFAULT_WINDOW,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        verify_config: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _redis_module()
        import redis.asyncio as aioredis

        super().__init__(
            target,
            aioredis,
            prefix=prefix,
            timeout=timeout,
            max_clock_skew=max_clock_skew,
            window=window,
            max_connections=max_connections,
            verify_config=verify_config,
            clock=clock,
        )
        self._encoder = ClaimEncoder(self._layout, self._claim_script.sha)
        address, timeout = _resp_address(self._client, timeout)
        self._resp = (
            None if address is None else resp_connections(address, timeout, max_connections)
        )
        self._connections = (
            None if self._resp else _redis_py_connections(self._client, max_connections, timeout)
        )
        self._replies = ClaimReplies(self._claim_script.sha)
        self._redis_errors = _redis_module().exceptions

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
        """As ``RedisReplayStore.claim``."""
        call = self._layout.claim_call(ticket_id, sequence, expires_at, issued_at)
        if isinstance(call, ReplayVerdict):
            return call
        keys, args = call
        if self._pending:
            await self._prepare()
        if self._config_refusal is not None:
            raise ReplayStoreUnavailableError("replay store: Redis could forget claims")
        if self._resp is not None:
            request = self._encoder.encode(keys, args)
            try:
                return await self._resp.call(lambda c: self._claim_on_resp(c, request))
            except ReplayStoreUnavailableError:
                raise
            except Exception as exc:  # fail closed: OSError, a protocol error, a timeout
                raise _unavailable(exc) from exc
        try:
            if self._connections is None:
                reply = await self._claim_script(keys=keys, args=args)
            else:
                request = self._encoder.encode(keys, args)
                reply = await self._connections.call(lambda c: self._exchange(c, request))
        except Exception as exc:  # fail closed on anything the client raises
            raise _unavailable(exc) from exc
        return self._layout.verdict(reply)

    async def _claim_on_resp(
        self, connection: AsyncRespConnection, request: bytes
    ) -> ReplayVerdict:
        """As ``RedisReplayStore._claim_on_resp``, on one asyncio connection (which closes
        itself on an I/O error, a timeout or a cancellation)."""
        replies = self._replies
        try:
            verdict = replies.verdict(await connection.exchange(request))
            if verdict is None:
                replies.check_loaded(await connection.exchange(replies.load_request))
                verdict = replies.final(await connection.exchange(request))
            return verdict
        except ReplayStoreUnavailableError:
            connection.close()
            raise

    async def _exchange(self, connection: Any, request: bytes) -> object:
        """As ``RedisReplayStore._claim_on_own_connection``, on one asyncio connection."""
        errors = self._redis_errors
        if connection.is_connected:
            try:
                # can_read (redis-py 8) / can_read_destructive (earlier): bytes or EOF waiting
                can_read = getattr(connection, "can_read", None) or connection.can_read_destructive
                if await can_read():
                    await connection.disconnect(nowait=True)  # stray bytes: never ours
            except (errors.ConnectionError, OSError):
                await connection.disconnect(nowait=True)  # closed by Redis: connect afresh
        await connection.send_packed_command([request], check_health=False)
        try:
            return await connection.read_response()
        except errors.NoScriptError:
            await connection.send_command("SCRIPT", "LOAD", CLAIM_SCRIPT, check_health=False)
            loaded = await connection.read_response()
            if isinstance(loaded, bytes):
                loaded = loaded.decode("ascii", "replace")
            if loaded != self._claim_script.sha:
                raise ReplayStoreUnavailableError("replay store loaded another script") from None
            await connection.send_packed_command([request], check_health=False)
            return await connection.read_response()

    async def _prepare(self) -> None:
        try:
            if self._verify_pending:
                try:
                    reply = await self._client.config_get(*RedisLayout.CHECKED_SETTINGS)
                except self._config_unreadable:
                    reply = None
                self._judge_config(reply)
            if self._take_marker_init():
                await self._init_script(keys=[self._layout.epoch_key], args=[self._marker_ms])
        except Exception as exc:
            raise _unavailable(exc) from exc
        self._refuse_if_unsafe()

    async def revoke(
        self, ticket_id: bytes, expires_at: float, *, issued_at: float | None = None
    ) -> None:
        call = self._layout.revoke_call(ticket_id, expires_at, issued_at)
        if call is None:
            return
        keys, args = call
        await self._prepare()
        try:
            await self._revoke_script(keys=keys, args=args)
        except Exception as exc:
            raise _unavailable(exc) from exc

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except Exception as exc:
            raise _unavailable(exc) from exc

    async def check(self) -> None:
        """As ``RedisReplayStore.check``."""
        await self.ping()
        try:
            reply = await self._client.config_get(*RedisLayout.CHECKED_SETTINGS)
        except Exception:
            reply = None
        self._layout.check_config(reply)

    async def aclose(self) -> None:
        if self._resp is not None:
            for connection in self._resp.drain():
                connection.close()
        if self._connections is not None:
            for connection in self._connections.drain():
                await connection.disconnect(nowait=True)
        if self._owned:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncRedisReplayStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
