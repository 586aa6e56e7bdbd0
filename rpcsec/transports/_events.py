"""What the sans-IO sockauth connection reports from ``receive_data`` (h11's ``_events``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rpcsec.security import AccessToken
from rpcsec.sspi import ContextReq

__all__ = ["CloseReceived", "Event", "HandshakeComplete", "MessageReceived"]


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """The context is established and its granted attributes were checked.

    ``peer`` is the client's AccessToken on a server, and on a client the identity the server
    proved (for packages without MUTUAL_AUTH, only the name that was asked for)."""

    peer: AccessToken
    attributes: ContextReq


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """One application message, verified (and decrypted) by the context."""

    data: bytes = field(repr=False)
    seq: int


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer's authenticated close: no more messages will come."""


Event = HandshakeComplete | MessageReceived | CloseReceived
