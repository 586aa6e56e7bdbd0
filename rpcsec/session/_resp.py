"""The replay store's own Redis connection: one pre-encoded request out, one strict reply in.

Why not redis-py for the claim, the one command every call of every replica sends: with the
request already pre-encoded (``ClaimEncoder``), what redis-py still did per claim was a poll
for stray bytes, a poll before the send and another before the receive (a Python-level socket
timeout), a ``getpid`` (fork check) and its generic reply machinery -- six system calls where
three do. Here a claim is ``poll(0)`` (nothing stale waiting), ``sendall`` of the request and
``recv_into`` of the reply; the timeouts are set once in the kernel (``SO_SNDTIMEO`` /
``SO_RCVTIMEO``), the fork check is a counter bumped by ``os.register_at_fork``. Measured in
``benchmarks/session_store.py`` (paired rounds, wall and client CPU per claim).

The reply is parsed here, in Python, strictly (``ReplyParser``), so bytes from the network reach
no native parser: the RESP2 replies the store can get (https://redis.io/docs/latest/develop/
reference/protocol-spec/) are an integer (a claim's verdict, ``:0\\r\\n``), an error
(``-NOSCRIPT ...\\r\\n``), a simple string (``+OK`` to AUTH / SELECT) and a short bulk string
(``SCRIPT LOAD``'s SHA1). Anything else -- arrays, nulls, RESP3 types, a reply longer than
``MAX_REPLY``, bytes after the reply (one request is outstanding at a time, so those can only be
stray) -- is a ``RespProtocolError``: the connection is closed and the caller fails closed.

Failure rules (the store's): any error closes the connection first, so a reply arriving late
is never read as a later request's answer; and before each send one ``poll(0)`` (the third
system call) checks that nothing is waiting on the socket -- stray bytes, or the EOF of a
connection Redis closed (a restart, an idle timeout) -- and connects afresh if anything is.
A request is never sent twice. TLS (``rediss://``) and credential providers stay on
redis-py's connections.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

__all__ = [
    "MAX_REPLY",
    "AsyncRespConnection",
    "AsyncRespConnections",
    "Reply",
    "ReplyParser",
    "RespAddress",
    "RespConnection",
    "RespProtocolError",
    "ThreadRespConnections",
    "encode_command",
]

T = TypeVar("T")

MAX_REPLY = 512
"""Longest reply the store accepts (its longest is an error line or a 40-byte SHA1)."""
_RECV_SIZE = 1024

INTEGER, ERROR, SIMPLE, BULK = b":", b"-", b"+", b"$"


class RespProtocolError(Exception):
    """Redis sent something the store never asks for (or more than one reply)."""


class Reply(NamedTuple):
    """One RESP2 reply: its type byte (``INTEGER``, ``ERROR``, ``SIMPLE``, ``BULK``) and its
    payload (the digits, the error or status text, the bulk string's bytes)."""

    kind: bytes
    value: bytes


_COMPLETE = {
    b":0\r\n": Reply(INTEGER, b"0"),
    b":1\r\n": Reply(INTEGER, b"1"),
    b":2\r\n": Reply(INTEGER, b"2"),
    b"+OK\r\n": Reply(SIMPLE, b"OK"),
}
"""The replies a claim or a connection's setup almost always gets, whole in one read."""


def _line(data: bytes) -> bytes:
    """A status, error or integer line's text: printable ASCII, no CR or LF inside."""
    if not all(0x20 <= byte < 0x7F for byte in data):
        raise RespProtocolError("reply line holds control or non-ASCII bytes")
    return data


def _digits(data: bytes, *, signed: bool) -> bytes:
    body = data[1:] if signed and data[:1] == b"-" else data
    if not body or len(body) > 19 or not body.isdigit():
        raise RespProtocolError("malformed number in reply")
    return data


class ReplyParser:
    """Sans-IO: ``feed`` bytes as they arrive; it returns the ``Reply`` once one is complete,
    ``None`` while more bytes are needed, and raises ``RespProtocolError`` on anything outside
    the grammar in the module doc. After an error the parser is unusable (sticky), like the
    connection it belongs to."""

    __slots__ = ("_broken", "_buffer")

    def __init__(self) -> None:
        self._buffer = b""
        self._broken = False

    def feed(self, data: bytes) -> Reply | None:
        if self._broken:
            raise RespProtocolError("the reply stream already failed")
        if not self._buffer:
            complete = _COMPLETE.get(data)
            if complete is not None:
                return complete
        try:
            return self._parse(self._buffer + data)
        except RespProtocolError:
            self._broken = True
            self._buffer = b""
            raise

    def _parse(self, buffer: bytes) -> Reply | None:
        if len(buffer) > MAX_REPLY:
            raise RespProtocolError("reply too long")
        kind = buffer[:1]
        if kind not in (INTEGER, ERROR, SIMPLE, BULK):
            if not kind:
                self._buffer = buffer
                return None
            raise RespProtocolError("unexpected reply type")
        end = buffer.find(b"\r\n")
        if end < 0:
            if b"\r" in buffer[:-1] or b"\n" in buffer:
                raise RespProtocolError("bare CR or LF in a reply line")
            self._buffer = buffer
            return None
        line = buffer[1:end]
        if kind == BULK:
            length = int(_digits(line, signed=False))
            total = end + 2 + length + 2
            if total > MAX_REPLY:
                raise RespProtocolError("reply too long")
            if len(buffer) < total:
                self._buffer = buffer
                return None
            if buffer[total - 2 : total] != b"\r\n":
                raise RespProtocolError("bulk string not terminated")
            value = buffer[end + 2 : total - 2]
        else:
            total = end + 2
            value = _line(line)
            if kind == INTEGER:
                _digits(value, signed=True)
        if len(buffer) != total:
            raise RespProtocolError("bytes after the reply")
        self._buffer = b""
        return Reply(kind, value)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def encode_command(*parts: bytes) -> bytes:
    """A RESP2 request (an array of bulk strings), as redis-py's ``pack_command`` sends it."""
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(part) for part in parts)


@dataclass(frozen=True)
class RespAddress:
    """Where and how to connect: ``host``/``port`` (TCP, ``TCP_NODELAY``) or ``path`` (a unix
    socket), the AUTH credentials and the database to SELECT."""

    host: str | None = None
    port: int = 6379
    path: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0

    @classmethod
    def from_redis_py(cls, connection_class: Any, kwargs: dict[str, Any]) -> RespAddress | None:
        """From a redis-py pool's connection class and kwargs (sync or asyncio); ``None`` when
        this connection cannot do what redis-py's would (TLS, credential providers, a subclass,
        anything but plain TCP or a unix socket)."""
        import redis.asyncio.connection
        import redis.connection

        tcp = (redis.connection.Connection, redis.asyncio.connection.Connection)
        unix = (
            redis.connection.UnixDomainSocketConnection,
            redis.asyncio.connection.UnixDomainSocketConnection,
        )
        if kwargs.get("credential_provider") is not None:
            return None
        db = kwargs.get("db", 0) or 0
        if isinstance(db, str) and db.isdigit():
            db = int(db)
        if not isinstance(db, int):
            return None
        username, password = kwargs.get("username"), kwargs.get("password")
        if not all(value is None or isinstance(value, str) for value in (username, password)):
            return None
        if connection_class in tcp:
            host = kwargs.get("host", "localhost")
            port = int(kwargs.get("port", 6379) or 6379)
            return cls(str(host), port, None, username, password, db)
        if connection_class in unix and kwargs.get("path"):
            return cls(None, 6379, str(kwargs["path"]), username, password, db)
        return None

    def setup(self) -> list[bytes]:
        """The requests a new connection sends before any claim (each answered ``+OK``)."""
        requests = []
        if self.password is not None:
            names = [self.password] if self.username is None else [self.username, self.password]
            requests.append(encode_command(b"AUTH", *(name.encode() for name in names)))
        if self.db:
            requests.append(encode_command(b"SELECT", b"%d" % self.db))
        return requests


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))


_fork_generation = 0


def _forked() -> None:
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class RespConnection:
    """One socket to Redis, used by one thread at a time: ``exchange(request) -> Reply``.

    ``timeout`` bounds the connect, each send and each receive (in the kernel), and the whole
    exchange (checked when a reply needs more than one read)."""

    def __init__(self, address: RespAddress, timeout: float) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.address = address
        self.timeout = float(timeout)
        self._setup = address.setup()
        self._sock: socket.socket | None = None
        self._readable = select.poll()
        self._buffer = bytearray(_RECV_SIZE)
        self._view = memoryview(self._buffer)

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _connect(self) -> socket.socket:
        address = self.address
        if address.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                sock.connect(address.path)
            except BaseException:
                sock.close()
                raise
        else:
            assert address.host is not None
            sock = socket.create_connection((address.host, address.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            try:  # timeouts in the kernel: no poll() before every send and receive
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self.timeout))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(self.timeout))
                sock.settimeout(None)
            except OSError:  # pragma: no cover - a platform without them: Python's timeout
                sock.settimeout(self.timeout)
            self._sock = sock
            self._readable = select.poll()
            self._readable.register(sock, select.POLLIN | select.POLLPRI)
            for request in self._setup:
                reply = self._round_trip(sock, request)
                if reply != _COMPLETE[b"+OK\r\n"]:
                    raise RespProtocolError("Redis refused AUTH or SELECT")
        except BaseException:
            self._sock = None
            sock.close()
            raise
        return sock

    def _round_trip(self, sock: socket.socket, request: bytes) -> Reply:
        sock.sendall(request)
        count = sock.recv_into(self._buffer)
        if not count:
            raise ConnectionResetError("Redis closed the connection")
        parser = ReplyParser()
        reply = parser.feed(bytes(self._view[:count]))
        if reply is not None:
            return reply
        deadline = time.monotonic() + self.timeout
        while True:  # a reply in pieces (rare: it is a few bytes)
            count = sock.recv_into(self._buffer)
            if not count:
                raise ConnectionResetError("Redis closed the connection mid-reply")
            reply = parser.feed(bytes(self._view[:count]))
            if reply is not None:
                return reply
            if time.monotonic() > deadline:
                raise TimeoutError("Redis' reply did not complete in time")

    def exchange(self, request: bytes) -> Reply:
        """Send ``request`` (one pre-encoded command) and return its reply. A socket with
        anything readable before the send (stray bytes, or EOF: Redis closed it) is replaced
        first, so nothing already waiting is ever taken for this request's reply.

        Raises:
            OSError: connect, send or receive failed (timeouts and EOF included).
            RespProtocolError: the reply is outside the store's grammar.
        Either way the connection is closed first; the request is never sent twice."""
        sock = self._sock
        try:
            if sock is None or self._readable.poll(0):
                self.close()
                sock = self._connect()
            return self._round_trip(sock, request)
        except BaseException:
            self.close()
            raise


class ThreadRespConnections:
    """One ``RespConnection`` per thread (no pool checkout, no lock per claim): the number of
    sockets is the number of threads that claim, a gRPC server's bounded pool. A forked child
    connects afresh and never touches the parent's socket (two processes reading one socket
    would take each other's replies)."""

    def __init__(self, address: RespAddress, timeout: float) -> None:
        RespConnection(address, timeout)  # validates now, not on the first claim
        self.address = address
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._every: weakref.WeakSet[RespConnection] = weakref.WeakSet()

    def get(self) -> RespConnection:
        local = self._local
        connection: RespConnection | None = getattr(local, "connection", None)
        if connection is None or local.generation != _fork_generation:
            connection = RespConnection(self.address, self.timeout)
            local.connection, local.generation = connection, _fork_generation
            with self._lock:
                self._every.add(connection)
        return connection

    def close(self) -> None:
        with self._lock:
            every = list(self._every)
        for connection in every:
            connection.close()


# -- asyncio -----------------------------------------------------------------------------------


class _RespProtocol(asyncio.Protocol):
    """One asyncio connection's receiving side: bytes go to the one exchange waiting for a
    reply; bytes nobody waits for (a reply that came after its claim gave up) make the
    connection unusable, and it is closed before anyone could read them as an answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Reply] | None = None
        self.parser = ReplyParser()
        self.usable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self._unusable()
            return
        try:
            reply = self.parser.feed(data)
        except RespProtocolError as exc:
            self._unusable()
            waiter.set_exception(exc)
            return
        if reply is not None:
            self.waiter = None
            waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("Redis closed the connection"))

    def _unusable(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[Reply]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("Redis did not answer in time"))


class AsyncRespConnection:
    """``RespConnection`` for asyncio: ``await exchange(request) -> Reply`` on a transport of
    its own (``TCP_NODELAY``: asyncio's default for TCP), one exchange at a time. A failure,
    a timeout or a cancellation closes it first."""

    def __init__(self, address: RespAddress, timeout: float) -> None:
        RespConnection(address, timeout)  # the same checks
        self.address = address
        self.timeout = float(timeout)
        self._setup = address.setup()
        self._protocol: _RespProtocol | None = None

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.usable = False
            if protocol.transport is not None:
                protocol.transport.close()

    async def _connect(self) -> _RespProtocol:
        loop = asyncio.get_running_loop()
        address = self.address
        if address.path is not None:
            connecting = loop.create_unix_connection(_RespProtocol, address.path)
        else:
            assert address.host is not None
            connecting = loop.create_connection(_RespProtocol, address.host, address.port)
        _transport, protocol = await asyncio.wait_for(connecting, self.timeout)
        self._protocol = protocol
        for request in self._setup:
            if await self._round_trip(protocol, request) != _COMPLETE[b"+OK\r\n"]:
                raise RespProtocolError("Redis refused AUTH or SELECT")
        return protocol

    async def _round_trip(self, protocol: _RespProtocol, request: bytes) -> Reply:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Reply] = loop.create_future()
        protocol.parser = ReplyParser()
        protocol.waiter = waiter
        transport = protocol.transport
        if transport is None or transport.is_closing() or not protocol.usable:
            raise ConnectionResetError("Redis closed the connection")
        transport.write(request)
        timer = loop.call_later(self.timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    async def exchange(self, request: bytes) -> Reply:
        """As ``RespConnection.exchange``."""
        try:
            protocol = self._protocol
            if protocol is None or not protocol.usable:
                self.close()
                protocol = await self._connect()
            return await self._round_trip(protocol, request)
        except BaseException:  # an error, a timeout or a cancellation: what may come is stale
            self.close()
            raise


class AsyncRespConnections:
    """The asyncio store's claim connections: at most ``limit`` at once (a claim beyond waits
    for one, at most ``timeout``); an idle one is reused, a failed one reconnects."""

    def __init__(self, address: RespAddress, timeout: float, limit: int) -> None:
        AsyncRespConnection(address, timeout)  # validates now
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a positive integer")
        self.address = address
        self.timeout = float(timeout)
        self._limit = limit
        self._slots: asyncio.Semaphore | None = None
        self._idle: list[AsyncRespConnection] = []
        self._every: weakref.WeakSet[AsyncRespConnection] = weakref.WeakSet()

    async def call(self, exchanges: Callable[[AsyncRespConnection], Awaitable[T]]) -> T:
        """Run ``exchanges(connection)`` on an idle connection (or a new one)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limit)
        if self._slots.locked():  # every connection busy: wait for one, not forever
            await asyncio.wait_for(self._slots.acquire(), self.timeout)
        else:
            await self._slots.acquire()  # immediate (wait_for would cost a task per claim)
        connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = AsyncRespConnection(self.address, self.timeout)
            self._every.add(connection)
        try:
            return await exchanges(connection)
        finally:
            self._idle.append(connection)
            self._slots.release()

    def close(self) -> None:
        self._idle.clear()
        for connection in list(self._every):
            connection.close()
