"""The replay store's own Redis sockets: one pre-encoded request out, one strict reply in.

Why not redis-py for the claim, the one command every call of every replica sends: with the
request already pre-encoded (``ClaimEncoder``), what redis-py still did per claim was a poll
for stray bytes, a poll before the send and another before the receive (a Python-level socket
timeout), a ``getpid`` (fork check) and its generic reply machinery -- six system calls where
three do. Here a claim is ``poll(0)`` (nothing stale waiting), ``sendall`` of the request and
``recv_into`` of the reply; the timeouts are set once in the kernel (``SO_SNDTIMEO`` /
``SO_RCVTIMEO``), the fork check is a counter bumped by ``os.register_at_fork``. Measured in
``benchmarks/session_store.py`` (paired rounds, wall and client CPU per claim).

Replies are parsed by ``_resp.ReplyParser`` (strict, in Python: no native parser sees them).

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
from typing import Any, Generic, TypeVar

from ._resp import OK, Reply, ReplyParser, RespAddress, RespProtocolError

__all__ = [
    "AsyncRespConnection",
    "BoundedConnections",
    "RespConnection",
    "ThreadRespConnections",
    "resp_connections",
]

T = TypeVar("T")
_RECV_SIZE = 1024


def _check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError("timeout must be a positive number of seconds")
    return float(timeout)


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
        self.address = address
        self.timeout = _check_timeout(timeout)
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
                if reply != OK:
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
        self.address = address
        self.timeout = _check_timeout(timeout)  # now, not on the first claim
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
        self.address = address
        self.timeout = _check_timeout(timeout)
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
            if await self._round_trip(protocol, request) != OK:
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


C = TypeVar("C")


class BoundedConnections(Generic[C]):
    """An asyncio store's claim connections, whatever makes them: at most ``limit`` at once
    (a claim beyond waits for one, at most ``timeout``); an idle one is reused. An exchange
    that fails or is cancelled has ``discard(connection)`` awaited first (what is on its
    socket is stale), so a late reply is never read as another claim's answer."""

    def __init__(
        self,
        make: Callable[[], C],
        limit: int,
        timeout: float,
        discard: Callable[[C], Awaitable[object]] | None = None,
        address: RespAddress | None = None,
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a positive integer")
        self.timeout = _check_timeout(timeout)
        self.address = address  # where the connections go, when they are our own sockets
        self._make = make
        self._discard = discard
        self._limit = limit
        self._slots: asyncio.Semaphore | None = None
        self._idle: list[C] = []
        self._every: weakref.WeakSet[Any] = weakref.WeakSet()

    async def call(self, exchange: Callable[[C], Awaitable[T]]) -> T:
        """Run ``exchange(connection)`` on an idle connection (or a new one)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limit)
        if self._slots.locked():  # every connection busy: wait for one, not forever
            await asyncio.wait_for(self._slots.acquire(), self.timeout)
        else:
            await self._slots.acquire()  # immediate (wait_for would cost a task per claim)
        connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._make()
            self._every.add(connection)
        try:
            return await exchange(connection)
        except BaseException:
            if self._discard is not None:
                await self._discard(connection)
            raise
        finally:
            self._idle.append(connection)
            self._slots.release()

    def drain(self) -> list[C]:
        """Forget the idle connections; every connection made and still alive (to close)."""
        self._idle.clear()
        return list(self._every)


def resp_connections(
    address: RespAddress, timeout: float, limit: int
) -> BoundedConnections[AsyncRespConnection]:
    """The asyncio store's own RESP connections (each closes itself on an error, a timeout or
    a cancellation: ``AsyncRespConnection.exchange``)."""
    timeout = _check_timeout(timeout)
    return BoundedConnections(
        lambda: AsyncRespConnection(address, timeout), limit, timeout, address=address
    )
