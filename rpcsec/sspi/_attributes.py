"""Results of QueryContextAttributes (SECPKG_ATTR_*), as frozen records."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ._flags import ContextReq

__all__ = [
    "ContextAttribute",
    "ContextFlags",
    "Lifespan",
    "MessageInfo",
    "Names",
    "SessionKey",
    "Sizes",
    "StreamSizes",
]


class ContextAttribute(enum.Enum):
    """Which attribute ``query_attributes`` returns (SECPKG_ATTR_*)."""

    SIZES = "sizes"
    STREAM_SIZES = "stream_sizes"
    NAMES = "names"
    NATIVE_NAMES = "native_names"
    LIFESPAN = "lifespan"
    FLAGS = "flags"
    PACKAGE_INFO = "package_info"
    SESSION_KEY = "session_key"
    ACCESS_TOKEN = "access_token"


@dataclass(frozen=True, slots=True)
class Sizes:
    """SecPkgContext_Sizes: how much room the message calls need."""

    max_token: int
    max_signature: int
    block_size: int
    security_trailer: int


@dataclass(frozen=True, slots=True)
class StreamSizes:
    """SecPkgContext_StreamSizes: header and trailer to reserve around each record."""

    header: int
    trailer: int
    max_message: int
    buffers: int
    block_size: int


@dataclass(frozen=True, slots=True)
class Names:
    """SecPkgContext_Names (the peer) and this side's own principal."""

    local: str | None
    peer: str


@dataclass(frozen=True, slots=True)
class Lifespan:
    """SecPkgContext_Lifespan, as POSIX timestamps; ``expiry`` None means no limit."""

    start: float
    expiry: float | None


@dataclass(frozen=True, slots=True)
class ContextFlags:
    """SecPkgContext_Flags: what was asked for and what was granted."""

    requested: ContextReq
    granted: ContextReq


@dataclass(frozen=True, slots=True)
class SessionKey:
    """SecPkgContext_SessionKey. The key is never shown by ``repr``."""

    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """What VerifySignature / DecryptMessage report: the QOP used and the sender's sequence
    number (for datagram contexts, the number the sending caller supplied)."""

    qop: int
    seq: int
