"""Bindings of rpcsec's security contexts to other transports than gRPC.

``rpcsec.transports.sockauth``: authenticated, protected messages over TCP sockets (the seed's
sockauth sample). ``rpcsec.transports.httpauth``: HTTP Negotiate authentication (RFC 4559;
MS-NTHT for NTLM) with ``http.server`` / ``http.client`` (the seed's httpauth sample); its
server also speaks the standard to curl, requests-gssapi and browsers (docs/standards.md).
The ecosystem shapes over the same sans-IO exchange: ``asgi`` and ``wsgi`` middlewares,
``httpx_auth`` and ``requests_auth`` client auth classes (the ``http`` extra), and
``gss_sample``, sockauth's standard mode speaking MIT gss-sample's protocol. All are
package-agnostic: they use only the ``rpcsec.sspi`` API (and ``rpcsec.packages._standard`` for
a standard context's own message tokens). The protocol logic is sans-IO (the private modules);
only the public binding modules import ``socket`` / ``http`` / frameworks, and only when they
are imported.
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
