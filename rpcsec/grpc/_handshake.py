"""The Negotiate exchange as two sans-IO drivers, shared by the sync and asyncio bindings.

It is the generic pairing of an InitializeSecurityContext / AcceptSecurityContext loop (the
seed's "If SEC_I_CONTINUE_NEEDED is returned ... call InitializeSecurityContext again"): each
side sends whatever token its context produced; a side may finish (OK) with a final token the
other side still has to consume. The server's last message says ``complete`` and carries the
context handle, or carries an error reason instead. The drivers do no I/O: a binding feeds them
messages and sends what they return, so every package works unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from google.protobuf.message import DecodeError

from rpcsec.sspi import (
    ClientContext,
    Credentials,
    InvalidTokenError,
    NoCredentialsError,
    SecurityError,
    ServerContext,
    error_for_status,
)

from ._proto import handshake_pb2
from ._wire import HANDLE_SIZE, is_ticket

__all__ = ["MAX_LEGS", "MAX_MESSAGE", "ClientNegotiation", "ServerNegotiation"]

MAX_LEGS = 16
"""No package needs more legs; a peer that wants more is broken or hostile."""
MAX_MESSAGE = 256 * 1024


class ClientNegotiation:
    """The client half: ``start()`` then ``receive()`` each server message until it returns
    None; ``handle`` is then the server's context handle and ``context`` is established."""

    def __init__(self, context: ClientContext) -> None:
        if not isinstance(context, ClientContext):
            raise TypeError("ClientNegotiation needs a ClientContext")
        self.context = context
        self.handle: bytes | None = None
        self._legs = 0

    def start(self) -> handshake_pb2.NegotiateRequest:
        result = self.context.step(None)
        if result.token is None:
            raise InvalidTokenError("the security package produced no first token")
        self._legs = 1
        return handshake_pb2.NegotiateRequest(package=self.context.package.name, token=result.token)

    def receive(
        self, response: handshake_pb2.NegotiateResponse
    ) -> handshake_pb2.NegotiateRequest | None:
        """Consume one server message; return the next message to send, or None when bound."""
        if not isinstance(response, handshake_pb2.NegotiateResponse):
            raise TypeError("receive() needs a NegotiateResponse")
        if response.HasField("error"):
            reason = response.error.reason
            raise error_for_status(reason, f"server refused the handshake: {reason}")
        self._legs += 1
        if self._legs > MAX_LEGS:
            raise InvalidTokenError("handshake did not converge")
        out: bytes | None = None
        if response.token:
            out = self.context.step(response.token).token
        elif not response.complete:
            raise InvalidTokenError("server sent an empty handshake leg")
        if response.complete:
            if not self.context.complete or out is not None:
                raise InvalidTokenError("server finished the handshake before the client")
            if len(response.context_handle) != HANDLE_SIZE and not is_ticket(
                response.context_handle
            ):
                raise InvalidTokenError("server returned a malformed context handle")
            self.handle = bytes(response.context_handle)
            return None
        if out is None:
            # The server still waits, but our context has nothing more to say.
            raise InvalidTokenError("handshake stalled: the client has no token to send")
        self._legs += 1
        return handshake_pb2.NegotiateRequest(token=out)


class ServerNegotiation:
    """The server half: ``receive()`` each client message; it returns the reply and whether the
    stream is over. On completion ``register(context)`` names the context (the context table)
    and the reply carries that handle. Failures become an error reply (the coarse reason) and
    the local exception is kept in ``error`` for the log."""

    def __init__(
        self,
        credentials: Mapping[str, Credentials],
        new_context: Callable[[Credentials], ServerContext],
        register: Callable[[ServerContext], bytes],
        on_refuse: Callable[[SecurityError], None] | None = None,
    ) -> None:
        self._on_refuse = on_refuse
        self._credentials = credentials
        self._new_context = new_context
        self._register = register
        self.context: ServerContext | None = None
        self.error: SecurityError | None = None
        self._legs = 0

    def receive(
        self, request: handshake_pb2.NegotiateRequest
    ) -> tuple[handshake_pb2.NegotiateResponse, bool]:
        try:
            return self._receive(request)
        except SecurityError as exc:
            return self.refuse(exc), True

    def receive_bytes(self, raw: bytes) -> tuple[bytes, bool]:
        """``receive`` for a serialized NegotiateRequest straight off the wire."""
        try:
            request = _parse(raw)
        except SecurityError as exc:
            return self.refuse(exc).SerializeToString(), True
        reply, done = self.receive(request)
        return reply.SerializeToString(), done

    def refuse(self, error: SecurityError) -> handshake_pb2.NegotiateResponse:
        """The error reply for ``error``; it is kept in ``error`` for the log and the status."""
        self.error = error
        self.abandon()
        if self._on_refuse is not None:
            self._on_refuse(error)  # the audit record, before the peer can hang up
        return _error(error.reason)

    def _receive(
        self, request: handshake_pb2.NegotiateRequest
    ) -> tuple[handshake_pb2.NegotiateResponse, bool]:
        self._legs += 1
        if self._legs > MAX_LEGS:
            raise InvalidTokenError("handshake did not converge")
        if self.context is None:
            credentials = self._credentials.get(request.package.lower())
            if credentials is None:
                raise NoCredentialsError("this server accepts no such security package")
            self.context = self._new_context(credentials)
        elif request.package and request.package.lower() != self.context.package.name:
            raise InvalidTokenError("the package changed during the handshake")
        if not request.token:
            raise InvalidTokenError("client sent an empty handshake leg")
        result = self.context.step(request.token)
        if self.context.complete:
            handle = self._register(self.context)
            reply = handshake_pb2.NegotiateResponse(
                token=result.token or b"", complete=True, context_handle=handle
            )
            return reply, True
        if result.token is None:
            raise InvalidTokenError("handshake stalled: the server has no token to send")
        return handshake_pb2.NegotiateResponse(token=result.token), False

    def abandon(self) -> None:
        """The client went away mid-handshake: forget the half-built context."""
        context = self.context
        if context is not None and not context.complete:
            self.context = None
            context.delete()


def _parse(raw: bytes) -> handshake_pb2.NegotiateRequest:
    if not isinstance(raw, bytes):
        raise InvalidTokenError("handshake message is not bytes")
    if len(raw) > MAX_MESSAGE:
        raise InvalidTokenError("handshake message is too large")
    try:
        return handshake_pb2.NegotiateRequest.FromString(raw)
    except DecodeError as exc:
        raise InvalidTokenError("handshake message is malformed") from exc


def _error(reason: str) -> handshake_pb2.NegotiateResponse:
    return handshake_pb2.NegotiateResponse(error=handshake_pb2.Error(reason=reason))
