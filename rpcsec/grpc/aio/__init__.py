"""The asyncio gRPC binding: ``secure_channel`` / ``SecurityInterceptor`` for ``grpc.aio``.

Same wire format, rules and arguments as ``rpcsec.grpc``; a sync client talks to an aio server
and the other way round.
"""

from __future__ import annotations

from ._client import SecureChannel, secure_channel
from ._server import SecurityInterceptor, secure_server

__all__ = ["SecureChannel", "SecurityInterceptor", "secure_channel", "secure_server"]
