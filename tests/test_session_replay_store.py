"""Replay stores: in memory (one process) and on a real Redis server (replicas).

The security property is one sentence: a (ticket, sequence) accepted once is never FRESH
again, on any replica, whatever fails -- store full, store unreachable, store restarted
empty. Redis tests run a real ``redis-server`` (tests/helpers/redis_server.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.session import (
    AsyncMemoryReplayStore,
    AsyncRedisReplayStore,
    AsyncReplayStore,
    MemoryReplayStore,
    RedisReplayStore,
    ReplayStore,
    ReplayStoreUnavailableError,
    ReplayVerdict,
)
from rpcsec.session._redis_store import RedisLayout
from rpcsec.session._replay_store import check_claim_arguments
from rpcsec.sspi import SecStatus, SecurityError, error_for_status

FRESH, REPLAY, REVOKED = ReplayVerdict.FRESH, ReplayVerdict.REPLAY, ReplayVerdict.REVOKED
NOW = 1_800_000_000.0
T = 2.0  # timeouts for tests not about timeouts: the CI machine is shared and can be slow


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _tid() -> bytes:
    return os.urandom(16)


def _poll(predicate, timeout: float = 10.0) -> None:
    """Wait for a condition with a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.01)


# -- the typed error -------------------------------------------------------------------------


def test_unavailable_error_is_a_typed_security_error_with_its_reason() -> None:
    error = ReplayStoreUnavailableError()
    assert isinstance(error, SecurityError)
    assert error.reason == "replay-store-unavailable"
    assert error.status is SecStatus.REPLAY_STORE_UNAVAILABLE
    assert isinstance(error_for_status("replay-store-unavailable"), ReplayStoreUnavailableError)


# -- memory store ----------------------------------------------------------------------------


def test_memory_store_fresh_once_then_replay() -> None:
    store = MemoryReplayStore(clock=Clock())
    assert isinstance(store, ReplayStore)
    ticket, other = _tid(), _tid()
    assert store.claim(ticket, 7, NOW + 60) is FRESH
    assert store.claim(ticket, 7, NOW + 60) is REPLAY
    assert store.claim(ticket, 6, NOW + 60) is FRESH  # out of order inside the window
    assert store.claim(ticket, 8, NOW + 60) is FRESH
    assert store.claim(other, 7, NOW + 60) is FRESH  # windows are per ticket


def test_memory_store_refuses_numbers_older_than_the_window() -> None:
    store = MemoryReplayStore(window=64, clock=Clock())
    ticket = _tid()
    assert store.claim(ticket, 1000, NOW + 60) is FRESH
    assert store.claim(ticket, 1000 - 64, NOW + 60) is REPLAY  # fell out: cannot tell
    assert store.claim(ticket, 1000 - 63, NOW + 60) is FRESH


def test_memory_store_revoke_and_expiry() -> None:
    clock = Clock()
    store = MemoryReplayStore(clock=clock)
    ticket, unseen = _tid(), _tid()
    assert store.claim(ticket, 1, NOW + 10) is FRESH
    store.revoke(ticket, NOW + 10)
    assert store.claim(ticket, 2, NOW + 10) is REVOKED
    store.revoke(unseen, NOW + 10)  # revoked before its first call
    assert store.claim(unseen, 1, NOW + 10) is REVOKED
    assert store.claim(_tid(), 1, NOW) is REVOKED  # expired tickets are never fresh
    live = _tid()
    assert store.claim(live, 1, NOW + 100) is FRESH
    clock.now = NOW + 10
    store.claim(live, 2, NOW + 100)  # any call purges what expired
    assert len(store) == 1 and store.revoked_count == 0
    assert store.claim(ticket, 3, NOW + 10) is REVOKED  # expired now, still not fresh


def test_memory_store_is_bounded_and_fails_closed_on_what_it_forgot() -> None:
    clock = Clock(NOW - 10)
    store = MemoryReplayStore(max_tickets=2, clock=clock)
    clock.now = NOW
    first, second, third = _tid(), _tid(), _tid()
    assert store.claim(first, 1, NOW + 60, issued_at=NOW - 3) is FRESH
    assert store.claim(second, 1, NOW + 60, issued_at=NOW - 2) is FRESH
    assert store.claim(third, 1, NOW + 60, issued_at=NOW - 1) is FRESH  # evicts `first`
    assert len(store) == 2
    # The forgotten ticket is never given a fresh window: not its replay, not a new number.
    assert store.claim(first, 1, NOW + 60, issued_at=NOW - 3) is REVOKED
    assert store.claim(first, 2, NOW + 60, issued_at=NOW - 3) is REVOKED
    assert store.claim(first, 2, NOW + 60) is REVOKED  # even claimed without issued_at
    # Tickets issued later still work, and the ones kept keep their windows.
    assert store.claim(_tid(), 1, NOW + 60, issued_at=NOW) is FRESH
    assert store.claim(third, 1, NOW + 60, issued_at=NOW - 1) is REPLAY


def test_memory_store_forgetting_without_issued_at_fails_closed_by_expiry() -> None:
    store = MemoryReplayStore(max_tickets=1, clock=Clock())
    old, new = _tid(), _tid()
    assert store.claim(old, 1, NOW + 60) is FRESH
    assert store.claim(new, 1, NOW + 61) is FRESH  # evicts `old`
    assert store.claim(old, 1, NOW + 60) is REVOKED
    assert store.claim(old, 1, NOW + 60, issued_at=NOW) is REVOKED


def test_memory_store_bounds_revocations_and_fails_closed() -> None:
    store = MemoryReplayStore(max_revoked=2, clock=Clock(NOW - 10))
    revoked = [_tid() for _ in range(3)]
    for index, ticket in enumerate(revoked):
        store.revoke(ticket, NOW + 60, issued_at=NOW - 3 + index)
    assert store.revoked_count == 2
    for ticket in revoked:  # the one pushed out is still refused
        assert store.claim(ticket, 1, NOW + 60, issued_at=NOW - 3) is REVOKED


def test_memory_store_expiry_index_stays_bounded_under_churn() -> None:
    clock = Clock(NOW - 10)
    store = MemoryReplayStore(max_tickets=3, max_revoked=2, clock=clock)
    clock.now = NOW
    first = _tid()
    assert store.claim(first, 1, NOW + 3600, issued_at=NOW) is FRESH
    for index in range(200):  # long-lived tickets evicted one after another
        assert store.claim(_tid(), 1, NOW + 3600, issued_at=NOW + 1 + index) is FRESH
    assert len(store._expiries) <= 2 * (3 + 2) + 1
    assert len(store) == 3
    assert store.claim(first, 2, NOW + 3600, issued_at=NOW) is REVOKED  # still forgotten


def test_memory_store_refuses_tickets_issued_before_it_existed() -> None:
    clock = Clock()
    store = MemoryReplayStore(clock=clock)  # a restarted process
    assert store.claim(_tid(), 1, NOW + 60, issued_at=NOW - 0.001) is REVOKED
    assert store.claim(_tid(), 1, NOW + 60, issued_at=NOW) is FRESH


def test_memory_store_keeps_a_resealed_ticket_until_its_latest_expiry() -> None:
    clock = Clock()
    store = MemoryReplayStore(clock=clock)
    ticket = _tid()
    assert store.claim(ticket, 1, NOW + 10) is FRESH
    assert store.claim(ticket, 2, NOW + 100) is FRESH  # same id, later expiry
    clock.now = NOW + 50
    assert store.claim(ticket, 1, NOW + 100) is REPLAY  # window kept past the first expiry


def test_memory_store_exactly_one_fresh_under_threads() -> None:
    store = MemoryReplayStore()
    ticket = _tid()
    expires = time.time() + 60
    results: list[ReplayVerdict] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        results.extend(store.claim(ticket, seq, expires) for seq in range(200))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(FRESH) == 200 and results.count(REPLAY) == 7 * 200


@pytest.mark.parametrize(
    ("ticket_id", "sequence", "expires_at", "error"),
    [
        ("text", 1, NOW + 1, TypeError),
        (b"", 1, NOW + 1, ValueError),
        (b"x" * 65, 1, NOW + 1, ValueError),
        (b"x" * 16, -1, NOW + 1, ValueError),
        (b"x" * 16, 2**64, NOW + 1, ValueError),
        (b"x" * 16, True, NOW + 1, TypeError),
        (b"x" * 16, 1.0, NOW + 1, TypeError),
        (b"x" * 16, 1, float("nan"), ValueError),
        (b"x" * 16, 1, "soon", ValueError),
    ],
)
def test_memory_store_refuses_caller_mistakes(ticket_id, sequence, expires_at, error) -> None:
    store = MemoryReplayStore(clock=Clock())
    with pytest.raises(error):
        store.claim(ticket_id, sequence, expires_at)
    with pytest.raises(ValueError):
        MemoryReplayStore(max_tickets=0)
    with pytest.raises(ValueError):
        MemoryReplayStore(window=100)


_ARGUMENT = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=70),
    st.text(max_size=3),
)


@settings(max_examples=400, deadline=None)
@given(
    ticket_id=st.one_of(_ARGUMENT, st.binary(min_size=1, max_size=64)),
    sequence=st.one_of(_ARGUMENT, st.integers(min_value=0, max_value=2**64 - 1)),
    expires_at=st.one_of(_ARGUMENT, st.floats(min_value=NOW + 1, max_value=NOW + 1e6)),
    issued_at=st.one_of(_ARGUMENT, st.floats(min_value=NOW - 10, max_value=NOW)),
)
def test_memory_store_fast_argument_check_refuses_exactly_what_the_full_check_does(
    ticket_id, sequence, expires_at, issued_at
) -> None:
    """``claim`` checks the usual argument shapes inline and falls back to
    ``check_claim_arguments`` otherwise: whatever the caller passes, it raises the same error
    the full check raises, and otherwise answers a verdict (never a crash, never FRESH for an
    expired ticket)."""
    clock = Clock(NOW - 100)
    store = MemoryReplayStore(clock=clock)
    clock.now = NOW
    try:
        check_claim_arguments(ticket_id, sequence, expires_at, issued_at)
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            store.claim(ticket_id, sequence, expires_at, issued_at=issued_at)
        assert len(store) == 0  # nothing recorded for a refused call
        return
    verdict = store.claim(ticket_id, sequence, expires_at, issued_at=issued_at)
    assert isinstance(verdict, ReplayVerdict)
    if expires_at <= NOW:
        assert verdict is REVOKED
    if verdict is FRESH:
        assert store.claim(ticket_id, sequence, expires_at, issued_at=issued_at) is REPLAY


def test_memory_store_purges_expired_tickets_only_when_one_expired() -> None:
    """The purge is amortised (it runs when the earliest expiry has passed, not per call), yet
    an expired ticket's window is still dropped on the next claim after its expiry and a
    claim for it is REVOKED."""
    clock = Clock()
    store = MemoryReplayStore(clock=clock)
    store.claim(b"a" * 16, 1, NOW + 10)
    store.claim(b"b" * 16, 1, NOW + 1000)
    assert len(store) == 2
    clock.now = NOW + 10
    assert store.claim(b"a" * 16, 2, NOW + 10) is REVOKED
    assert store.claim(b"b" * 16, 2, NOW + 1000) is FRESH
    assert len(store) == 1  # "a" purged by that claim
    store.revoke(b"c" * 16, NOW + 20)
    clock.now = NOW + 21
    assert store.claim(b"b" * 16, 3, NOW + 1000) is FRESH
    assert store.revoked_count == 0


_OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["claim", "claim", "claim", "revoke", "tick"]),
        st.integers(min_value=0, max_value=7),  # which ticket (a small pool: much eviction)
        st.integers(min_value=0, max_value=300),  # sequence number
        st.booleans(),  # pass issued_at or not
    ),
    max_size=150,
)


@settings(max_examples=300, deadline=None)
@given(operations=_OPERATIONS, max_tickets=st.integers(min_value=1, max_value=4))
def test_memory_store_never_accepts_anything_twice_however_it_forgets(
    operations, max_tickets: int
) -> None:
    """Fail closed under churn: whatever the store evicts, expires or revokes, no
    (ticket, sequence) is ever FRESH twice, and a revoked ticket is never FRESH again."""
    clock = Clock(NOW - 100)
    store = MemoryReplayStore(max_tickets=max_tickets, max_revoked=2, window=64, clock=clock)
    clock.now = NOW
    tickets = [bytes([index]) * 16 for index in range(8)]
    issued = [NOW - 50 + index for index in range(8)]
    expiry = [NOW + 30 + 10 * index for index in range(8)]
    accepted: set[tuple[int, int]] = set()
    revoked: set[int] = set()
    for operation, index, seq, with_issued in operations:
        issued_at = issued[index] if with_issued else None
        if operation == "tick":
            clock.now += 7
        elif operation == "revoke":
            store.revoke(tickets[index], expiry[index], issued_at=issued_at)
            revoked.add(index)
        else:
            verdict = store.claim(tickets[index], seq, expiry[index], issued_at=issued_at)
            if verdict is FRESH:
                assert (index, seq) not in accepted
                assert index not in revoked
                assert clock.now < expiry[index]
                accepted.add((index, seq))


async def test_async_memory_store() -> None:
    store = AsyncMemoryReplayStore(clock=Clock())
    assert isinstance(store, AsyncReplayStore)
    ticket = _tid()
    assert await store.claim(ticket, 1, NOW + 5) is FRESH
    assert await store.claim(ticket, 1, NOW + 5) is REPLAY
    await store.revoke(ticket, NOW + 5)
    assert await store.claim(ticket, 2, NOW + 5) is REVOKED


# -- the Redis layout (sans-IO) --------------------------------------------------------------


@given(st.one_of(st.integers(), st.binary(), st.text(), st.none(), st.booleans(), st.floats()))
def test_redis_reply_decoding_fails_closed(reply: object) -> None:
    try:
        verdict = RedisLayout.verdict(reply)
    except ReplayStoreUnavailableError:
        return
    assert reply in (0, 1, 2) and not isinstance(reply, bool)
    assert verdict is {0: FRESH, 1: REPLAY, 2: REVOKED}[reply]  # type: ignore[index]


def test_redis_layout_keys_share_a_slot_and_expire_with_the_ticket() -> None:
    layout = RedisLayout("p:", Clock(), max_clock_skew=5, window=128)
    keys, args = layout.claim_call(b"\x01" * 16, 42, NOW + 1.0001, NOW - 1)  # type: ignore[misc]
    tag = "{" + "01" * 16 + "}"
    assert keys == ["p:epoch", f"p:{tag}:revoked", f"p:{tag}:window"]
    # ttl rounded up plus the skew, issued_at in ms, skew in ms, the number, the window size
    assert args == [6001, int((NOW - 1) * 1000), 5000, 42, 128]
    assert layout.claim_call(b"\x01" * 16, 42, NOW, None) is REVOKED  # expired: no trip
    assert layout.claim_call(b"\x01" * 16, 2**53, NOW + 1, None) is REPLAY  # not exact in Lua
    for bad in ({"prefix": ""}, {"max_clock_skew": -1}, {"window": 100}):
        kwargs = {"prefix": "p:", "clock": Clock(), "max_clock_skew": 5, **bad}
        with pytest.raises(ValueError):
            RedisLayout(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"maxmemory-policy": "noeviction", "save": "", "appendonly": "no"}, None),  # partial
        ({"maxmemory-policy": "noeviction", "save": "", "appendonly": "no", "appendfsync": ""},
         None),
        ({b"maxmemory-policy": b"noeviction", b"save": b"", b"appendonly": b"yes",
          b"appendfsync": b"always"}, None),
        ({"maxmemory-policy": "volatile-lru", "save": "", "appendonly": "no", "appendfsync": ""},
         "noeviction"),
        ({"maxmemory-policy": "noeviction", "save": "60 1", "appendonly": "no", "appendfsync": ""},
         "snapshots"),
    ],
)  # fmt: skip
def test_redis_config_judgement(settings, refused, caplog) -> None:
    if refused is None:
        RedisLayout.check_config(settings)
    else:
        with pytest.raises(ValueError, match=refused):
            RedisLayout.check_config(settings)
    RedisLayout.check_config(None)  # CONFIG refused (managed Redis): a warning, not an error
    assert "cannot read Redis' configuration" in caplog.text


# -- Redis: a real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    from helpers.redis_server import RedisServer, require_redis

    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"test:{os.urandom(4).hex()}:"


@pytest.fixture
def store(redis_server, prefix):
    with RedisReplayStore(redis_server.url, prefix=prefix, max_clock_skew=0.1, timeout=T) as store:
        yield store


def test_redis_fresh_once_then_replay(store) -> None:
    ticket = _tid()
    expires = time.time() + 60
    assert store.claim(ticket, 1, expires) is FRESH
    assert store.claim(ticket, 1, expires) is REPLAY
    assert store.claim(ticket, 2, expires) is FRESH
    assert store.claim(_tid(), 1, expires) is FRESH
    assert store.claim(ticket, 3, time.time() - 1) is REVOKED  # expired, decided locally


def _walk(steps: list[int]) -> list[int]:
    """Steps to sequence numbers: a walk that mostly advances and sometimes steps back inside
    (or beyond) the window, as multiplexed calls arrive, plus duplicates (replays)."""
    position, numbers = 0, []
    for step in steps:
        position = max(0, position + step)
        numbers.append(position)
    return numbers


_SEQUENCES = st.lists(
    st.one_of(
        st.integers(min_value=-80, max_value=90),  # reorder, duplicate, slide a block or two
        st.sampled_from([0, 64, 128, -64, 191]),  # block boundaries and ring wrap-around
        st.integers(min_value=1000, max_value=2**40),  # far jumps: the whole ring cleared
    ),
    min_size=1,
    max_size=80,
).map(_walk)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(sequences=_SEQUENCES, window=st.sampled_from([64, 128, 192]))
def test_redis_window_decides_exactly_like_the_cores_window(
    store, redis_server, prefix, sequences: list[int], window: int
) -> None:
    """The Lua window and rpcsec.sspi.ReplayWindow (through MemoryReplayStore) give the same
    verdict for every claim of any sequence, so FRESH means the same everywhere."""
    redis_store = RedisReplayStore(store.client, prefix=prefix, window=window)
    memory = MemoryReplayStore(window=window)
    ticket = _tid()
    expires = time.time() + 60
    for seq in sequences:
        expected = memory.claim(ticket, seq, expires)
        assert redis_store.claim(ticket, seq, expires) is expected, (seq, sequences)


@pytest.mark.parametrize("window", [64, 192])
def test_redis_window_matches_the_core_on_a_sweep_of_every_slot(store, prefix, window) -> None:
    """Deterministic sweep: every number in order, each followed by replays and late arrivals
    at distances around the window edge -- every ring slot and every slide of one block."""
    redis_store = RedisReplayStore(store.client, prefix=prefix, window=window)
    memory = MemoryReplayStore(window=window)
    ticket = _tid()
    expires = time.time() + 60
    verdicts = []
    for top in range(0, 4 * window + 70, 3):
        for seq in (top, top - 1, top - 2, top - window // 2, top - window + 1, top - window):
            if seq >= 0:
                expected = memory.claim(ticket, seq, expires)
                assert redis_store.claim(ticket, seq, expires) is expected, (top, seq)
                verdicts.append(expected)
    assert verdicts.count(FRESH) > 100 and verdicts.count(REPLAY) > 100


def test_redis_two_replicas_racing_get_exactly_one_fresh_per_number(redis_server, prefix) -> None:
    replicas = [RedisReplayStore(redis_server.url, prefix=prefix, timeout=T) for _ in range(2)]
    ticket = _tid()
    expires = time.time() + 60
    results: list[list[ReplayVerdict]] = [[], [], [], []]
    barrier = threading.Barrier(4)

    def race(index: int) -> None:
        replica = replicas[index % 2]
        barrier.wait()
        results[index].extend(replica.claim(ticket, seq, expires) for seq in range(150))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seq in range(150):
        verdicts = [results[i][seq] for i in range(4)]
        assert verdicts.count(FRESH) == 1 and verdicts.count(REPLAY) == 3, seq
    for replica in replicas:
        replica.close()


@settings(max_examples=200, deadline=None)
@given(
    ticket=st.binary(min_size=1, max_size=64),
    sequence=st.integers(0, 2**53 - 1),
    ttl=st.floats(0.01, 10**7),
    issued=st.one_of(st.none(), st.floats(0, 4 * 10**9)),
    skew=st.floats(0, 3600),
    window=st.integers(1, 1024).map(lambda n: 64 * n),
    prefix=st.text(min_size=1, max_size=20),
)
def test_pre_encoded_claim_is_what_redis_py_would_send(
    ticket, sequence, ttl, issued, skew, window, prefix
) -> None:
    """The claim's hand-encoded RESP request is byte for byte redis-py's ``pack_command`` of
    the same EVALSHA (so the fast path sends exactly what the script path sent)."""
    from redis.connection import Connection

    from rpcsec.session._redis_store import CLAIM_SCRIPT, ClaimEncoder

    layout = RedisLayout(prefix, Clock(), max_clock_skew=skew, window=window)
    call = layout.claim_call(ticket, sequence, NOW + ttl, issued)
    if isinstance(call, ReplayVerdict):
        return
    keys, args = call
    import hashlib

    sha = hashlib.sha1(CLAIM_SCRIPT.encode()).hexdigest()
    packed = b"".join(Connection().pack_command("EVALSHA", sha, 3, *keys, *args))
    assert ClaimEncoder(layout, sha).encode(keys, args) == packed


def test_redis_a_late_reply_on_the_connection_is_never_read_as_a_claims_answer(store) -> None:
    """A reply that arrives after its claim gave up (a timeout) must never answer the next
    claim on that connection: a stale FRESH would let a replay through. Here the stale bytes
    are put on the thread's connection by hand (a claim of the same number sent and left
    unread); the next claim of that number must still be REPLAY."""
    ticket = _tid()
    expires = time.time() + 60
    assert store.claim(ticket, 1, expires) is FRESH
    keys, args = store._layout.claim_call(ticket, 2, expires, None)
    connection = store._resp.get()
    connection._sock.sendall(store._encoder.encode(keys, args))
    _poll(lambda: connection._readable.poll(0))  # the unread ":0" (FRESH for 2) is waiting
    assert store.claim(ticket, 2, expires) is REPLAY  # answered afresh, not by the stale ":0"
    assert store.claim(ticket, 3, expires) is FRESH


def test_redis_a_claim_that_timed_out_leaves_no_stale_reply(redis_server, prefix) -> None:
    """Redis paused (SIGSTOP) mid-claim: the claim fails closed within its timeout; when Redis
    runs again it executes that claim and answers onto a socket the store already closed, so
    the next claim of the same number is REPLAY (the late ":0" is never read as its FRESH)."""
    store = RedisReplayStore(redis_server.url, prefix=prefix, timeout=0.3)
    ticket = _tid()
    expires = time.time() + 60
    assert store.claim(ticket, 1, expires) is FRESH
    connection = store._resp.get()
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ReplayStoreUnavailableError):
            store.claim(ticket, 2, expires)
        assert time.monotonic() - started < 2.0
        assert not connection.connected  # closed before anything late could arrive
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    _poll(lambda: _answers(store, ticket, 3, expires))
    assert store.claim(ticket, 2, expires) is REPLAY  # the timed-out claim ran, once
    store.close()


def test_redis_a_forked_child_never_shares_the_parents_connection(store) -> None:
    """A server that forks workers after the store connected: the child claims on a socket
    of its own, so neither process can read the other's reply (a stale FRESH)."""
    ticket = _tid()
    expires = time.time() + 60
    assert store.claim(ticket, 1, expires) is FRESH
    parent_connection = store._resp.get()
    pid = os.fork()
    if pid == 0:  # the child: exit code = what it saw
        try:
            fresh = store.claim(ticket, 2, expires) is FRESH
            replay = store.claim(ticket, 1, expires) is REPLAY
            own = store._resp.get() is not parent_connection
            os._exit(0 if fresh and replay and own else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert store._resp.get() is parent_connection
    assert store.claim(ticket, 2, expires) is REPLAY  # the child's claim counts everywhere
    assert store.claim(ticket, 3, expires) is FRESH


def test_redis_claims_go_on_after_redis_forgets_its_scripts(store) -> None:
    """SCRIPT FLUSH (what a restarted Redis looks like to a loaded script): NOSCRIPT means the
    claim did not run, so the store loads the script and claims once, on the same call."""
    ticket = _tid()
    expires = time.time() + 60
    assert store.claim(ticket, 1, expires) is FRESH
    store.client.script_flush()
    assert store.claim(ticket, 2, expires) is FRESH
    assert store.claim(ticket, 2, expires) is REPLAY
    assert store.claim(ticket, 1, expires) is REPLAY


def test_redis_store_uses_one_connection_per_claiming_thread(redis_server, prefix) -> None:
    """No pool checkout per claim: each thread keeps its own connection, and close() ends
    them all."""
    store = RedisReplayStore(redis_server.url, prefix=prefix, timeout=T)
    ticket = _tid()
    expires = time.time() + 60
    seen: list[object] = []
    lock = threading.Lock()

    def claims(base: int) -> None:
        for seq in range(base, base + 20):
            assert store.claim(ticket, seq, expires) is FRESH
        with lock:
            seen.append(store._resp.get())

    threads = [threading.Thread(target=claims, args=(100 * i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(connection) for connection in seen}) == 4
    assert all(connection.connected for connection in seen)
    store.close()
    assert not any(connection.connected for connection in seen)


def test_redis_revocation_reaches_the_other_replica(redis_server, prefix) -> None:
    one = RedisReplayStore(redis_server.url, prefix=prefix, timeout=T)
    two = RedisReplayStore(redis_server.url, prefix=prefix, timeout=T)
    ticket = _tid()
    expires = time.time() + 60
    assert one.claim(ticket, 1, expires) is FRESH
    two.revoke(ticket, expires)
    assert not one.client.exists(f"{prefix}{{{ticket.hex()}}}:window")  # its memory is freed
    assert one.claim(ticket, 1, expires) is REVOKED
    assert one.claim(ticket, 2, expires) is REVOKED
    assert two.claim(ticket, 3, expires) is REVOKED
    one.close()
    two.close()


def test_redis_prefixes_separate_services(redis_server) -> None:
    ticket = _tid()
    expires = time.time() + 60
    with (
        RedisReplayStore(redis_server.url, prefix="svc-a:", timeout=T) as a,
        RedisReplayStore(redis_server.url, prefix="svc-b:", timeout=T) as b,
    ):
        assert a.claim(ticket, 1, expires) is FRESH
        assert b.claim(ticket, 1, expires) is FRESH


def test_redis_entries_expire_with_the_ticket(store, prefix) -> None:
    ticket = _tid()
    expires = time.time() + 0.3
    assert store.claim(ticket, 1, expires) is FRESH
    store.revoke(_tid(), expires)
    client = store.client
    keys = client.keys(f"{prefix}{{*")
    assert len(keys) == 2
    assert all(0 < client.pttl(key) <= 300 + 100 for key in keys)  # ticket + skew
    _poll(lambda: not client.keys(f"{prefix}{{*"), timeout=5)
    assert store.claim(ticket, 1, expires) is REVOKED  # the ticket itself is dead


def test_redis_holds_one_bounded_key_per_ticket_however_many_calls(store, prefix) -> None:
    ticket = _tid()
    expires = time.time() + 60
    for seq in range(0, 20_000, 7):  # beyond one window: the ring wraps
        assert store.claim(ticket, seq, expires) is FRESH
    keys = store.client.keys(f"{prefix}{{{ticket.hex()}}}*")
    assert len(keys) == 1  # the window, not one key per call
    assert store.client.strlen(keys[0]) <= 16 + (16384 // 64 + 1) * 8


def test_redis_claim_extends_a_claim_key_to_a_later_expiry(store, prefix) -> None:
    ticket = _tid()
    now = time.time()
    assert store.claim(ticket, 1, now + 5) is FRESH
    assert store.claim(ticket, 1, now + 500) is REPLAY
    (key,) = store.client.keys(f"{prefix}{{{ticket.hex()}}}:window")
    assert store.client.pttl(key) > 100_000


def test_redis_refuses_tickets_issued_before_the_dataset(store) -> None:
    now = time.time()
    assert store.claim(_tid(), 1, now + 60, issued_at=now - 3600) is REVOKED
    assert store.claim(_tid(), 1, now + 60, issued_at=now + 0.001) is FRESH


def test_redis_dataset_begins_no_later_than_redis_time(redis_server, prefix) -> None:
    # A first replica whose clock runs an hour ahead must not lock out tickets other replicas
    # issue now (they would look older than the dataset).
    ahead = RedisReplayStore(redis_server.url, prefix=prefix, clock=lambda: time.time() + 3600)
    with pytest.raises(ValueError):
        ahead.claim(_tid(), 1, float("inf"))
    assert ahead.claim(_tid(), 1, time.time() + 7200) is FRESH  # sets the marker
    birth = int(ahead.client.get(f"{prefix}epoch"))
    assert birth <= time.time() * 1000
    honest = RedisReplayStore(redis_server.url, prefix=prefix, timeout=T)
    now = time.time()
    assert honest.claim(_tid(), 1, now + 60, issued_at=now) is FRESH
    ahead.close()
    honest.close()


def test_redis_stopped_fails_closed_within_the_timeout(redis_server, prefix) -> None:
    store = RedisReplayStore(redis_server.url, prefix=prefix, timeout=0.2)
    ticket = _tid()
    expires = time.time() + 60
    assert store.claim(ticket, 1, expires) is FRESH
    os.kill(redis_server.process.pid, signal.SIGSTOP)  # alive but silent: a timeout
    try:
        started = time.monotonic()
        with pytest.raises(ReplayStoreUnavailableError) as info:
            store.claim(ticket, 2, expires)
        assert time.monotonic() - started < 2.0
        assert info.value.reason == "replay-store-unavailable"
        # (Another ticket: a revocation that timed out may still be applied once Redis runs
        # again -- its outcome is unknown, which is the safe direction for a revocation.)
        with pytest.raises(ReplayStoreUnavailableError):
            store.revoke(_tid(), expires)
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    _poll(lambda: _answers(store, ticket, 3, expires))
    assert store.claim(ticket, 1, expires) is REPLAY
    store.close()


def _answers(store, ticket, seq, expires) -> bool:
    try:
        store.claim(ticket, seq, expires)
    except ReplayStoreUnavailableError:
        return False
    return True


def test_redis_killed_mid_traffic_fails_closed_then_recovers(tmp_path) -> None:
    from helpers.redis_server import RedisServer, require_redis

    require_redis()
    server = RedisServer(tmp_path / "redis").start()
    try:
        store = RedisReplayStore(server.url, timeout=0.25)
        ticket = _tid()
        issued = time.time()
        expires = issued + 600
        accepted: set[int] = set()
        verdicts_after_kill: list[ReplayVerdict] = []
        errors = 0
        phase = ["up"]  # "up" -> "down" (killed) -> "back" (restarted, empty)
        stop = threading.Event()

        def traffic() -> None:
            nonlocal errors
            seq = 0
            while not stop.is_set():
                seq += 1
                for number in (seq, seq - 1):  # each new number, then a replay of the last
                    started_in = phase[0]
                    try:
                        verdict = store.claim(ticket, number, expires, issued_at=issued)
                    except ReplayStoreUnavailableError:
                        errors += 1
                        continue
                    if started_in != "up":
                        verdicts_after_kill.append(verdict)
                    if verdict is FRESH:
                        assert number not in accepted
                        accepted.add(number)

        worker = threading.Thread(target=traffic)
        worker.start()
        _poll(lambda: len(accepted) >= 50)
        server.kill()
        phase[0] = "down"
        _poll(lambda: errors >= 5)
        server.start()  # back, empty: it lost every claim
        phase[0] = "back"
        _poll(lambda: len(verdicts_after_kill) >= 20)
        stop.set()
        worker.join()
        # Every claim while Redis was gone raised; after it came back empty, the old ticket's
        # numbers are not fresh again: it predates the new dataset, so REVOKED.
        assert errors >= 5
        assert FRESH not in verdicts_after_kill
        assert set(verdicts_after_kill) == {REVOKED}
        # ...while a ticket issued after the restart works at once (the store recovered).
        later = time.time() + 2  # beyond max_clock_skew (1 s)
        fresh_ticket = _tid()
        assert store.claim(fresh_ticket, 1, later + 600, issued_at=later) is FRESH
        assert store.claim(fresh_ticket, 1, later + 600, issued_at=later) is REPLAY
        store.close()
    finally:
        server.stop()


async def test_async_redis_store(redis_server, prefix) -> None:
    one = AsyncRedisReplayStore(redis_server.url, prefix=prefix, timeout=T)
    two = AsyncRedisReplayStore(redis_server.url, prefix=prefix, timeout=T)
    assert isinstance(one, AsyncReplayStore)
    ticket = _tid()
    expires = time.time() + 60
    results = await asyncio.gather(
        *(store.claim(ticket, seq, expires) for seq in range(50) for store in (one, two, one))
    )
    assert results.count(FRESH) == 50 and results.count(REPLAY) == 100
    await two.revoke(ticket, expires)
    assert await one.claim(ticket, 99, expires) is REVOKED
    await one.ping()
    await one.aclose()
    await two.aclose()


async def test_async_redis_a_late_reply_is_never_read_as_a_claims_answer(
    redis_server, prefix
) -> None:
    """The asyncio store's own connections: a reply left unread on an idle connection (a
    claim that timed out or was cancelled) never answers the next claim."""
    store = AsyncRedisReplayStore(redis_server.url, prefix=prefix, timeout=T)
    ticket = _tid()
    expires = time.time() + 60
    assert await store.claim(ticket, 1, expires) is FRESH
    (connection,) = store._resp._idle
    keys, args = store._layout.claim_call(ticket, 2, expires, None)
    protocol = connection._protocol
    protocol.transport.write(store._encoder.encode(keys, args))  # sent, nobody waits for it
    _poll_started = time.monotonic()
    while protocol.usable:  # the unread ":0" has arrived and made the connection unusable
        assert time.monotonic() - _poll_started < T
        await asyncio.sleep(0.01)
    assert await store.claim(ticket, 2, expires) is REPLAY
    assert await store.claim(ticket, 3, expires) is FRESH
    await store.aclose()


async def test_async_redis_a_cancelled_claim_leaves_no_stale_reply(redis_server, prefix) -> None:
    """A claim cancelled while it waits for Redis (its caller's deadline) disconnects that
    connection: whatever Redis answers later is never read by another claim."""
    store = AsyncRedisReplayStore(redis_server.url, prefix=prefix, timeout=T)
    ticket = _tid()
    expires = time.time() + 60
    assert await store.claim(ticket, 1, expires) is FRESH
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        waiting = asyncio.ensure_future(store.claim(ticket, 2, expires))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    assert all(not c.connected for c in store._resp._idle)
    verdict = await store.claim(ticket, 2, expires)  # 2 ran late, or never reached Redis
    assert verdict in (FRESH, REPLAY)
    assert await store.claim(ticket, 2, expires) is REPLAY
    assert await store.claim(ticket, 3, expires) is FRESH
    await store.aclose()


async def test_async_redis_claims_go_on_after_redis_forgets_its_scripts(redis_server, prefix):
    store = AsyncRedisReplayStore(redis_server.url, prefix=prefix, timeout=T)
    ticket = _tid()
    expires = time.time() + 60
    assert await store.claim(ticket, 1, expires) is FRESH
    await store.client.script_flush()
    assert await store.claim(ticket, 2, expires) is FRESH
    assert await store.claim(ticket, 2, expires) is REPLAY
    await store.aclose()


async def test_async_redis_store_fails_closed_then_recovers(tmp_path) -> None:
    from helpers.redis_server import RedisServer, require_redis

    require_redis()
    server = RedisServer(tmp_path / "redis").start()
    try:
        store = AsyncRedisReplayStore(server.url, timeout=0.25)
        ticket = _tid()
        issued = time.time()
        expires = issued + 60
        assert await store.claim(ticket, 1, expires, issued_at=issued) is FRESH
        server.kill()
        with pytest.raises(ReplayStoreUnavailableError):
            await store.claim(ticket, 2, expires)
        with pytest.raises(ReplayStoreUnavailableError):
            await store.ping()
        with pytest.raises(ReplayStoreUnavailableError):
            await store.revoke(ticket, expires)
        server.start()  # back, empty
        deadline = time.monotonic() + 10
        while True:  # the pool's dead connections fail once each, then it reconnects
            try:
                await store.ping()
                break
            except ReplayStoreUnavailableError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
        # The old ticket predates the new dataset; a ticket issued now is served at once.
        assert await store.claim(ticket, 1, expires, issued_at=issued) is REVOKED
        later = time.time() + 2
        assert await store.claim(_tid(), 1, later + 60, issued_at=later) is FRESH
        await store.aclose()
    finally:
        server.stop()


def test_redis_full_fails_closed(tmp_path) -> None:
    """A Redis out of memory (noeviction) refuses writes: the claim fails closed, and keys are
    never evicted (which would forget claims)."""
    from helpers.redis_server import RedisServer, require_redis

    require_redis()
    server = RedisServer(tmp_path / "redis").start()
    try:
        store = RedisReplayStore(server.url, timeout=T)
        expires = time.time() + 60
        assert store.claim(_tid(), 1, expires) is FRESH
        client = store.client
        client.config_set("maxmemory", client.info("memory")["used_memory"] + 64 * 1024)
        errors = 0
        for _ in range(500):  # each new ticket needs a new window: memory runs out
            try:
                assert store.claim(_tid(), 5000, expires) is FRESH
            except ReplayStoreUnavailableError:
                errors += 1
        assert errors > 0
        store.close()
    finally:
        server.stop()


def test_redis_check_refuses_a_redis_that_would_evict_claims(tmp_path) -> None:
    from helpers.redis_server import RedisServer, require_redis

    require_redis()
    server = RedisServer(tmp_path / "redis").start()
    try:
        store = RedisReplayStore(server.url, timeout=T)
        store.check()  # the test server: noeviction, no persistence
        client = store.client
        client.config_set("save", "3600 1")  # Debian's default: snapshots, no AOF
        with pytest.raises(ValueError, match="snapshots"):
            store.check()
        client.config_set("appendonly", "yes")
        client.config_set("appendfsync", "everysec")
        with pytest.raises(ValueError, match="appendfsync"):
            store.check()
        client.config_set("appendfsync", "always")
        store.check()  # every write on disk before it is answered: nothing forgotten
        for policy in ("allkeys-lru", "volatile-ttl", "allkeys-random"):
            client.config_set("maxmemory-policy", policy)
            with pytest.raises(ValueError, match="noeviction"):
                store.check()
        server.kill()
        with pytest.raises(ReplayStoreUnavailableError):
            store.check()
        store.close()
    finally:
        server.stop()


def test_redis_store_fails_closed_on_a_redis_that_could_forget(tmp_path, caplog) -> None:
    from helpers.redis_server import RedisServer, require_redis

    require_redis()
    server = RedisServer(tmp_path / "redis").start()
    try:
        admin = RedisReplayStore(server.url, timeout=T, verify_config=False)
        admin.client.config_set("save", "60 1")  # snapshots: a crash would forget claims
        store = RedisReplayStore(server.url, timeout=T)
        for _ in range(3):
            with pytest.raises(ReplayStoreUnavailableError):
                store.claim(_tid(), 1, time.time() + 60)
        with pytest.raises(ReplayStoreUnavailableError):
            store.revoke(_tid(), time.time() + 60)
        assert "refuses to use this Redis" in caplog.text
        # An operator who knows better may opt out (e.g. CONFIG reports a proxy's view).
        assert admin.claim(_tid(), 1, time.time() + 60) is FRESH
        admin.close()
        store.close()
    finally:
        server.stop()


async def test_async_redis_store_fails_closed_on_a_redis_that_could_forget(tmp_path) -> None:
    from helpers.redis_server import RedisServer, require_redis

    require_redis()
    server = RedisServer(tmp_path / "redis").start()
    try:
        store = AsyncRedisReplayStore(server.url, timeout=T)
        await store.client.config_set("maxmemory-policy", "allkeys-lru")
        with pytest.raises(ReplayStoreUnavailableError):
            await store.claim(_tid(), 1, time.time() + 60)
        with pytest.raises(ValueError):
            await store.check()
        await store.aclose()
    finally:
        server.stop()


def test_redis_without_config_command_is_used_with_a_warning(tmp_path, caplog) -> None:
    # Managed Redis services often disable CONFIG: the store cannot judge, says so, works.
    from helpers.redis_server import RedisServer, require_redis

    require_redis()
    server = RedisServer(tmp_path / "redis", extra_args=("--rename-command", "CONFIG", ""))
    server.start()
    try:
        store = RedisReplayStore(server.url, timeout=T)
        ticket = _tid()
        assert store.claim(ticket, 1, time.time() + 60) is FRESH
        assert store.claim(ticket, 1, time.time() + 60) is REPLAY
        store.check()
        assert "cannot read Redis' configuration" in caplog.text
        store.close()
    finally:
        server.stop()


async def test_async_redis_check(redis_server) -> None:
    store = AsyncRedisReplayStore(redis_server.url, timeout=T)
    await store.check()
    await store.aclose()


def test_redis_store_refuses_a_bad_target() -> None:
    with pytest.raises(TypeError):
        RedisReplayStore(12)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RedisReplayStore("redis://127.0.0.1:1/0", timeout=0)


def test_the_session_micro_benchmark_runs(tmp_path) -> None:
    """``python -m benchmarks.session_store --quick`` runs end to end against a real Redis
    (timings are never asserted; this keeps the benchmark from rotting)."""
    import json
    import pathlib
    import subprocess
    import sys

    from helpers.redis_server import require_redis

    require_redis()
    root = pathlib.Path(__file__).resolve().parent.parent
    out = tmp_path / "session.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.session_store", "--quick", "--json", str(out)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["ticket_bytes"] == 77 + 600
    for name in ("open (memory ring)", "claim (memory)", "claim (redis, sync)"):
        assert results[name]["median"] > 0
