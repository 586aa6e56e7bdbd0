"""Handlers protected once, when they are registered (no per-call interceptor).

A ``grpc.ServerInterceptor`` runs in the server's poller thread for *every* call
(``intercept_service``: a Python frame, a ``HandlerCallDetails`` and a handler lookup before
the call is even queued). ``secure_server()`` returns a server whose registration methods
wrap each application handler with the protected behavior once, as it is registered, and
registers the handshake service (Negotiate, Release) as handlers of its own -- so a call costs
gRPC's own handler lookup and nothing more before the protected behavior runs.

Fail closed: the application only ever holds the wrapping server, so every handler it can
register is protected; a method nobody registered is UNIMPLEMENTED (gRPC's answer), and the
handshake service's name cannot be taken by an application handler. ``SecurityInterceptor``
keeps working for a ``grpc.server(interceptors=[...])`` built by hand: the wrapped behaviors
are the same objects either way (``InterceptorBase.protected``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from ._wire import SERVICE

__all__ = ["ProtectedGenericHandler", "Registration"]


class ProtectedGenericHandler(grpc.GenericRpcHandler):
    """An application's ``GenericRpcHandler`` whose handlers come out protected.

    A service's handler table (``grpc.method_handlers_generic_handler``, what generated
    ``add_XServicer_to_server`` builds) is wrapped whole, once; any other generic handler is
    asked per call as gRPC would ask it, and its answer is wrapped through the interceptor's
    bounded per-method cache."""

    __slots__ = ("_inner", "_security", "_table")

    def __init__(self, inner: grpc.GenericRpcHandler, security: Any) -> None:
        if not callable(getattr(inner, "service", None)):
            raise TypeError("generic_rpc_handlers must be grpc.GenericRpcHandler objects")
        self._inner = inner
        self._security = security
        table = getattr(inner, "_method_handlers", None)
        self._table: dict[str, grpc.RpcMethodHandler] | None = None
        if type(inner).__name__ == "DictionaryGenericHandler" and isinstance(table, dict):
            self._table = {
                method: security.protected(method, handler)
                for method, handler in table.items()
                if not _ours(method)
            }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        table = self._table
        method = handler_call_details.method
        if table is not None:
            return table.get(method)
        if _ours(method):
            return None  # the handshake service is ours (registered apart, first)
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._security.cached(method, handler)


def _ours(method: str) -> bool:
    return method.startswith(f"/{SERVICE}/")


class Registration:
    """What the sync and asyncio protected servers share: the registration methods that wrap
    handlers, and the handshake service registered when the server is made."""

    _server: Any
    security_interceptor: Any

    def _register_handshake(self) -> None:
        interceptor = self.security_interceptor
        self._server.add_registered_method_handlers(
            SERVICE,
            {"Negotiate": interceptor.negotiate_handler, "Release": interceptor.release_handler},
        )

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]
    ) -> None:
        interceptor = self.security_interceptor
        self._server.add_generic_rpc_handlers(
            tuple(ProtectedGenericHandler(handler, interceptor) for handler in generic_rpc_handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        if service_name == SERVICE:
            raise ValueError(f"the service name {SERVICE!r} is rpcsec's handshake service")
        interceptor = self.security_interceptor
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: interceptor.protected(f"/{service_name}/{name}", handler)
                for name, handler in method_handlers.items()
            },
        )

    # the rest of the server, as it is

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._server, name)
