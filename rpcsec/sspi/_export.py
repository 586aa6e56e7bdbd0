"""The ExportSecurityContext blob, and the rule that a blob opens once per credentials handle.

An exported context holds its message keys and where its sequence numbers stand. Two live
contexts continuing the same blob in the same key space would seal different messages under
the same (key, nonce) -- with AES-GCM that reveals the XOR of the plaintexts and lets the
authentication key be recovered. So, as SSPI does with SECPKG_CONTEXT_EXPORT_DELETE_OLD, the
exporter is retired by ``export()`` and each blob carries a random id that a credentials
handle accepts once (``ImportLedger``). Importing one blob into *several* processes (several
handles) is allowed for a caller that keeps their sequence spaces apart itself (the session
layer's tickets do, per call); the docstring of ``import_security_context`` says so.

``decode`` validates the whole structure and every type before anything is built from it:
bad input raises ``InvalidTokenError``, never ``AttributeError``/``KeyError``.

Format: UTF-8 JSON, one object, version 1 (fields in ``ExportedContext``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._errors import BusyError, InvalidTokenError, ReplayError

__all__ = ["MAX_EXPORT_SIZE", "ExportedContext", "ExportedPeer", "ImportLedger"]

MAX_EXPORT_SIZE = 64 * 1024
_VERSION = 1
_ID_SIZE = 16
_MAX_SECRET = 1024
_MAX_DELEGATION = 32 * 1024
_MAX_U64 = (1 << 64) - 1
_MAX_FLAGS = (1 << 32) - 1
_MAX_WINDOW = 1 << 20
_MAX_NAMES = 256
_MAX_NAME = 1024
_MAX_LEDGER = 1 << 16


def _malformed(what: str) -> InvalidTokenError:
    return InvalidTokenError(f"exported context is malformed: {what}")


def _int(value: Any, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _malformed(what)
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > _MAX_NAME:
        raise _malformed(what)
    return value


def _time(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _malformed(what)
    return float(value)


def _bytes(value: Any, what: str, limit: int) -> bytes:
    if not isinstance(value, str) or len(value) > 2 * limit:
        raise _malformed(what)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(what) from None
    if len(raw) > limit:
        raise _malformed(what)
    return raw


def _names(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > _MAX_NAMES:
        raise _malformed(what)
    return tuple(_str(item, what) for item in value)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


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
        peer = self.peer
        state = {
            "v": _VERSION,
            "id": _b64(self.blob_id),
            "package": self.package,
            "client": self.client,
            "granted": self.granted,
            "requested": self.requested,
            "level": self.level,
            "out": _b64(self.outbound),
            "in": _b64(self.inbound),
            "send_seq": self.send_seq,
            "highest": self.highest,
            "window": self.window,
            "expires": self.expires,
            "peer": {
                "principal": peer.principal,
                "package": peer.package,
                "level": peer.level,
                "groups": list(peer.groups),
                "chain": list(peer.chain),
                "expires": peer.expires,
            },
        }
        if self.delegation is not None:
            state["delegation"] = _b64(self.delegation)
        return json.dumps(state).encode()

    @classmethod
    def decode(cls, blob: bytes) -> ExportedContext:
        """Parse and check a blob; ``InvalidTokenError`` for anything that is not one."""
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise TypeError("an exported context is bytes")
        data = bytes(blob)
        if len(data) > MAX_EXPORT_SIZE:
            raise _malformed("too large")
        try:
            state = json.loads(data)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise _malformed("not JSON") from None
        if not isinstance(state, dict):
            raise _malformed("not an object")
        if state.get("v") != _VERSION or type(state.get("v")) is not int:
            raise _malformed("unknown version")
        peer = state.get("peer")
        if not isinstance(peer, dict):
            raise _malformed("peer")
        client = state.get("client")
        if not isinstance(client, bool):
            raise _malformed("client")
        delegation = state.get("delegation")
        if delegation is not None:
            delegation = _bytes(delegation, "delegation", _MAX_DELEGATION)
        blob_id = _bytes(state.get("id"), "id", _ID_SIZE)
        if len(blob_id) != _ID_SIZE:
            raise _malformed("id")
        return cls(
            blob_id=blob_id,
            package=_str(state.get("package"), "package"),
            client=client,
            granted=_int(state.get("granted"), "granted", 0, _MAX_FLAGS),
            requested=_int(state.get("requested"), "requested", 0, _MAX_FLAGS),
            level=_int(state.get("level"), "level", 0, 3),
            outbound=_bytes(state.get("out"), "out", _MAX_SECRET),
            inbound=_bytes(state.get("in"), "in", _MAX_SECRET),
            send_seq=_int(state.get("send_seq"), "send_seq", 0, _MAX_U64),
            highest=_int(state.get("highest"), "highest", -1, _MAX_U64),
            window=_int(state.get("window"), "window", 1, _MAX_WINDOW),
            expires=_time(state.get("expires"), "expires"),
            peer=ExportedPeer(
                principal=_str(peer.get("principal"), "peer principal"),
                package=_str(peer.get("package"), "peer package"),
                level=_int(peer.get("level"), "peer level", 0, 3),
                groups=_names(peer.get("groups"), "peer groups"),
                chain=_names(peer.get("chain"), "peer chain"),
                expires=_time(peer.get("expires"), "peer expires"),
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
