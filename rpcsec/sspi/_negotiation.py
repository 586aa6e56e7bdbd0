"""What a client asks for and what a server grants, carried inside each package's handshake.

SSPI passes fContextReq and the impersonation level out of band; a network package must carry
them. Every package sends the client's ``ContextOffer`` in its last client leg and the server's
``ContextGrant`` in its last server leg, each *authenticated by that package's handshake* (x509:
inside the TLS 1.3 channel; ntlm: MACed with a key derived from the session key), so an
attacker cannot downgrade them. ``decide_grant`` is the one rule every package applies.

Wire format (big-endian): offer = b"RQ" | version:u8 | flags:u32 | level:u8;
grant = b"GR" | version:u8 | flags:u32 | level:u8.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from ._errors import InsufficientAttributesError, InvalidTokenError
from ._flags import ContextReq, ImpersonationLevel, PackageCapability

__all__ = [
    "OFFER_SIZE",
    "ContextGrant",
    "ContextOffer",
    "decide_grant",
    "granted_from_capabilities",
]

_FORMAT = struct.Struct(">2sBIB")
OFFER_SIZE = _FORMAT.size
_VERSION = 1
_KNOWN = 0
for _flag in ContextReq:
    _KNOWN |= int(_flag)


def _pack(magic: bytes, flags: ContextReq, level: ImpersonationLevel) -> bytes:
    return _FORMAT.pack(magic, _VERSION, int(flags), int(level))


def _unpack(magic: bytes, data: bytes) -> tuple[ContextReq, ImpersonationLevel]:
    if len(data) != OFFER_SIZE:
        raise InvalidTokenError("context negotiation record has the wrong length")
    got_magic, version, flags, level = _FORMAT.unpack(data)
    if got_magic != magic or version != _VERSION:
        raise InvalidTokenError("context negotiation record is not understood")
    if flags & ~_KNOWN:
        raise InvalidTokenError("context negotiation record has unknown flags")
    try:
        return ContextReq(flags), ImpersonationLevel(level)
    except ValueError:
        raise InvalidTokenError("context negotiation record has an unknown level") from None


@dataclass(frozen=True, slots=True)
class ContextOffer:
    """The client's requested flags and the most it lets the server impersonate it."""

    requested: ContextReq
    impersonation: ImpersonationLevel

    def encode(self) -> bytes:
        return _pack(b"RQ", self.requested, self.impersonation)

    @classmethod
    def decode(cls, data: bytes) -> ContextOffer:
        return cls(*_unpack(b"RQ", data))


@dataclass(frozen=True, slots=True)
class ContextGrant:
    """The server's answer: the attributes in force and the impersonation level it holds."""

    granted: ContextReq
    impersonation: ImpersonationLevel

    def encode(self) -> bytes:
        return _pack(b"GR", self.granted, self.impersonation)

    @classmethod
    def decode(cls, data: bytes) -> ContextGrant:
        return cls(*_unpack(b"GR", data))


@functools.cache
def granted_from_capabilities(capabilities: PackageCapability) -> ContextReq:
    """The attributes a package can give at all (its one flag-mapping table). A pure function
    of a few distinct values, worked out once each (flag arithmetic on enums is slow, and the
    server asks at every handshake)."""
    table = {
        PackageCapability.INTEGRITY: ContextReq.INTEGRITY
        | ContextReq.REPLAY_DETECT
        | ContextReq.SEQUENCE_DETECT,
        PackageCapability.PRIVACY: ContextReq.CONFIDENTIALITY,
        PackageCapability.CONNECTION: ContextReq.CONNECTION,
        PackageCapability.DATAGRAM: ContextReq.DATAGRAM,
        PackageCapability.STREAM: ContextReq.STREAM,
        PackageCapability.MUTUAL_AUTH: ContextReq.MUTUAL_AUTH,
        PackageCapability.DELEGATION: ContextReq.DELEGATE,
        PackageCapability.IMPERSONATION: ContextReq.IDENTIFY,
        PackageCapability.ANONYMOUS: ContextReq.ANONYMOUS,
    }
    # Nothing without a behaviour behind it (see NOT_IMPLEMENTED). ANONYMOUS is the core's
    # own: it serves every package by handing the server the anonymous token.
    supported = ContextReq.ANONYMOUS
    for capability, flags in table.items():
        if capabilities & capability:
            supported |= flags
    return supported


def decide_grant(
    offer: ContextOffer,
    capabilities: PackageCapability,
    server_requires: ContextReq = ContextReq.NONE,
    *,
    mutual_proven: bool,
) -> ContextGrant:
    """The single granting rule.

    Granted = what the client asked for, limited to what the package can do; MUTUAL_AUTH only
    when the server really proved its identity; DELEGATE only when the package delegates *and*
    the client allowed the DELEGATE level. The level is the client's maximum, lowered to
    IMPERSONATE when delegation is not granted. A server requirement the client did not offer
    (or the package cannot give) fails the handshake.
    """
    supported = granted_from_capabilities(capabilities)
    if not mutual_proven:
        supported &= ~ContextReq.MUTUAL_AUTH
    granted = offer.requested.normalized() & supported
    level = offer.impersonation
    if offer.requested & ContextReq.IDENTIFY:
        level = min(level, ImpersonationLevel.IDENTIFY)
    if offer.requested & ContextReq.ANONYMOUS:
        level = ImpersonationLevel.ANONYMOUS
    if level < ImpersonationLevel.DELEGATE or not capabilities & PackageCapability.DELEGATION:
        granted &= ~ContextReq.DELEGATE
    if not granted & ContextReq.DELEGATE and level > ImpersonationLevel.IMPERSONATE:
        level = ImpersonationLevel.IMPERSONATE
    missing = server_requires.normalized() & ~granted
    if missing:
        raise InsufficientAttributesError(f"server requires attributes not offered: {missing!r}")
    return ContextGrant(granted=ContextReq(granted), impersonation=level)
