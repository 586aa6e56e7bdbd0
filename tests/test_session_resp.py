"""The replay store's own Redis connections (rpcsec/session/_resp.py: the strict reply parser;
rpcsec/session/_redis_socket.py: the sync and asyncio sockets).

The reply parser is what stands between the network and a verdict: it must accept exactly the
replies the store asks for, in any fragmentation, and refuse everything else (hypothesis, and
differentially against hiredis, Redis' own parser). The connection is then tried against a
real Redis (a unix socket, AUTH and SELECT, killed in the middle of a claim, restarted, a
connection Redis closed) and against a socket server that answers claims with replies of the
wrong shape (what no real Redis sends): every failure is ``ReplayStoreUnavailableError``,
never a verdict, and the connection is closed before it could be read again.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpcsec.session import RedisReplayStore, ReplayStoreUnavailableError, ReplayVerdict
from rpcsec.session._redis_socket import RespConnection
from rpcsec.session._resp import (
    BULK,
    ERROR,
    INTEGER,
    MAX_REPLY,
    SIMPLE,
    Reply,
    ReplyParser,
    RespAddress,
    RespProtocolError,
    encode_command,
)

FRESH, REPLAY, REVOKED = ReplayVerdict.FRESH, ReplayVerdict.REPLAY, ReplayVerdict.REVOKED
T = 2.0


def _tid() -> bytes:
    return os.urandom(16)


def _poll(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.01)


# -- the parser (sans-IO) ----------------------------------------------------------------------

_TEXT = st.binary(max_size=80).map(lambda b: bytes(0x20 + x % 0x5F for x in b))
_VALID = st.one_of(
    st.integers(-(10**18), 10**18).map(lambda n: (Reply(INTEGER, b"%d" % n), b":%d\r\n" % n)),
    _TEXT.map(lambda t: (Reply(ERROR, t), b"-" + t + b"\r\n")),
    _TEXT.map(lambda t: (Reply(SIMPLE, t), b"+" + t + b"\r\n")),
    st.binary(max_size=100).map(lambda b: (Reply(BULK, b), b"$%d\r\n%s\r\n" % (len(b), b))),
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def _parse(chunks: list[bytes]) -> Reply | None:
    parser = ReplyParser()
    reply = None
    for index, chunk in enumerate(chunks):
        reply = parser.feed(chunk)
        if reply is not None and index != len(chunks) - 1:
            raise AssertionError("a reply before all its bytes arrived")
    return reply


@settings(max_examples=400, deadline=None)
@given(valid=_VALID, cuts=st.lists(st.integers(0, 200), max_size=6))
def test_every_reply_the_store_asks_for_parses_however_it_is_cut(valid, cuts) -> None:
    expected, wire = valid
    assert _parse(_chunks(wire, cuts)) == expected


@settings(max_examples=400, deadline=None)
@given(valid=_VALID)
def test_the_parser_agrees_with_hiredis_on_what_it_accepts(valid) -> None:
    """Differential: Redis' own C parser reads the same value from the same bytes."""
    hiredis = pytest.importorskip("hiredis")
    expected, wire = valid
    reader = hiredis.Reader()
    reader.feed(wire)
    theirs = reader.gets()
    if expected.kind == INTEGER:
        assert theirs == int(expected.value)
    elif expected.kind == ERROR:
        assert isinstance(theirs, hiredis.ReplyError)
        assert str(theirs).encode() == expected.value
    else:
        assert theirs == expected.value
    assert reader.gets() is False  # nothing left over on their side either


@settings(max_examples=600, deadline=None)
@given(data=st.binary(max_size=MAX_REPLY + 64), cuts=st.lists(st.integers(0, 700), max_size=5))
def test_arbitrary_bytes_give_a_reply_more_to_read_or_a_protocol_error(data, cuts) -> None:
    """Never another exception, never a reply that hiredis would read differently, and a
    failure is sticky."""
    parser = ReplyParser()
    reply = None
    try:
        for chunk in _chunks(data, cuts):
            assert reply is None  # bytes after a complete reply must have raised
            reply = parser.feed(chunk)
    except RespProtocolError:
        with pytest.raises(RespProtocolError):
            parser.feed(b":0\r\n")
        return
    if reply is not None:
        hiredis = pytest.importorskip("hiredis")
        reader = hiredis.Reader()
        reader.feed(data)
        theirs = reader.gets()
        if reply.kind == INTEGER:
            assert theirs == int(reply.value)
        elif reply.kind != ERROR:
            assert theirs == reply.value


@settings(max_examples=300, deadline=None)
@given(valid=_VALID, extra=st.binary(min_size=1, max_size=40))
def test_bytes_after_a_reply_are_refused(valid, extra) -> None:
    """One request is outstanding at a time: anything after its reply is stray (a late reply of
    an earlier request, say) and must never be kept for the next read."""
    _expected, wire = valid
    with pytest.raises(RespProtocolError):
        ReplyParser().feed(wire + extra)


@pytest.mark.parametrize(
    "wire",
    [
        b"*1\r\n:0\r\n",  # an array (EVAL returning a table)
        b"$-1\r\n",  # null bulk
        b"*-1\r\n",  # null array
        b"_\r\n",  # RESP3 null
        b"#t\r\n",  # RESP3 boolean
        b",1.5\r\n",  # RESP3 double
        b">2\r\n",  # RESP3 push
        b":0\n",  # LF without CR
        b":0\r\r\n",
        b":\r\n",  # no digits
        b":0x1\r\n",
        b":+1\r\n",
        b":12345678901234567890\r\n",  # beyond 64 bits
        b"$3\r\nabcd\r\n",  # bulk longer than announced
        b"$3\r\nab\r\nx",  # wrong terminator
        b"+OK\x00\r\n",  # control byte
        b"-ERR \xff\r\n",  # non-ASCII
        b"$" + b"9" * 30 + b"\r\n",  # a length no reply can have
        b"+" + b"a" * MAX_REPLY + b"\r\n",  # too long
        b":0\r\n:0\r\n",  # two replies: the second is stray
    ],
)
def test_replies_the_store_never_asks_for_are_refused(wire: bytes) -> None:
    with pytest.raises(RespProtocolError):
        ReplyParser().feed(wire)
    if wire == b":0\r\n:0\r\n":
        return  # byte by byte, the stray second reply would be a later read's (poll catches it)
    parser = ReplyParser()
    with pytest.raises(RespProtocolError):
        for byte in wire:
            assert parser.feed(bytes([byte])) is None


@settings(max_examples=200, deadline=None)
@given(
    command=st.sampled_from([b"AUTH", b"SELECT", b"SCRIPT", b"EVALSHA", b"PING"]),
    args=st.lists(st.binary(max_size=300), max_size=6),
)
def test_encode_command_is_what_redis_py_sends(command, args) -> None:
    """Requests built here (SCRIPT LOAD, AUTH with any password, SELECT) are byte for byte
    redis-py's ``pack_command`` of the same arguments (a command name never holds a space,
    which redis-py would split)."""
    from redis.connection import Connection

    packed = b"".join(Connection().pack_command(command, *args))
    assert encode_command(command, *args) == packed


@settings(max_examples=100, deadline=None)
@given(user=st.one_of(st.none(), st.text(max_size=20)), password=st.text(max_size=40))
def test_auth_is_what_redis_py_sends(user, password) -> None:
    from redis.connection import Connection

    address = RespAddress("127.0.0.1", username=user, password=password)
    names = [password] if user is None else [user, password]
    expected = b"".join(Connection().pack_command("AUTH", *names))
    assert address.setup() == [expected]


def test_addresses_only_for_connections_this_module_can_make() -> None:
    import redis

    tcp = redis.Redis.from_url("redis://u:p@127.0.0.1:7000/3").connection_pool
    address = RespAddress.from_redis_py(tcp.connection_class, tcp.connection_kwargs)
    assert address == RespAddress("127.0.0.1", 7000, None, "u", "p", 3)
    assert address.setup() == [
        encode_command(b"AUTH", b"u", b"p"),
        encode_command(b"SELECT", b"3"),
    ]
    unix = redis.Redis.from_url("unix:///run/redis.sock").connection_pool
    assert RespAddress.from_redis_py(unix.connection_class, unix.connection_kwargs) == (
        RespAddress(None, 6379, "/run/redis.sock")
    )
    tls = redis.Redis.from_url("rediss://127.0.0.1:7000/0").connection_pool
    assert RespAddress.from_redis_py(tls.connection_class, tls.connection_kwargs) is None

    class Subclass(redis.Connection):
        pass

    assert RespAddress.from_redis_py(Subclass, tcp.connection_kwargs) is None


# -- a socket server answering claims with the wrong shape ------------------------------------


class ScriptedRedis:
    """A loopback server reading whole RESP requests and answering each with the next of
    ``replies`` (bytes sent as they are, or a callable run on the connection)."""

    def __init__(self, replies: list[object]) -> None:
        self.replies = list(replies)
        self.requests: list[bytes] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        buffer = b""
        with connection:
            while True:
                try:
                    data = connection.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while _complete_request(buffer):
                    size = _complete_request(buffer)
                    self.requests.append(buffer[:size])
                    buffer = buffer[size:]
                    reply = self.replies.pop(0) if self.replies else b":0\r\n"
                    try:
                        if callable(reply):
                            reply(connection)
                        else:
                            connection.sendall(reply)  # type: ignore[arg-type]
                    except OSError:
                        return

    def close(self) -> None:
        self._listener.close()


def _complete_request(buffer: bytes) -> int:
    """Length of the first whole RESP array of bulk strings in ``buffer``, 0 if incomplete."""
    if not buffer.startswith(b"*") or b"\r\n" not in buffer:
        return 0
    head, position = buffer.index(b"\r\n"), 0
    count = int(buffer[1:head])
    position = head + 2
    for _ in range(count):
        end = buffer.find(b"\r\n", position)
        if end < 0:
            return 0
        length = int(buffer[position + 1 : end])
        position = end + 2 + length + 2
        if position > len(buffer):
            return 0
    return position


def _scripted_store(server: ScriptedRedis, timeout: float = T) -> RedisReplayStore:
    store = RedisReplayStore(server.url, timeout=timeout, verify_config=False)
    store._marker_pending = False  # no epoch-marker script: only claims reach the server
    return store


@pytest.mark.parametrize(
    "reply",
    [
        b"$1\r\n0\r\n",  # the verdict as a bulk string
        b"*1\r\n:0\r\n",  # as an array
        b":0\r\n:0\r\n",  # a reply and a stray one
        b":7\r\n",  # an integer no verdict has
        b":-1\r\n",
        b"_\r\n",  # RESP3
        b"-ERR something broke\r\n",
        b"-BUSY Redis is busy running a script\r\n",
        b"+OK\r\n",
        b":",  # half a reply, then the server closes
    ],
)
def test_a_reply_of_the_wrong_shape_fails_closed_and_drops_the_connection(reply: bytes) -> None:
    def half_then_close(connection: socket.socket) -> None:
        connection.sendall(reply)
        connection.shutdown(socket.SHUT_RDWR)

    server = ScriptedRedis([half_then_close if reply == b":" else reply])
    try:
        store = _scripted_store(server)
        with pytest.raises(ReplayStoreUnavailableError) as info:
            store.claim(_tid(), 1, time.time() + 60)
        assert info.value.reason == "replay-store-unavailable"
        assert not store._resp.get().connected
        # The next claim is answered on a new connection, by its own reply.
        assert store.claim(_tid(), 1, time.time() + 60) is FRESH
        assert server.connections == 2
        store.close()
    finally:
        server.close()


def test_a_reply_trickling_in_past_the_timeout_fails_closed_in_time() -> None:
    def trickle(connection: socket.socket) -> None:
        for byte in b"-ERR " + b"x" * 100:
            connection.sendall(bytes([byte]))
            time.sleep(0.05)  # the misbehaving server's pace, not a wait in the test

    server = ScriptedRedis([trickle])
    try:
        store = _scripted_store(server, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(ReplayStoreUnavailableError):
            store.claim(_tid(), 1, time.time() + 60)
        assert time.monotonic() - started < 1.5
        store.close()
    finally:
        server.close()


def test_a_silent_server_times_out() -> None:
    server = ScriptedRedis([lambda c: None])  # reads the claim, never answers
    try:
        store = _scripted_store(server, timeout=0.2)
        started = time.monotonic()
        with pytest.raises(ReplayStoreUnavailableError):
            store.claim(_tid(), 1, time.time() + 60)
        assert time.monotonic() - started < 1.5
        store.close()
    finally:
        server.close()


def test_noscript_loads_the_script_once_and_claims_again() -> None:
    from rpcsec.session._redis_store import CLAIM_SCRIPT

    server = ScriptedRedis([b"-NOSCRIPT No matching script.\r\n"])
    try:
        store = _scripted_store(server)
        sha = store._claim_script.sha.encode()
        server.replies.append(b"$40\r\n" + sha + b"\r\n")  # SCRIPT LOAD's answer
        server.replies.append(b":1\r\n")  # the claim, sent again
        assert store.claim(_tid(), 1, time.time() + 60) is REPLAY
        assert server.requests[1] == encode_command(b"SCRIPT", b"LOAD", CLAIM_SCRIPT.encode())
        assert server.requests[2] == server.requests[0]
        # A server that loads something else is not trusted with the claim.
        server.replies[:] = [b"-NOSCRIPT x\r\n", b"$40\r\n" + b"0" * 40 + b"\r\n"]
        with pytest.raises(ReplayStoreUnavailableError):
            store.claim(_tid(), 1, time.time() + 60)
        store.close()
    finally:
        server.close()


# -- a real Redis ------------------------------------------------------------------------------


def _redis(tmp_path, *extra: str):
    from helpers.redis_server import RedisServer, require_redis

    require_redis()
    return RedisServer(tmp_path / "redis", extra_args=extra).start()


def test_claims_over_a_unix_socket_are_shared_with_tcp(tmp_path) -> None:
    path = tmp_path / "redis.sock"
    server = _redis(tmp_path, "--unixsocket", str(path), "--unixsocketperm", "700")
    try:
        unix = RedisReplayStore(f"unix://{path}", timeout=T)
        tcp = RedisReplayStore(server.url, timeout=T)
        assert unix._resp is not None and unix._resp.address.path == str(path)
        ticket, expires = _tid(), time.time() + 60
        assert unix.claim(ticket, 1, expires) is FRESH
        assert tcp.claim(ticket, 1, expires) is REPLAY  # one store, whichever socket
        tcp.revoke(ticket, expires)
        assert unix.claim(ticket, 2, expires) is REVOKED
        unix.close()
        tcp.close()
    finally:
        server.stop()


def test_auth_and_database_are_honoured_and_a_wrong_password_fails_closed(tmp_path) -> None:
    import redis

    server = _redis(tmp_path)
    try:
        redis.Redis(port=server.port).config_set("requirepass", "s3cret")
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        store = RedisReplayStore(url, timeout=T, prefix="auth:")
        ticket, expires = _tid(), time.time() + 60
        assert store.claim(ticket, 1, expires) is FRESH
        assert store.claim(ticket, 1, expires) is REPLAY
        keys = store.client.keys("auth:*")
        assert any(key.endswith(b":window") for key in keys)  # in database 3 ...
        other = RedisReplayStore(url.replace("/3", "/0"), timeout=T, prefix="auth:")
        assert not other.client.keys("auth:*")  # ... not 0
        wrong = RedisReplayStore(
            f"redis://:wrong@127.0.0.1:{server.port}/3", timeout=T, verify_config=False
        )
        wrong._marker_pending = False  # straight to the claim's own connection
        with pytest.raises(ReplayStoreUnavailableError):
            wrong.claim(ticket, 2, expires)
        for each in (store, other, wrong):
            each.close()
    finally:
        server.stop()


def test_a_connection_redis_closed_is_replaced_before_the_next_claim(tmp_path) -> None:
    """CLIENT KILL (or Redis' idle ``timeout``): the socket is readable (EOF) before the next
    claim, which connects afresh instead of failing."""
    server = _redis(tmp_path)
    try:
        store = RedisReplayStore(server.url, timeout=T)
        ticket, expires = _tid(), time.time() + 60
        assert store.claim(ticket, 1, expires) is FRESH
        connection = store._resp.get()
        first = connection._sock
        store.client.client_kill_filter(_type="normal", skipme=True)
        _poll(lambda: connection._readable.poll(0))
        assert store.claim(ticket, 2, expires) is FRESH
        assert connection._sock is not first
        assert store.claim(ticket, 2, expires) is REPLAY
        store.close()
    finally:
        server.stop()


def test_redis_killed_in_the_middle_of_a_claim_fails_closed_then_recovers(tmp_path) -> None:
    """Redis paused while a claim waits for its answer, then killed: the claim raises
    UNAVAILABLE (EOF, long before its timeout); after a restart (empty) the store connects
    afresh, refuses the old ticket (it predates the new dataset) and serves a new one."""
    server = _redis(tmp_path)
    try:
        store = RedisReplayStore(server.url, timeout=5.0)
        issued = time.time()
        ticket, expires = _tid(), issued + 600
        assert store.claim(ticket, 1, expires, issued_at=issued) is FRESH
        os.kill(server.process.pid, signal.SIGSTOP)
        outcome: list[object] = []

        def claim() -> None:
            try:
                outcome.append(store.claim(ticket, 2, expires, issued_at=issued))
            except ReplayStoreUnavailableError as exc:
                outcome.append(exc)

        worker = threading.Thread(target=claim)
        started = time.monotonic()
        worker.start()
        _poll(lambda: len(_established(server.port)) >= 2)  # the claim's socket is open
        server.kill()
        worker.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], ReplayStoreUnavailableError)
        assert time.monotonic() - started < 4.0  # EOF, not the 5 s timeout
        server.start()
        assert store.claim(ticket, 3, expires, issued_at=issued) is REVOKED
        later = time.time() + 2  # beyond max_clock_skew
        fresh = _tid()
        assert store.claim(fresh, 1, later + 600, issued_at=later) is FRESH
        assert store.claim(fresh, 1, later + 600, issued_at=later) is REPLAY
        store.close()
    finally:
        server.stop()


def _established(port: int) -> list[str]:
    """Established TCP connections to ``port`` on loopback (/proc/net/tcp)."""
    lines = []
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].split(":")[1], 16) == port:
                lines.append(line)
    return lines


def test_a_client_whose_connections_this_module_cannot_make_stays_on_redis_py(tmp_path) -> None:
    """A custom connection class (TLS is the real case): claims go through redis-py's
    connection with the stray-bytes guard, same verdicts."""
    import redis

    class Custom(redis.Connection):
        pass

    server = _redis(tmp_path)
    try:
        pool = redis.ConnectionPool(
            connection_class=Custom, host="127.0.0.1", port=server.port, socket_timeout=T
        )
        client = redis.Redis(connection_pool=pool)
        store = RedisReplayStore(client, timeout=T)
        assert store._resp is None and store._connections is not None
        ticket, expires = _tid(), time.time() + 60
        assert store.claim(ticket, 1, expires) is FRESH
        keys, args = store._layout.claim_call(ticket, 2, expires, None)
        connection = store._connections.get()
        connection.send_packed_command([store._encoder.encode(keys, args)], check_health=False)
        assert connection.can_read(timeout=T)  # a stale ":0" waits on the connection
        assert store.claim(ticket, 2, expires) is REPLAY
        store.close()
        client.close()
    finally:
        server.stop()


def test_a_connection_refuses_a_bad_timeout() -> None:
    with pytest.raises(ValueError):
        RespConnection(RespAddress("127.0.0.1"), 0)


# -- asyncio -----------------------------------------------------------------------------------


def _async_scripted_store(server: ScriptedRedis, timeout: float = T):
    from rpcsec.session import AsyncRedisReplayStore

    store = AsyncRedisReplayStore(server.url, timeout=timeout, verify_config=False)
    store._marker_pending = False
    return store


@pytest.mark.parametrize("reply", [b"$1\r\n0\r\n", b":0\r\n:0\r\n", b":9\r\n", b"-ERR x\r\n"])
async def test_async_a_reply_of_the_wrong_shape_fails_closed(reply: bytes) -> None:
    server = ScriptedRedis([reply])
    try:
        store = _async_scripted_store(server)
        with pytest.raises(ReplayStoreUnavailableError):
            await store.claim(_tid(), 1, time.time() + 60)
        assert not any(connection.connected for connection in store._resp._idle)
        assert await store.claim(_tid(), 1, time.time() + 60) is FRESH  # a new connection
        assert server.connections == 2
        await store.aclose()
    finally:
        server.close()


async def test_async_a_silent_server_times_out_and_its_late_reply_is_never_read() -> None:
    import asyncio

    release = threading.Event()

    def late(connection: socket.socket) -> None:
        release.wait(5)
        connection.sendall(b":0\r\n")  # after the claim gave up

    server = ScriptedRedis([late])
    try:
        store = _async_scripted_store(server, timeout=0.2)
        started = time.monotonic()
        with pytest.raises(ReplayStoreUnavailableError):
            await store.claim(_tid(), 1, time.time() + 60)
        assert time.monotonic() - started < 1.5
        release.set()
        await asyncio.sleep(0)
        server.replies.append(b":1\r\n")
        assert await store.claim(_tid(), 1, time.time() + 60) is REPLAY  # its own answer
        await store.aclose()
    finally:
        release.set()
        server.close()


async def test_async_claims_over_a_unix_socket(tmp_path) -> None:
    from rpcsec.session import AsyncRedisReplayStore

    path = tmp_path / "redis.sock"
    server = _redis(tmp_path, "--unixsocket", str(path), "--unixsocketperm", "700")
    try:
        store = AsyncRedisReplayStore(f"unix://{path}", timeout=T)
        assert store._resp is not None and store._resp.address.path == str(path)
        ticket, expires = _tid(), time.time() + 60
        assert await store.claim(ticket, 1, expires) is FRESH
        assert await store.claim(ticket, 1, expires) is REPLAY
        await store.aclose()
    finally:
        server.stop()


async def test_async_a_client_this_module_cannot_connect_for_stays_on_redis_py(tmp_path) -> None:
    import redis.asyncio

    from rpcsec.session import AsyncRedisReplayStore

    class Custom(redis.asyncio.Connection):
        pass

    server = _redis(tmp_path)
    try:
        pool = redis.asyncio.ConnectionPool(
            connection_class=Custom, host="127.0.0.1", port=server.port, socket_timeout=T
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        store = AsyncRedisReplayStore(client, timeout=T)
        assert store._resp is None and store._connections is not None
        ticket, expires = _tid(), time.time() + 60
        assert await store.claim(ticket, 1, expires) is FRESH
        assert await store.claim(ticket, 1, expires) is REPLAY
        await store.aclose()
        await client.aclose()
    finally:
        server.stop()


async def test_async_a_connection_redis_closed_is_replaced_before_the_next_claim(tmp_path) -> None:
    import asyncio

    from rpcsec.session import AsyncRedisReplayStore

    server = _redis(tmp_path)
    try:
        store = AsyncRedisReplayStore(server.url, timeout=T)
        ticket, expires = _tid(), time.time() + 60
        assert await store.claim(ticket, 1, expires) is FRESH
        (connection,) = store._resp._idle
        first = connection._protocol
        await store.client.client_kill_filter(_type="normal", skipme=True)
        deadline = time.monotonic() + 10
        while first.usable:  # connection_lost arrived
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert await store.claim(ticket, 2, expires) is FRESH
        assert connection._protocol is not first
        assert await store.claim(ticket, 2, expires) is REPLAY
        await store.aclose()
    finally:
        server.stop()
