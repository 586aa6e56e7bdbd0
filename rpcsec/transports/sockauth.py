"""sockauth: authenticated, protected messages over a TCP socket.

The seed's "sockauth" SDK sample (Client.c ConnectAuthSocket, Server.c AcceptAuthSocket,
Comm.c SendMsg / ReceiveMsg, Security.c GenClientContext / GenServerContext /
ImpersonateContext) for any rpcsec security package: switching ntlm to x509 or kerberos
changes the credentials, nothing else. The protocol itself is the sans-IO
``SockAuthConnection`` (wire format documented there); this module is only the socket edge.

Client::

    creds = acquire_credentials_handle("ntlm", "RPCSEC\\\\alice", password=...)
    with sockauth.connect(("server", 5000), creds, target_name="host@server") as conn:
        conn.send(b"hello")
        reply = conn.recv()

Server (each connection in its own thread, the handler impersonating the caller)::

    def handler(conn: sockauth.AuthSocket) -> None:
        for message in conn:                  # ends at the client's authenticated close
            conn.send(b"hi " + current_token().principal.encode())

    with sockauth.Server(("0.0.0.0", 5000), server_creds, handler) as server:
        server.serve_forever()

Failures: anything the peer gets wrong (garbage or altered tokens, replays, truncated or
oversize frames, a handshake that does not finish in time) raises a ``SecurityError``
subclass; the side that detects it tells the peer the coarse reason and closes. The server
logs it and goes on serving other connections. Socket errors stay ``OSError``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from rpcsec.security import AccessToken, impersonate
from rpcsec.security import _audit as audit
from rpcsec.sspi import (
    ContextReq,
    ContextState,
    Credentials,
    CredentialUse,
    ImpersonationLevel,
    InternalSecurityError,
    ProtectionLevel,
    SecurityContext,
    SecurityError,
    accept_security_context,
    initialize_security_context,
)

from ._connection import (
    DEFAULT_MAX_MESSAGE,
    ConnectionConfig,
    ConnectionState,
    FrameKind,
    SockAuthConnection,
)
from ._errors import ConnectionClosedError, HandshakeTimeoutError
from ._events import CloseReceived, Event, HandshakeComplete, MessageReceived
from ._framing import encode_frame
from ._requirements import client_requirements, server_requirements
from ._serving import BoundedConnections

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "AuthSocket",
    "Server",
    "accept",
    "connect",
    "serve",
]

log = logging.getLogger(__name__)

_RECV_SIZE = 64 * 1024
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
Handler = Callable[["AuthSocket"], None]


class AuthSocket:
    """An authenticated socket: ``send`` / ``recv`` whole messages protected by the context.

    Made by ``connect`` / ``accept`` (or ``AuthSocket.client`` / ``AuthSocket.server`` around
    a socket you already have). One thread may send while another receives.
    """

    def __init__(
        self,
        sock: socket.socket,
        connection: SockAuthConnection,
        *,
        timeout: float | None = None,
    ) -> None:
        self._sock = sock
        self._conn = connection
        self._timeout = timeout
        self._pending: collections.deque[Event] = collections.deque()
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._peer: AccessToken | None = None
        self._closed = False

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def client(
        cls,
        sock: socket.socket,
        credentials: Credentials,
        *,
        target_name: str | None,
        requirements: ContextReq | None = None,
        protection: ProtectionLevel = ProtectionLevel.PRIVACY,
        impersonation: ImpersonationLevel = ImpersonationLevel.IMPERSONATE,
        stream: bool = False,
        timeout: float | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_message: int = DEFAULT_MAX_MESSAGE,
        options: dict[str, Any] | None = None,
    ) -> AuthSocket:
        """Run the client handshake (InitializeSecurityContext) on a connected socket.

        Raises ``InsufficientAttributesError`` if the context lacks what ``requirements`` and
        ``protection`` need (MUTUAL_AUTH is required whenever the package can prove the
        server), or the typed error the server reported.
        """
        _check_socket(sock)
        if not isinstance(credentials, Credentials):
            raise TypeError("credentials must come from acquire_credentials_handle()")
        if not credentials.use & CredentialUse.OUTBOUND:
            raise ValueError("a client needs OUTBOUND credentials")
        flags = client_requirements(credentials, protection, requirements, stream=stream)
        context = initialize_security_context(
            credentials,
            target_name,
            flags.requested,
            impersonation=impersonation,
            options=options,
        )
        config = ConnectionConfig(required=flags.required, max_message=max_message)
        return cls._establish(sock, context, config, timeout, handshake_timeout)

    @classmethod
    def server(
        cls,
        sock: socket.socket,
        credentials: Credentials,
        *,
        protection: ProtectionLevel = ProtectionLevel.INTEGRITY,
        timeout: float | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_message: int = DEFAULT_MAX_MESSAGE,
        options: dict[str, Any] | None = None,
    ) -> AuthSocket:
        """Run the server handshake (AcceptSecurityContext) on an accepted socket.

        ``protection`` is the least the server accepts: a client offering less fails the
        handshake with INSUFFICIENT_ATTRIBUTES.
        """
        _check_socket(sock)
        if not isinstance(credentials, Credentials):
            raise TypeError("credentials must come from acquire_credentials_handle()")
        if not credentials.use & CredentialUse.INBOUND:
            raise ValueError("a server needs INBOUND credentials")
        required = server_requirements(protection)
        context = accept_security_context(credentials, required, options=options)
        config = ConnectionConfig(required=required, max_message=max_message)
        return cls._establish(sock, context, config, timeout, handshake_timeout)

    @classmethod
    def _establish(
        cls,
        sock: socket.socket,
        context: SecurityContext,
        config: ConnectionConfig,
        timeout: float | None,
        handshake_timeout: float,
    ) -> AuthSocket:
        if handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")
        conn = SockAuthConnection(context, config)
        with contextlib.suppress(OSError):  # each frame is one write; do not wait for ACKs
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        auth = cls(sock, conn, timeout=timeout)
        try:
            auth._handshake(time.monotonic() + handshake_timeout)
        except BaseException as exc:
            auth._abort(exc)
            raise
        return auth

    def _handshake(self, deadline: float) -> None:
        """The seed's DoAuthentication loop: send a token, receive a token, until complete."""
        conn = self._conn
        if conn.is_client:
            conn.initiate()
        self._sock.sendall(conn.data_to_send())
        while conn.state is ConnectionState.HANDSHAKE:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HandshakeTimeoutError("the handshake did not complete in time")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(_RECV_SIZE)
            except TimeoutError:
                raise HandshakeTimeoutError("the handshake did not complete in time") from None
            events = conn.receive_data(chunk)
            out = conn.data_to_send()
            if out:
                self._sock.sendall(out)
            for event in events:
                if isinstance(event, HandshakeComplete):
                    self._peer = event.peer
                else:
                    self._pending.append(event)
        self._sock.settimeout(self._timeout)

    # -- properties --------------------------------------------------------------------------

    @property
    def peer(self) -> AccessToken:
        """Who is at the other end: the client (on a server) or the server's proven identity
        (on a client; for packages without MUTUAL_AUTH only the target name, IDENTIFY level)."""
        assert self._peer is not None
        return self._peer

    @property
    def context(self) -> SecurityContext:
        """The established security context (for QueryContextAttributes and the like)."""
        return self._conn.context

    @property
    def attributes(self) -> ContextReq:
        """The granted context attributes."""
        return self._conn.context.attributes

    @property
    def stream_mode(self) -> bool:
        """True when the package frames the data itself (a STREAM context)."""
        return self._conn.stream_mode

    @property
    def remote_address(self) -> Any:
        return self._sock.getpeername()

    def settimeout(self, timeout: float | None) -> None:
        """Timeout of later ``recv`` / ``send`` calls (``TimeoutError``); None blocks."""
        self._timeout = timeout
        self._sock.settimeout(timeout)

    # -- messages ----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Protect and send one message (SendMsg). In stream mode the bytes are a stream: large
        writes are split into records and empty writes send nothing."""
        with self._send_lock:
            self._conn.send_message(data)
            self._sock.sendall(self._conn.data_to_send())

    def recv(self) -> bytes:
        """The next message, verified and decrypted (ReceiveMsg).

        Raises ``ConnectionClosedError`` after the peer's authenticated close, a
        ``SecurityError`` subclass for anything the peer got wrong (the connection is then
        closed), and ``TimeoutError`` if a timeout is set and nothing arrived.
        """
        with self._recv_lock:
            while True:
                if self._pending:
                    event = self._pending.popleft()
                    if isinstance(event, MessageReceived):
                        return event.data
                    if isinstance(event, CloseReceived):
                        raise ConnectionClosedError("the peer closed the connection")
                    continue
                if self._conn.state in (ConnectionState.REMOTE_CLOSED, ConnectionState.CLOSED):
                    raise ConnectionClosedError("the peer closed the connection")
                if self._closed:
                    raise ConnectionClosedError("the connection is closed")
                # A failure found after messages that verified is raised once they are read.
                if self._conn.error_pending:
                    chunk = b""
                else:
                    try:
                        chunk = self._sock.recv(_RECV_SIZE)
                    except OSError:
                        if self._closed:  # close() from another thread woke us
                            raise ConnectionClosedError("the connection is closed") from None
                        raise
                    if self._closed:
                        raise ConnectionClosedError("the connection is closed")
                try:
                    self._pending.extend(self._conn.receive_data(chunk))
                except SecurityError as exc:
                    self._abort(exc)
                    raise

    def __iter__(self) -> Iterator[bytes]:
        """Messages until the peer's authenticated close."""
        while True:
            try:
                yield self.recv()
            except ConnectionClosedError:
                return

    # -- teardown ----------------------------------------------------------------------------

    def abort(self, error: BaseException) -> None:
        """Tell the peer the coarse reason for ``error`` (never its detail), then close."""
        self._abort(error)

    def _abort(self, error: BaseException) -> None:
        with self._send_lock:
            if not self._closed:
                self._conn.send_error(error)
                out = self._conn.data_to_send()
                if out:
                    try:
                        self._sock.settimeout(1.0)
                        self._sock.sendall(out)
                    except OSError:
                        pass
            self._teardown()

    def close(self) -> None:
        """Send the authenticated close (if the connection is still open), forget the keys
        (DeleteSecurityContext) and close the socket. Idempotent."""
        with self._send_lock:
            if self._closed:
                return
            conn = self._conn
            if conn.state is not ConnectionState.FAILED:
                conn.close()
                out = conn.data_to_send()
                if out:
                    with contextlib.suppress(OSError):
                        self._sock.sendall(out)
            self._teardown()

    def _teardown(self) -> None:
        if self._closed:
            return
        self._closed = True
        context = self._conn.context
        if context.state is not ContextState.DELETED:
            context.delete()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def __enter__(self) -> AuthSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        who = self._peer.principal if self._peer is not None else "?"
        return f"<AuthSocket peer={who!r} {self._conn!r}>"


def _check_socket(sock: object) -> None:
    if not isinstance(sock, socket.socket):
        raise TypeError("sock must be a connected socket.socket")


def connect(
    address: tuple[str, int],
    credentials: Credentials,
    *,
    target_name: str | None,
    requirements: ContextReq | None = None,
    protection: ProtectionLevel = ProtectionLevel.PRIVACY,
    impersonation: ImpersonationLevel = ImpersonationLevel.IMPERSONATE,
    stream: bool = False,
    timeout: float | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    max_message: int = DEFAULT_MAX_MESSAGE,
    options: dict[str, Any] | None = None,
) -> AuthSocket:
    """ConnectAuthSocket: open a TCP connection and authenticate as ``credentials``.

    ``stream=True`` asks for a STREAM context, whose package frames and encrypts the data
    itself (needs ``ProtectionLevel.PRIVACY``).
    """
    sock = socket.create_connection(address, timeout=handshake_timeout)
    try:
        return AuthSocket.client(
            sock,
            credentials,
            target_name=target_name,
            requirements=requirements,
            protection=protection,
            impersonation=impersonation,
            stream=stream,
            timeout=timeout,
            handshake_timeout=handshake_timeout,
            max_message=max_message,
            options=options,
        )
    except BaseException:
        sock.close()
        raise


def accept(
    listening_socket: socket.socket,
    credentials: Credentials,
    *,
    protection: ProtectionLevel = ProtectionLevel.INTEGRITY,
    timeout: float | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    max_message: int = DEFAULT_MAX_MESSAGE,
    options: dict[str, Any] | None = None,
) -> AuthSocket:
    """AcceptAuthSocket: accept one connection and authenticate the client."""
    sock, _ = listening_socket.accept()
    try:
        return AuthSocket.server(
            sock,
            credentials,
            protection=protection,
            timeout=timeout,
            handshake_timeout=handshake_timeout,
            max_message=max_message,
            options=options,
        )
    except BaseException:
        sock.close()
        raise


class Server(BoundedConnections, socketserver.ThreadingTCPServer):
    """A threaded sockauth server: authenticate each connection, then run ``handler(conn)``
    impersonating the client (ImpersonateSecurityContext for the handler's whole run).

    At most ``max_connections`` connections are served at once (more are told ``busy`` and
    closed); a handshake must finish within ``handshake_timeout`` seconds and an established
    connection may stay silent for ``idle_timeout``. A connection that fails is logged and
    closed; the others carry on. The listening socket is bound when the constructor returns,
    so clients may connect before ``serve_forever`` runs.
    """

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = True

    busy_reply = encode_frame(bytes((FrameKind.ERROR,)) + b"busy")

    def __init__(
        self,
        address: tuple[str, int],
        credentials: Credentials,
        handler: Handler,
        *,
        protection: ProtectionLevel = ProtectionLevel.INTEGRITY,
        max_connections: int = 64,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        idle_timeout: float | None = 300.0,
        max_message: int = DEFAULT_MAX_MESSAGE,
        options: dict[str, Any] | None = None,
    ) -> None:
        if not callable(handler):
            raise TypeError("handler must be callable")
        if not isinstance(credentials, Credentials) or not credentials.use & CredentialUse.INBOUND:
            raise ValueError("a server needs INBOUND credentials from acquire_credentials_handle()")
        self._limit_connections(max_connections)
        server_requirements(protection)  # validate early
        self.credentials = credentials
        self.handler = handler
        self.protection = protection
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_message = max_message
        self.options = dict(options or {})
        self._live: set[socket.socket] = set()
        self._live_lock = threading.Lock()
        self._started = False
        super().__init__(address, socketserver.BaseRequestHandler)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); with port 0 this is the port the OS chose."""
        host, port = self.server_address[:2]
        return str(host), int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self._live_lock:
            self._live.add(request)
        try:
            self._serve_connection(request, client_address)
        finally:
            with self._live_lock:
                self._live.discard(request)

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            conn = AuthSocket.server(
                request,
                self.credentials,
                protection=self.protection,
                timeout=self.idle_timeout,
                handshake_timeout=self.handshake_timeout,
                max_message=self.max_message,
                options=self.options,
            )
        except SecurityError as exc:
            log.info("sockauth: handshake with %s failed (%s): %s", client_address, exc.reason, exc)
            audit.refusal("sockauth", str(client_address[0]), exc, handshake=True)
            return
        except OSError as exc:
            log.info("sockauth: handshake with %s broke off: %s", client_address, exc)
            return
        audit.logon(conn.peer, str(client_address[0]))
        try:
            with impersonate(conn.peer):
                self.handler(conn)
        except ConnectionClosedError:
            pass
        except SecurityError as exc:
            log.info("sockauth: connection from %s failed (%s): %s", conn.peer, exc.reason, exc)
            audit.refusal("sockauth", str(client_address[0]), exc)
            conn.abort(exc)
        except OSError as exc:
            log.info("sockauth: connection from %s broke off: %s", conn.peer, exc)
        except Exception:
            log.exception("sockauth: handler failed for %s", conn.peer)
            conn.abort(InternalSecurityError("handler failed"))
        finally:
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints tracebacks to stderr; keep them in the log.
        log.exception("sockauth: unexpected error serving %s", client_address)

    def server_close(self) -> None:
        """Stop listening, end every live connection and wait for the handler threads."""
        socketserver.TCPServer.server_close(self)
        with self._live_lock:
            live = list(self._live)
        for sock in live:  # wake handler threads blocked in recv; they then fail and close
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        super().server_close()

    def start(self, poll_interval: float = 0.5) -> threading.Thread:
        """Run ``serve_forever`` in a daemon thread; leaving the ``with`` block stops it
        (within ``poll_interval`` seconds)."""
        thread = threading.Thread(
            target=self.serve_forever, args=(poll_interval,), name="sockauth-server", daemon=True
        )
        self._started = True
        thread.start()
        return thread

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self.shutdown()
        self.server_close()


def serve(
    address: tuple[str, int],
    credentials: Credentials,
    handler: Handler,
    **kwargs: Any,
) -> None:
    """Serve sockauth connections on ``address`` until interrupted (see ``Server``)."""
    with Server(address, credentials, handler, **kwargs) as server:
        server.serve_forever()
