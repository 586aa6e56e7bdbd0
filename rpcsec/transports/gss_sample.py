"""sockauth's standard mode: MIT gss-sample's protocol over TCP (``_gss_sample`` has the wire).

``GssSampleServer`` is ``gss-server``'s "sign" service: MIT's ``gss-client`` (Kerberos, or
SPNEGO with ``-spnego``) authenticates, each wrapped message is unwrapped and handed to
``handler(message)``, which runs impersonating the client (``current_token()``), and the reply
is GSS_GetMIC over the message. ``call_server`` is ``gss-client``: it authenticates to any
gss-sample server (MIT's ``gss-server`` included), wraps each message, and verifies the MIC
that comes back. Kerberos only needs the kerberos (or negotiate) package's standard mode::

    with GssSampleServer(("127.0.0.1", 0), storage_creds, handler) as server:
        server.start()
        call_server(server.address, alice, "storage@localhost", [b"hello"])

rpcsec's sockauth guarantees that this mode keeps: mutual authentication (when asked, the
default), integrity of every message (WRAPPED required) and confidentiality when ``protection``
is PRIVACY, GSS's own replay/sequence detection when the client asked for it (gss-client does
by default). What it drops: rpcsec's signed close and its sequence-bound frames (an attacker
can cut the connection after any whole message; gss-sample has no authenticated end).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rpcsec.packages._standard import standard_messages
from rpcsec.security import AccessToken, impersonate
from rpcsec.sspi import (
    ContextReq,
    Credentials,
    CredentialUse,
    InvalidTokenError,
    MessageAlteredError,
    ProtectionLevel,
    SecurityError,
    ServerContext,
    accept_security_context,
    initialize_security_context,
)

from ._errors import TruncatedFrameError
from ._gss_sample import (
    CONTEXT,
    CONTEXT_NEXT,
    DATA,
    DEFAULT_MAX_TOKEN,
    ENCRYPTED,
    MIC,
    NOOP,
    SEND_MIC,
    WRAPPED,
    SampleToken,
    SampleTokenReader,
    ServerProtocol,
    encode_sample_token,
)
from ._serving import BoundedConnections

__all__ = ["GssSampleServer", "SampleResult", "call_server"]

log = logging.getLogger("rpcsec.transports.gss_sample")

Handler = Callable[[bytes], None]


def _read_token(sock: socket.socket, reader: SampleTokenReader) -> SampleToken:
    while True:
        item = reader.next_token()
        if item is not None:
            return item
        data = sock.recv(65536)
        if not data:
            raise TruncatedFrameError("gss-sample peer closed the connection inside a token")
        reader.feed(data)


class GssSampleServer(BoundedConnections, socketserver.ThreadingTCPServer):
    """gss-server's sign service for rpcsec credentials (kerberos or negotiate package)."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = True

    def __init__(
        self,
        address: tuple[str, int],
        credentials: Credentials,
        handler: Handler,
        *,
        protection: ProtectionLevel = ProtectionLevel.INTEGRITY,
        max_connections: int = 64,
        timeout: float = 30.0,
        max_token: int = DEFAULT_MAX_TOKEN,
    ) -> None:
        if not callable(handler):
            raise TypeError("handler must be callable")
        if not isinstance(credentials, Credentials) or not credentials.use & CredentialUse.INBOUND:
            raise ValueError("a server needs INBOUND credentials from acquire_credentials_handle()")
        if protection is ProtectionLevel.NONE:
            raise ValueError("gss-sample messages are always wrapped: INTEGRITY or PRIVACY")
        self._limit_connections(max_connections)
        self.credentials = credentials
        self.handler = handler
        self.protection = protection
        self.timeout = timeout
        self.max_token = max_token
        self.sessions: list[AccessToken] = []  # who authenticated (for tests and audits)
        self._started = False
        super().__init__(address, socketserver.BaseRequestHandler)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        return str(host), int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.timeout)
        context = accept_security_context(self.credentials, options={"standard": "only"})
        try:
            self._serve(request, context)
        except SecurityError as exc:
            log.info("gss-sample: refused %s: %s (%s)", client_address[0], exc.reason, exc)
        except OSError as exc:
            log.info("gss-sample: connection from %s ended: %s", client_address[0], exc)
        finally:
            context.delete()

    def _serve(self, sock: socket.socket, context: ServerContext) -> None:
        caller: list[AccessToken] = []

        def accept(token: bytes) -> tuple[bytes | None, bool]:
            result = context.step(token)
            if result.complete:
                caller.append(context.peer.replace(protection_level=context.protection_level))
                self.sessions.append(caller[0])
            return result.token, result.complete

        def messages() -> Any:
            found = standard_messages(context)
            if found is None:
                raise InvalidTokenError("context is not in standard mode")
            return found

        def on_message(message: bytes) -> None:
            with impersonate(caller[0]):
                self.handler(message)

        protocol = ServerProtocol(
            accept,
            lambda token: messages().gss_unwrap(token),
            lambda data: messages().gss_get_mic(data),
            on_message,
            require_encryption=self.protection is ProtectionLevel.PRIVACY,
        )
        reader = SampleTokenReader(self.max_token)
        while not protocol.done:
            for out in protocol.receive(_read_token(sock, reader)):
                sock.sendall(out)

    def start(self) -> threading.Thread:
        """``serve_forever`` in a daemon thread; leaving the ``with`` block stops it."""
        thread = threading.Thread(target=self.serve_forever, args=(0.2,), daemon=True)
        self._started = True
        thread.start()
        return thread

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self.shutdown()
        self.server_close()


@dataclass(frozen=True, slots=True)
class SampleResult:
    """What ``call_server`` proved: the server (``server.principal``, from mutual
    authentication) and how many messages it signed back (each MIC verified)."""

    server: AccessToken
    signed: int


def call_server(
    address: tuple[str, int],
    credentials: Credentials,
    service: str,
    messages: Sequence[bytes],
    *,
    mech: str = "krb5",
    encrypt: bool = True,
    mic: bool = True,
    requirements: ContextReq = ContextReq.MUTUAL_AUTH | ContextReq.REPLAY_DETECT,
    timeout: float = 30.0,
    max_token: int = DEFAULT_MAX_TOKEN,
) -> SampleResult:
    """gss-client: authenticate to ``service`` (``svc@host``), send each message wrapped, and
    (with ``mic``) verify the server's MIC over it. ``mech`` is ``"krb5"`` or ``"spnego"``.
    Raises ``SecurityError`` subclasses for a refused context, a missing or bad MIC, and
    ``TruncatedFrameError`` when the server hangs up early."""
    if mech not in ("krb5", "spnego"):
        raise ValueError("mech must be 'krb5' or 'spnego'")
    if not isinstance(requirements, ContextReq):
        raise TypeError("requirements must be ContextReq flags")
    wanted = requirements | ContextReq.INTEGRITY
    if encrypt:
        wanted |= ContextReq.CONFIDENTIALITY
    context = initialize_security_context(
        credentials, service, wanted, options={"standard": "spnego" if mech == "spnego" else True}
    )
    reader = SampleTokenReader(max_token)
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(encode_sample_token(NOOP | CONTEXT_NEXT, b""))
            result = context.step()
            while True:
                if result.token:
                    sock.sendall(encode_sample_token(CONTEXT, result.token))
                if result.complete:
                    break
                reply = _read_token(sock, reader)
                if reply.flags != CONTEXT:
                    raise InvalidTokenError("expected a gss-sample context token")
                result = context.step(reply.token)
            context.require(requirements)
            calls = standard_messages(context)
            assert calls is not None
            signed = 0
            for message in messages:
                flags = DATA | WRAPPED | (ENCRYPTED if encrypt else 0) | (SEND_MIC if mic else 0)
                sock.sendall(encode_sample_token(flags, calls.gss_wrap(message, encrypt=encrypt)))
                answer = _read_token(sock, reader)
                if mic:
                    if answer.flags != MIC:
                        raise MessageAlteredError("gss-sample server did not sign the message")
                    calls.gss_verify_mic(message, answer.token)
                    signed += 1
                elif answer.flags != NOOP:
                    raise InvalidTokenError("expected a gss-sample NOOP token")
            sock.sendall(encode_sample_token(NOOP, b""))
            return SampleResult(server=context.peer, signed=signed)
    finally:
        if context.state.value != "deleted":
            context.delete()
