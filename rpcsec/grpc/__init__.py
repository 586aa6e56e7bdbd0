"""The gRPC binding: authenticated RPC over gRPC (DESIGN §5).

Client: ``secure_channel(target, credentials, target_name=..., protection=...)`` returns a
``grpc.Channel`` that generated stubs use unchanged; the first call binds it to a security
context over the ``rpcsec.v1.SecurityHandshake/Negotiate`` stream, and every call after that is
signed (INTEGRITY) or sealed (PRIVACY), both directions, replay-protected.

Server: ``grpc.server(executor, interceptors=[SecurityInterceptor(credentials, policy)])`` (or
``secure_server(credentials, policy)``) serves the handshake, verifies every call before its
handler runs, authorizes it against an ``AuthorizationPolicy``, and runs the handler
impersonating the caller (``rpcsec.current_token()``).

The asyncio twins are in ``rpcsec.grpc.aio``.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._call_status import STATUS_KEY, CallStatus
from ._client import SecureChannel, secure_channel
from ._cloaking import get_default_credentials, set_default_credentials
from ._metadata import METADATA_KEY
from ._policy import AuthorizationPolicy, AuthorizationRule, Decision
from ._recovery import REBIND_REASONS
from ._server import SecurityInterceptor, secure_server
from ._servicer_context import unverified_metadata
from ._status import REASON_KEY, error_from_rpc, reason_of, status_for
from ._table import ContextTable, HandshakeLimiter
from ._verified_call import call_status
from ._wire import CALL_KEY, CONTEXT_KEY, NEGOTIATE_METHOD, RELEASE_METHOD

__all__ = [
    "CALL_KEY",
    "CONTEXT_KEY",
    "METADATA_KEY",
    "NEGOTIATE_METHOD",
    "REASON_KEY",
    "REBIND_REASONS",
    "RELEASE_METHOD",
    "STATUS_KEY",
    "AuthorizationPolicy",
    "AuthorizationRule",
    "CallStatus",
    "ContextTable",
    "Decision",
    "HandshakeLimiter",
    "SecureChannel",
    "SecurityInterceptor",
    "call_status",
    "error_from_rpc",
    "get_default_credentials",
    "reason_of",
    "secure_channel",
    "secure_server",
    "set_default_credentials",
    "status_for",
    "unverified_metadata",
]


def __getattr__(name: str) -> Any:
    if name == "aio":
        return importlib.import_module("rpcsec.grpc.aio")
    raise AttributeError(f"module 'rpcsec.grpc' has no attribute {name!r}")
