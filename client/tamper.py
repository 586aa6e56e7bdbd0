"""A man-in-the-middle for the demo: a raw gRPC proxy that forwards bytes unchanged, except
that, when armed, it flips one bit of the next application request it relays.

It sees only protected bytes (it has no keys), exactly like an attacker on the network. The
demo uses it to show that an altered call is rejected before it reaches a handler.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

__all__ = ["TamperingProxy"]

_HANDSHAKE_SUFFIX = "/Negotiate"


class TamperingProxy(grpc.GenericRpcHandler):
    def __init__(self, upstream: str) -> None:
        self._channel = grpc.insecure_channel(upstream)
        self._armed = threading.Event()
        self.tampered = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[self])
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TamperingProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)
        self._channel.close()

    def arm(self) -> None:
        """Alter the next application request that passes through."""
        self._armed.set()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method.endswith(_HANDSHAKE_SUFFIX):
            return grpc.stream_stream_rpc_method_handler(self._relay_stream(method))
        return grpc.unary_unary_rpc_method_handler(self._relay_unary(method))

    def _forward_metadata(self, context: grpc.ServicerContext) -> list[tuple[str, Any]]:
        return [(k, v) for k, v in context.invocation_metadata() if not k.startswith(":")]

    def _relay_unary(self, method: str):
        call = self._channel.unary_unary(method)

        def relay(request: bytes, context: grpc.ServicerContext) -> bytes:
            if self._armed.is_set() and request:
                self._armed.clear()
                altered = bytearray(request)
                altered[-1] ^= 0x01
                request = bytes(altered)
                self.tampered += 1
            try:
                response, outcome = call.with_call(
                    request, metadata=self._forward_metadata(context)
                )
            except grpc.RpcError as error:
                context.set_trailing_metadata(error.trailing_metadata() or ())
                context.abort(error.code(), error.details() or "")
            context.set_trailing_metadata(outcome.trailing_metadata() or ())
            return response

        return relay

    def _relay_stream(self, method: str):
        call = self._channel.stream_stream(method)

        def relay(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            responses = call(requests, metadata=self._forward_metadata(context))
            try:
                yield from responses
            except grpc.RpcError as error:
                context.set_trailing_metadata(error.trailing_metadata() or ())
                context.abort(error.code(), error.details() or "")

        return relay
