"""The sealed context ticket: wire layout, sealing and opening under one ticket key.

The layout follows RFC 5077 §4 ("Recommended Ticket Construction") with an AEAD in place of
its AES-CBC + HMAC-SHA256, as RFC 8446 §4.6.1 leaves the construction to the server::

    version:u8 | key_name[16] | iv[12] | AES-256-GCM(plaintext) || tag[16]
    plaintext = ticket_id[16] | issued_at:u64 ms | expires_at:u64 ms | state

The additional authenticated data is ``version | key_name``: every byte in the clear is
authenticated, so nothing can be altered without the tag failing.

IV: 96 random bits per ticket. NIST SP 800-38D §8.3 allows 2**32 random-IV invocations per key
(collision probability below 2**-32). The key ring bounds how many tickets one key seals: a
key seals for at most ``max_age`` (default 7 days, RFC 8446 §4.6.1) and an in-memory ring
rotates daily, so the bound is reached only past 2**32 / 86 400 s ~ 49 700 tickets per second
sustained across all replicas sharing a daily-rotated ring (a handshake costs milliseconds, so
that is thousands of cores busy doing nothing but handshakes).

Everything here is sans-IO; ``TicketKey`` holds one derived AES key and its cached AESGCM.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rpcsec.sspi import ContextExpiredError, InvalidHandleError

__all__ = [
    "KEY_NAME_SIZE",
    "MAX_TICKET_SIZE",
    "MIN_TICKET_SIZE",
    "SECRET_SIZE",
    "TICKET_ID_SIZE",
    "TICKET_VERSION",
    "OpenedTicket",
    "TicketKey",
    "parse_key_name",
]

TICKET_VERSION = 1
KEY_NAME_SIZE = 16
TICKET_ID_SIZE = 16
SECRET_SIZE = 32
IV_SIZE = 12
TAG_SIZE = 16
MAX_TICKET_SIZE = 16 * 1024
"""Hard upper bound on a ticket, checked before any parsing or cryptography."""

_HEADER = struct.Struct(f"!B{KEY_NAME_SIZE}s")
_TIMES = struct.Struct("!QQ")
_PREFIX = _HEADER.size + IV_SIZE
_FIXED_PLAINTEXT = TICKET_ID_SIZE + _TIMES.size
MIN_TICKET_SIZE = _PREFIX + _FIXED_PLAINTEXT + TAG_SIZE
_MAX_MS = (1 << 64) - 1

_AES_KEY_LABEL = b"rpcsec ticket key v1 aes-256-gcm"
_KEY_NAME_LABEL = b"rpcsec ticket key v1 key name"


def _hkdf(secret: bytes, label: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(secret)


def _to_ms(when: float, what: str) -> int:
    if not isinstance(when, int | float) or isinstance(when, bool) or not math.isfinite(when):
        raise ValueError(f"{what} must be a finite number of seconds since the epoch")
    ms = math.floor(when * 1000)
    if not 0 <= ms <= _MAX_MS:
        raise ValueError(f"{what} is out of range")
    return ms


@dataclass(frozen=True, slots=True)
class OpenedTicket:
    """What ``TicketKeyRing.open`` recovered from a ticket; every field was authenticated."""

    ticket_id: bytes
    """16 random bytes chosen by the sealer: the replay store's key for this context."""
    expires_at: float
    """Seconds since the epoch (millisecond precision, rounded down when sealed)."""
    state: bytes
    """What the binding sealed; opaque to the ticket layer."""
    key_name: bytes
    """Which ring key sealed it (RFC 5077 key_name)."""
    issued_at: float = 0.0
    """When it was sealed (sealer's clock): lets a replay store refuse tickets older than its
    own state (a restarted store cannot know what it accepted before)."""


class TicketKey:
    """One ticket key: a 32-byte secret, the key name and AES-256-GCM key derived from it with
    HKDF-SHA256 (RFC 5869) under labels of ours (the raw secret never keys anything), and
    the key's creation time. The AESGCM object is built once and reused (the hot path)."""

    __slots__ = ("_aead", "created_at", "name")

    def __init__(self, secret: bytes, created_at: float) -> None:
        if not isinstance(secret, bytes) or len(secret) != SECRET_SIZE:
            raise ValueError(f"a ticket key secret must be exactly {SECRET_SIZE} bytes")
        self.name: bytes = _hkdf(secret, _KEY_NAME_LABEL, KEY_NAME_SIZE)
        self.created_at = float(created_at)
        self._aead = AESGCM(_hkdf(secret, _AES_KEY_LABEL, 32))

    def __repr__(self) -> str:
        return f"TicketKey(name={self.name.hex()}, created_at={self.created_at:.3f})"

    def seal(self, state: bytes, *, ticket_id: bytes, issued_at: float, expires_at: float) -> bytes:
        """Seal ``state`` into a ticket (RFC 5077 §4 layout, AES-256-GCM, random IV)."""
        if not isinstance(state, bytes | bytearray | memoryview):
            raise TypeError("ticket state must be bytes")
        if not isinstance(ticket_id, bytes) or len(ticket_id) != TICKET_ID_SIZE:
            raise ValueError(f"ticket_id must be exactly {TICKET_ID_SIZE} bytes")
        issued_ms = _to_ms(issued_at, "issued_at")
        expires_ms = _to_ms(expires_at, "expires_at")
        if expires_ms < issued_ms:
            raise ValueError("a ticket cannot expire before it is issued")
        if MIN_TICKET_SIZE + len(state) > MAX_TICKET_SIZE:
            raise ValueError(f"ticket state too large (a ticket is at most {MAX_TICKET_SIZE} B)")
        header = _HEADER.pack(TICKET_VERSION, self.name)
        iv = os.urandom(IV_SIZE)
        plaintext = b"".join((ticket_id, _TIMES.pack(issued_ms, expires_ms), state))
        return b"".join((header, iv, self._aead.encrypt(iv, plaintext, header)))

    def open(self, ticket: bytes, now: float) -> OpenedTicket:
        """Open a ticket already known (``parse_key_name``) to name this key.

        Raises:
            InvalidHandleError: the tag did not verify or the plaintext is malformed.
            ContextExpiredError: the ticket is authentic but past ``expires_at``.
        """
        try:
            plaintext = self._aead.decrypt(
                ticket[_HEADER.size : _PREFIX], ticket[_PREFIX:], ticket[: _HEADER.size]
            )
        except InvalidTag:
            raise InvalidHandleError("ticket failed authentication") from None
        if len(plaintext) < _FIXED_PLAINTEXT:  # only a sealer bug could do this; stay typed
            raise InvalidHandleError("ticket plaintext truncated")
        issued_ms, expires_ms = _TIMES.unpack_from(plaintext, TICKET_ID_SIZE)
        expires_at = expires_ms / 1000
        if now >= expires_at:
            raise ContextExpiredError("ticket expired")
        return OpenedTicket(
            ticket_id=plaintext[:TICKET_ID_SIZE],
            expires_at=expires_at,
            state=plaintext[_FIXED_PLAINTEXT:],
            key_name=self.name,
            issued_at=issued_ms / 1000,
        )


def parse_key_name(ticket: object) -> bytes:
    """Validate a ticket's clear structure (type, size bounds, version) before any crypto and
    return its key name. Raises ``InvalidHandleError`` and nothing else."""
    if not isinstance(ticket, bytes):
        raise InvalidHandleError("ticket is not bytes")
    if not MIN_TICKET_SIZE <= len(ticket) <= MAX_TICKET_SIZE:
        raise InvalidHandleError("ticket size out of bounds")
    if ticket[0] != TICKET_VERSION:
        raise InvalidHandleError("unknown ticket version")
    return ticket[1 : 1 + KEY_NAME_SIZE]
