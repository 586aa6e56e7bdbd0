"""Bindings of rpcsec's security contexts to other transports than gRPC.

``rpcsec.transports.sockauth``: authenticated, protected messages over TCP sockets (the seed's
sockauth sample). ``rpcsec.transports.httpauth``: HTTP Negotiate-style authentication
(RFC 4559 shape) with ``http.server`` / ``http.client`` (the seed's httpauth sample). Both are
package-agnostic: they use only the ``rpcsec.sspi`` API. The protocol logic is sans-IO (the
private modules); only ``sockauth`` and ``httpauth`` import ``socket`` / ``http``, and only
when they are imported.
"""

from ._connection import ConnectionConfig, ConnectionState, SockAuthConnection
from ._errors import (
    ConnectionClosedError,
    FrameTooLargeError,
    HandshakeTimeoutError,
    MalformedHeaderError,
    TruncatedFrameError,
)
from ._events import CloseReceived, HandshakeComplete, MessageReceived

__all__ = [
    "CloseReceived",
    "ConnectionClosedError",
    "ConnectionConfig",
    "ConnectionState",
    "FrameTooLargeError",
    "HandshakeComplete",
    "HandshakeTimeoutError",
    "MalformedHeaderError",
    "MessageReceived",
    "SockAuthConnection",
    "TruncatedFrameError",
]
