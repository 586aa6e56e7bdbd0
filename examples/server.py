"""A secured gRPC service (sync): the Notes service behind one SecurityInterceptor.

    python examples/server.py --bundle bundles/notes          # x509 (make_identities.sh)
    python examples/server.py --keytab notes.keytab --principal notes/host@REALM   # kerberos

Prints ``READY 127.0.0.1:PORT`` once it accepts calls, then serves until interrupted. The
handlers are ordinary gRPC handlers; they run as the verified caller (``current_token()``).
Only the credentials differ between x509 and kerberos; nothing else changes.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import notes_pb2
import notes_pb2_grpc

import rpcsec
from rpcsec.grpc import AuthorizationPolicy, SecurityInterceptor
from rpcsec.sspi import Credentials, CredentialUse, acquire_credentials_handle


class Notes(notes_pb2_grpc.NotesServicer):
    """Generated servicer, unchanged API: rpcsec verified the call before it got here."""

    def __init__(self) -> None:
        self._notes: dict[str, str] = {}
        self._lock = threading.Lock()

    def _note(self, name: str, text: str) -> notes_pb2.Note:
        caller = rpcsec.current_token()  # who called, as the security package proved it
        return notes_pb2.Note(
            name=name, text=text, caller=caller.principal, via=list(caller.delegation_chain)
        )

    def Write(self, request, context):
        with self._lock:
            self._notes[request.name] = request.text
        return self._note(request.name, request.text)

    def Read(self, request, context):
        with self._lock:
            text = self._notes.get(request.name)
        if text is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no note {request.name!r}")
        return self._note(request.name, text)

    def List(self, request, context) -> Iterator[notes_pb2.Note]:
        with self._lock:
            notes = sorted(self._notes.items())
        for name, text in notes:
            yield self._note(name, text)


def service_credentials(args: argparse.Namespace) -> Credentials:
    # [readme:credentials]
    if args.keytab:  # kerberos: the service's key from its keytab
        return acquire_credentials_handle(
            "kerberos", args.principal, CredentialUse.INBOUND, keytab=args.keytab
        )
    # x509: a bundle from `rpcsec authority issue ... --bundle` (never the authority's key)
    return acquire_credentials_handle("x509", None, CredentialUse.INBOUND, bundle=args.bundle)
    # [/readme:credentials]


def serve(credentials: Credentials, port: int = 0) -> tuple[grpc.Server, int]:
    # [readme:server]
    # The policy denies by default; this one lets every authenticated caller call every
    # method (see policy_server.py for per-method rules).
    policy = AuthorizationPolicy.any_authenticated()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[SecurityInterceptor(credentials, policy=policy)],
    )
    notes_pb2_grpc.add_NotesServicer_to_server(Notes(), server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    # [/readme:server]
    return server, port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="x509 identity bundle directory")
    parser.add_argument("--keytab", help="kerberos: the service's keytab")
    parser.add_argument("--principal", help="kerberos: the service principal")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    args = parser.parse_args(argv)
    if not (args.bundle or args.keytab):
        parser.error("give --bundle (x509) or --keytab (kerberos)")
    server, port = serve(service_credentials(args), args.port)
    print(f"READY 127.0.0.1:{port}", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace=1).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
