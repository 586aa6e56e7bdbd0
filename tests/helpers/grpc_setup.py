"""Package-agnostic setups and real servers for the gRPC binding's tests.

``PackageSetup`` hides what differs between security packages -- which credentials a server
and its callers hold, the target name a client asks for, and the requirements a package can
meet (NTLM cannot prove the server, so its channels do not require MUTUAL_AUTH) -- so each
binding test runs unchanged over ntlm, x509 and, when a KDC is available, kerberos.

``serve_sync`` / ``serve_aio`` start real servers on 127.0.0.1 port 0.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import echo_pb2_grpc
import grpc
import grpc.aio

from rpcsec.sspi import ContextReq, Credentials, CredentialUse, acquire_credentials_handle

__all__ = [
    "NTLM_PASSWORDS",
    "SERVER_STYLES",
    "PackageSetup",
    "add_services",
    "kerberos_setup",
    "ntlm_setup",
    "serve_aio",
    "serve_sync",
    "x509_setup",
]

NTLM_PASSWORDS = {"alice": "Alice-Pa55!", "bob": "Bob-Pa55!"}
NTLM_REQUIREMENTS = ContextReq.REPLAY_DETECT | ContextReq.INTEGRITY | ContextReq.CONNECTION


@dataclass
class PackageSetup:
    """One package's identities: callers ``alice`` and ``bob``, services ``documents`` and
    ``storage``."""

    package: str
    requirements: ContextReq
    _client: Callable[[str], Credentials] = field(repr=False)
    _service: Callable[[str], Credentials] = field(repr=False)
    _target: Callable[[str], str] = field(repr=False)
    _principal: Callable[[str], str] = field(repr=False)
    delegates: bool = False
    pki: Any = field(default=None, repr=False)

    def client(self, name: str = "alice") -> Credentials:
        return self._client(name)

    def server(self, service: str = "documents") -> Credentials:
        return self._service(service)

    def target(self, service: str = "documents") -> str:
        return self._target(service)

    def principal(self, name: str = "alice") -> str:
        """The principal a server sees for caller ``name``."""
        return self._principal(name)

    def channel_options(self, service: str = "documents", **extra: Any) -> dict[str, Any]:
        options: dict[str, Any] = {
            "target_name": self.target(service),
            "requirements": self.requirements,
        }
        options.update(extra)
        return options


def ntlm_setup(tmp_path: pathlib.Path) -> PackageSetup:
    user_file = tmp_path / "ntlm-users"
    user_file.write_text("".join(f"RPCSEC:{u}:{p}\n" for u, p in NTLM_PASSWORDS.items()))

    def client(name: str) -> Credentials:
        return acquire_credentials_handle(
            "ntlm", f"RPCSEC\\{name}", CredentialUse.OUTBOUND, password=NTLM_PASSWORDS[name]
        )

    def service(name: str) -> Credentials:
        return acquire_credentials_handle(
            "ntlm", None, CredentialUse.INBOUND, user_file=str(user_file)
        )

    return PackageSetup(
        package="ntlm",
        requirements=NTLM_REQUIREMENTS,
        _client=client,
        _service=service,
        _target=lambda name: f"host@{name}",
        _principal=lambda name: f"RPCSEC\\{name}",
    )


def x509_setup(tmp_path: pathlib.Path) -> PackageSetup:
    from helpers.pki import make_authority

    pki = make_authority(tmp_path)
    return PackageSetup(
        package="x509",
        requirements=ContextReq.default(),
        _client=lambda name: pki.credentials(name),
        _service=lambda name: pki.credentials(name, CredentialUse.INBOUND),
        _target=pki.id,
        _principal=pki.id,
        delegates=True,
        pki=pki,
    )


def kerberos_setup(realm: Any) -> PackageSetup:
    return PackageSetup(
        package="kerberos",
        requirements=ContextReq.default(),
        _client=lambda name: realm.client_credentials(name),
        _service=lambda name: realm.server_credentials(name),
        _target=realm.hostbased,
        _principal=realm.principal,
        delegates=True,
    )


def add_services(server: Any, servicers: Iterable[Any]) -> None:
    for servicer in servicers:
        name = type(servicer).__mro__[1].__name__  # EchoServicer / AdminServicer base class
        adder = getattr(echo_pb2_grpc, f"add_{name}_to_server")
        adder(servicer, server)


SERVER_STYLES = ("interceptor", "registered")


def _split_security(interceptors: Iterable[Any], style: str, kind: type) -> tuple[Any, list[Any]]:
    """(the leading SecurityInterceptor to register handlers through, the other interceptors)
    for ``style`` "registered"; (None, all of them) otherwise."""
    chain = list(interceptors)
    if style == "registered" and chain and type(chain[0]) is kind:
        return chain[0], chain[1:]
    if style not in SERVER_STYLES:
        raise ValueError(f"unknown server style {style!r}")
    return None, chain


def serve_sync(
    interceptors: Iterable[grpc.ServerInterceptor],
    servicers: Iterable[Any],
    *,
    max_workers: int = 16,
    style: str = "interceptor",
) -> tuple[grpc.Server, str]:
    """``style`` "registered": the leading ``SecurityInterceptor`` protects the handlers as
    they are registered (``secure_server``'s way) instead of intercepting every call."""
    from rpcsec.grpc import SecurityInterceptor
    from rpcsec.grpc._server import ProtectedServer

    security, chain = _split_security(interceptors, style, SecurityInterceptor)
    server: Any = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers), interceptors=chain
    )
    if security is not None:
        server = ProtectedServer(server, security)
    add_services(server, servicers)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


async def serve_aio(
    interceptors: Iterable[grpc.aio.ServerInterceptor],
    servicers: Iterable[Any],
    *,
    migration_thread_pool: futures.ThreadPoolExecutor | None = None,
    style: str = "interceptor",
) -> tuple[grpc.aio.Server, str]:
    from rpcsec.grpc.aio import SecurityInterceptor
    from rpcsec.grpc.aio._server import ProtectedServer

    security, chain = _split_security(interceptors, style, SecurityInterceptor)
    server: Any = grpc.aio.server(interceptors=chain, migration_thread_pool=migration_thread_pool)
    if security is not None:
        server = ProtectedServer(server, security)
    add_services(server, servicers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def forget_contexts(interceptor: Any) -> None:
    """Make a server forget every context, as a restart with a fresh in-memory key ring does:
    the cached entries are dropped and the tickets issued so far no longer open."""
    from rpcsec.session import TicketKeyRing

    security = interceptor.security
    if security.tickets is not None:
        security.tickets.ring = TicketKeyRing.generate(clock=security.clock)
    for handle in list(security.table._entries):
        security.table.release(handle)
