"""Failures of the transport bindings that the SSPI core has no class for.

Each is a subclass of the core class whose status it reports, so a caller catching
``InvalidTokenError`` or ``ContextExpiredError`` (or just ``SecurityError``) catches these too,
and ``error.reason`` stays one of the coarse codes a peer may be told.
"""

from __future__ import annotations

from rpcsec.sspi import ContextExpiredError, InvalidTokenError

__all__ = [
    "ConnectionClosedError",
    "FrameTooLargeError",
    "HandshakeTimeoutError",
    "MalformedHeaderError",
    "TruncatedFrameError",
]


class FrameTooLargeError(InvalidTokenError):
    """The peer announced (or sent) a frame or record larger than this side accepts.

    Raised as soon as the length prefix is read: nothing of that size is ever allocated.
    """


class TruncatedFrameError(InvalidTokenError):
    """The connection ended inside a frame or record, or before the handshake or the
    authenticated close was complete (a truncation, in TLS 1.3 terms)."""


class HandshakeTimeoutError(ContextExpiredError):
    """The handshake did not complete within its deadline (a half-open handshake)."""


class ConnectionClosedError(EOFError):
    """The peer closed the connection cleanly, with an authenticated close. Not a failure:
    ``recv()`` raises it the way ``input()`` raises ``EOFError``; iteration just stops."""


class MalformedHeaderError(InvalidTokenError):
    """An ``Authorization`` or ``WWW-Authenticate`` header does not follow RFC 7235 (or its
    token is not base64). A server answers it with 400 Bad Request."""
