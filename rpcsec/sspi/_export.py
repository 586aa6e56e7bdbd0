"""The ExportSecurityContext blob, and the rule that a blob opens once per credentials handle.

An exported context holds its message keys and where its sequence numbers stand. Two live
contexts continuing the same blob in the same key space would seal different messages under
the same (key, nonce) -- with AES-GCM that reveals the XOR of the plaintexts and lets the
authentication key be recovered. So, as SSPI does with SECPKG_CONTEXT_EXPORT_DELETE_OLD, the
exporter is retired by ``export()`` and each blob carries a random id that a credentials
handle accepts once (``ImportLedger``). Importing one blob into *several* processes (several
handles) is allowed for a caller that keeps their sequence spaces apart itself (the session
layer's tickets do, per call); the docstring of ``import_security_context`` says so.

``decode`` validates the whole structure and every value before anything is built from it:
bad input raises ``InvalidTokenError``, never ``struct.error``/``UnicodeDecodeError``.

Format, version 2 (all integers big-endian; ``str8``/``str16`` = u8/u16 length + UTF-8,
``bytes16``/``bytes32`` = u16/u32 length + bytes)::

    "RX" | version:u8 = 2 | flags:u8 (1 client, 2 expires, 4 peer expires, 8 received,
         16 delegation)
    | blob_id[16] | granted:u32 | requested:u32 | level:u8 | peer level:u8 | window:u32
    | send_seq:u64 | highest:u64 (flag 8; else nothing was received: -1)
    | expires:f64 (flag 2) | peer expires:f64 (flag 4)
    | package:str8 | peer principal:str16 | peer package:str8 | outbound:bytes16 | inbound:bytes16
    | ngroups:u16 | str16 * ngroups | nchain:u16 | str16 * nchain | [delegation:bytes32 (flag 16)]

Binary rather than the JSON of version 1 because the blob is what a session ticket seals, and
a ticket is both the handle every call carries and what the server keeps per idle context: a
typical x509 blob is ~190 bytes instead of ~480. Version 1 blobs are not read (a ticket issued
before the change is ``context-unknown``: the client binds again once).
"""

from __future__ import annotations

import math
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._errors import BusyError, InvalidTokenError, ReplayError

__all__ = ["MAX_EXPORT_SIZE", "ExportedContext", "ExportedPeer", "ImportLedger"]

MAX_EXPORT_SIZE = 64 * 1024
_VERSION = 2
_ID_SIZE = 16
_MAX_SECRET = 1024
_MAX_DELEGATION = 32 * 1024
_MAX_WINDOW = 1 << 20
_MAX_NAMES = 256
_MAX_NAME = 1024
_MAX_LEDGER = 1 << 16


_MAGIC = b"RX"
_FIXED = struct.Struct(">2sBB16sIIBBIQ")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_CLIENT, _EXPIRES, _PEER_EXPIRES, _RECEIVED, _DELEGATION = 1, 2, 4, 8, 16
_ALL_FLAGS = _CLIENT | _EXPIRES | _PEER_EXPIRES | _RECEIVED | _DELEGATION


def _malformed(what: str) -> InvalidTokenError:
    return InvalidTokenError(f"exported context is malformed: {what}")


def _check_int(value: int, what: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise _malformed(what)
    return value


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed(what) from None


class _Reader:
    """Reads the fields of one blob in order; every read is bounds-checked."""

    __slots__ = ("_data", "_offset")

    def __init__(self, data: bytes, offset: int) -> None:
        self._data = data
        self._offset = offset

    def take(self, size: int, what: str) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise _malformed(f"{what} is truncated")
        raw = self._data[self._offset : end]
        self._offset = end
        return raw

    def number(self, layout: struct.Struct, what: str) -> int:
        (value,) = layout.unpack(self.take(layout.size, what))
        return int(value)

    def time(self, what: str) -> float:
        (value,) = _F64.unpack(self.take(_F64.size, what))
        if not math.isfinite(value):
            raise _malformed(what)
        return float(value)

    def blob(self, length: struct.Struct, what: str, limit: int) -> bytes:
        size = self.number(length, what)
        if size > limit:
            raise _malformed(what)
        return self.take(size, what)

    def text(self, length: struct.Struct, what: str) -> str:
        return _utf8(self.blob(length, what, _MAX_NAME), what)

    def names(self, what: str) -> tuple[str, ...]:
        count = self.number(_U16, what)
        if count > _MAX_NAMES:
            raise _malformed(what)
        return tuple(self.text(_U16, what) for _ in range(count))

    def end(self) -> None:
        if self._offset != len(self._data):
            raise _malformed("trailing bytes")


def _field(length: struct.Struct, raw: bytes, what: str, limit: int) -> bytes:
    if len(raw) > limit:
        raise ValueError(f"{what} is too long for an exported context")
    return length.pack(len(raw)) + raw


def _text(length: struct.Struct, value: str, what: str) -> bytes:
    return _field(length, value.encode("utf-8"), what, _MAX_NAME)


def _names(values: tuple[str, ...], what: str) -> bytes:
    if len(values) > _MAX_NAMES:
        raise ValueError(f"too many {what} for an exported context")
    return _U16.pack(len(values)) + b"".join(_text(_U16, value, what) for value in values)


@dataclass(frozen=True, slots=True)
class ExportedPeer:
    """The peer's AccessToken as the blob carries it (delegated credentials never travel)."""

    principal: str
    package: str
    level: int
    groups: tuple[str, ...]
    chain: tuple[str, ...]
    expires: float | None


@dataclass(frozen=True, slots=True)
class ExportedContext:
    """Everything ImportSecurityContext needs, already type-checked."""

    blob_id: bytes
    package: str
    client: bool
    granted: int
    requested: int
    level: int
    outbound: bytes
    inbound: bytes
    send_seq: int
    highest: int
    window: int
    expires: float | None
    peer: ExportedPeer
    # A server context's delegated credentials as ``SecurityPackage.export_delegation``
    # wrote them (kerberos, negotiate: the forwarded TGT), or None.
    delegation: bytes | None = None

    @staticmethod
    def new_id() -> bytes:
        return os.urandom(_ID_SIZE)

    def encode(self) -> bytes:
        """The version 2 blob (module docstring). ``ValueError`` for a value out of range."""
        peer = self.peer
        flags = _CLIENT if self.client else 0
        tail = []
        if self.highest >= 0:
            flags |= _RECEIVED
            tail.append(_U64.pack(self.highest))
        if self.expires is not None:
            flags |= _EXPIRES
            tail.append(_F64.pack(self.expires))
        if peer.expires is not None:
            flags |= _PEER_EXPIRES
            tail.append(_F64.pack(peer.expires))
        if self.delegation is not None:
            flags |= _DELEGATION
        if len(self.blob_id) != _ID_SIZE:
            raise ValueError("blob_id must be 16 bytes")
        if self.window < 1 or self.window > _MAX_WINDOW:
            raise ValueError("replay window out of range")
        try:
            parts = [
                _FIXED.pack(
                    _MAGIC,
                    _VERSION,
                    flags,
                    self.blob_id,
                    self.granted,
                    self.requested,
                    self.level,
                    peer.level,
                    self.window,
                    self.send_seq,
                ),
                *tail,
                _text(_U8, self.package, "package"),
                _text(_U16, peer.principal, "peer principal"),
                _text(_U8, peer.package, "peer package"),
                _field(_U16, self.outbound, "outbound secret", _MAX_SECRET),
                _field(_U16, self.inbound, "inbound secret", _MAX_SECRET),
                _names(peer.groups, "peer groups"),
                _names(peer.chain, "peer chain"),
            ]
            if self.delegation is not None:
                parts.append(_field(_U32, self.delegation, "delegation", _MAX_DELEGATION))
        except struct.error as exc:  # a number out of its field's range
            raise ValueError(f"exported context field out of range: {exc}") from exc
        return b"".join(parts)

    @classmethod
    def decode(cls, blob: bytes) -> ExportedContext:
        """Parse and check a blob; ``InvalidTokenError`` for anything that is not one."""
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise TypeError("an exported context is bytes")
        data = bytes(blob)
        if len(data) > MAX_EXPORT_SIZE:
            raise _malformed("too large")
        if len(data) < _FIXED.size:
            raise _malformed("too short")
        (
            magic,
            version,
            flags,
            blob_id,
            granted,
            requested,
            level,
            peer_level,
            window,
            send_seq,
        ) = _FIXED.unpack_from(data)
        if magic != _MAGIC or version != _VERSION:
            raise _malformed("unknown version")
        if flags & ~_ALL_FLAGS:
            raise _malformed("flags")
        read = _Reader(data, _FIXED.size)
        highest = -1
        if flags & _RECEIVED:
            highest = read.number(_U64, "highest")
        expires = read.time("expires") if flags & _EXPIRES else None
        peer_expires = read.time("peer expires") if flags & _PEER_EXPIRES else None
        package = read.text(_U8, "package")
        principal = read.text(_U16, "peer principal")
        peer_package = read.text(_U8, "peer package")
        outbound = read.blob(_U16, "outbound secret", _MAX_SECRET)
        inbound = read.blob(_U16, "inbound secret", _MAX_SECRET)
        groups = read.names("peer groups")
        chain = read.names("peer chain")
        delegation = None
        if flags & _DELEGATION:
            delegation = read.blob(_U32, "delegation", _MAX_DELEGATION)
        read.end()
        return cls(
            blob_id=blob_id,
            package=package,
            client=bool(flags & _CLIENT),
            granted=granted,
            requested=requested,
            level=_check_int(level, "level", 0, 3),
            outbound=outbound,
            inbound=inbound,
            send_seq=send_seq,
            highest=highest,
            window=_check_int(window, "window", 1, _MAX_WINDOW),
            expires=expires,
            peer=ExportedPeer(
                principal=principal,
                package=peer_package,
                level=_check_int(peer_level, "peer level", 0, 3),
                groups=groups,
                chain=chain,
                expires=peer_expires,
            ),
            delegation=delegation,
        )


class ImportLedger:
    """Blob ids a credentials handle has imported, so a blob opens once per handle.

    Entries are kept until the imported context expires (after that the blob is useless
    anyway: the import of an expired context yields a context that refuses every message).
    Bounded: when full of live entries, a further import is refused (``BusyError``) rather
    than forgetting an id and opening that blob twice.
    """

    __slots__ = ("_clock", "_lock", "_seen")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._seen: dict[bytes, float] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def claim(self, blob_id: bytes, expires: float | None) -> None:
        """Record ``blob_id``; ``ReplayError`` if this handle already imported it."""
        with self._lock:
            if blob_id in self._seen:
                raise ReplayError(
                    "this exported context was already imported with these credentials"
                )
            if len(self._seen) >= _MAX_LEDGER:
                now = self._clock()
                for key in [k for k, end in self._seen.items() if end <= now]:
                    del self._seen[key]
                if len(self._seen) >= _MAX_LEDGER:
                    raise BusyError("too many imported contexts are live on these credentials")
            self._seen[blob_id] = math.inf if expires is None else expires

    def __len__(self) -> int:
        return len(self._seen)

    def __repr__(self) -> str:
        return f"<ImportLedger {len(self._seen)} blobs>"
