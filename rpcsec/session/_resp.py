"""RESP2, the Redis protocol, as far as the replay store speaks it: requests out, strict replies in.

Sans-IO (the sockets are ``_redis_socket``). The reply is parsed here, in Python, strictly
(``ReplyParser``), so bytes from the network reach no native parser: the RESP2 replies the
store can get (https://redis.io/docs/latest/develop/reference/protocol-spec/) are an integer
(a claim's verdict, ``:0\\r\\n``), an error (``-NOSCRIPT ...\\r\\n``), a simple string (``+OK``
to AUTH / SELECT) and a short bulk string (``SCRIPT LOAD``'s SHA1). Anything else -- arrays,
nulls, RESP3 types, a reply longer than ``MAX_REPLY``, bytes after the reply (one request is
outstanding at a time, so those can only be stray) -- is a ``RespProtocolError``: the
connection is closed and the caller fails closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "BULK",
    "COMPLETE",
    "ERROR",
    "INTEGER",
    "MAX_REPLY",
    "OK",
    "SIMPLE",
    "Reply",
    "ReplyParser",
    "RespAddress",
    "RespProtocolError",
    "encode_command",
]

MAX_REPLY = 512
"""Longest reply the store accepts (its longest is an error line or a 40-byte SHA1)."""

INTEGER, ERROR, SIMPLE, BULK = b":", b"-", b"+", b"$"


class RespProtocolError(Exception):
    """Redis sent something the store never asks for (or more than one reply)."""


class Reply(NamedTuple):
    """One RESP2 reply: its type byte (``INTEGER``, ``ERROR``, ``SIMPLE``, ``BULK``) and its
    payload (the digits, the error or status text, the bulk string's bytes)."""

    kind: bytes
    value: bytes


COMPLETE = {
    b":0\r\n": Reply(INTEGER, b"0"),
    b":1\r\n": Reply(INTEGER, b"1"),
    b":2\r\n": Reply(INTEGER, b"2"),
    b"+OK\r\n": Reply(SIMPLE, b"OK"),
}
"""The replies a claim or a connection's setup almost always gets, whole in one read."""
OK = COMPLETE[b"+OK\r\n"]


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
            complete = COMPLETE.get(data)
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
