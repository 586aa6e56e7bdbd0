"""The session layer's sans-IO parts: sealed context tickets, the ticket key ring, and the
replay stores that make a request accepted by one replica refused by every other.

DESIGN §8: the handle a server returns is a ticket any replica holding the ring opens
(RFC 5077 §4 / RFC 8446 §4.6.1); replays are refused cluster-wide through a shared store
(RFC 4120 §3.2.3: servers sharing a key share a replay cache). The bindings (rpcsec.grpc)
decide what goes into a ticket's state and when to claim.
"""

from ._keyring import (
    DEFAULT_KEEP,
    DEFAULT_MAX_AGE,
    DEFAULT_ROTATE_AFTER,
    KeyFileInfo,
    KeyRingError,
    KeyRingPermissionError,
    TicketKeyRing,
)
from ._redis_store import AsyncRedisReplayStore, RedisReplayStore
from ._replay_store import (
    AsyncMemoryReplayStore,
    AsyncReplayStore,
    MemoryReplayStore,
    ReplayStore,
    ReplayStoreUnavailableError,
    ReplayVerdict,
)
from ._ticket import MAX_TICKET_SIZE, MIN_TICKET_SIZE, OpenedTicket, TicketKey

__all__ = [
    "DEFAULT_KEEP",
    "DEFAULT_MAX_AGE",
    "DEFAULT_ROTATE_AFTER",
    "MAX_TICKET_SIZE",
    "MIN_TICKET_SIZE",
    "AsyncMemoryReplayStore",
    "AsyncRedisReplayStore",
    "AsyncReplayStore",
    "KeyFileInfo",
    "KeyRingError",
    "KeyRingPermissionError",
    "MemoryReplayStore",
    "OpenedTicket",
    "RedisReplayStore",
    "ReplayStore",
    "ReplayStoreUnavailableError",
    "ReplayVerdict",
    "TicketKey",
    "TicketKeyRing",
]
