"""A delegating front service: client -> front -> storage, the storage sees the client.

    python examples/front_server.py --bundle bundles/front --storage 127.0.0.1:PORT \
        --storage-name spiffe://example.test/svc/notes

The front has no rights of its own at the storage. Inside a handler it impersonates the
caller, so its one ``secure_channel``, made at start *without credentials*, sends each call
with the caller's delegated credentials (dynamic cloaking); the storage then sees principal =
the client, via = [front]. The
client must allow it: ``client.py --delegate-to spiffe://example.test/svc/notes`` (x509
delegation names where the front may act as you); with Kerberos (``--keytab``/``--principal``
here, ``client.py --ccache ... --delegate`` there) the client forwards its ticket instead. A
caller who did not delegate gets PERMISSION_DENIED ``delegation-required``.
Prints ``READY 127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
from concurrent import futures

import grpc
import notes_pb2_grpc

from rpcsec.grpc import AuthorizationPolicy, SecurityInterceptor, secure_channel
from rpcsec.sspi import (
    CredentialUse,
    ImpersonationLevel,
    ProtectionLevel,
    acquire_credentials_handle,
)


class Front(notes_pb2_grpc.NotesServicer):
    def __init__(self, storage: str, storage_name: str) -> None:
        # [readme:delegation]
        # One channel for every caller, made at start and without credentials (dynamic
        # cloaking, DCOM's EOAC_DYNAMIC_CLOAKING): each call goes out as the caller the handler
        # impersonates at that moment -- their delegated credentials, over a context cached
        # for that caller alone -- or raises DelegationRequiredError when the caller did not
        # delegate. All callers share its one HTTP/2 connection; none is ever sent as another.
        self._channel = secure_channel(
            storage,
            target_name=storage_name,
            impersonation=ImpersonationLevel.IMPERSONATE,
            protection=ProtectionLevel.PRIVACY,  # the storage's Write needs sealed calls
        )
        self._storage = notes_pb2_grpc.NotesStub(self._channel)
        # [/readme:delegation]

    def close(self) -> None:
        self._channel.close()

    def _call_storage(self, call):
        return call(self._storage)

    def Read(self, request, context):
        return self._call_storage(lambda storage: storage.Read(request))

    def Write(self, request, context):
        return self._call_storage(lambda storage: storage.Write(request))

    def List(self, request, context):
        notes = self._call_storage(lambda storage: list(storage.List(request)))
        yield from notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="the front's x509 bundle")
    parser.add_argument("--keytab", help="kerberos: the front's keytab")
    parser.add_argument("--principal", help="kerberos: the front's service principal")
    parser.add_argument("--storage", required=True, help="storage address host:port")
    parser.add_argument("--storage-name", required=True, help="storage's identity")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.keytab:  # kerberos: the caller forwards a ticket instead of signing a proxy
        credentials = acquire_credentials_handle(
            "kerberos", args.principal, CredentialUse.INBOUND, keytab=args.keytab
        )
    elif args.bundle:
        credentials = acquire_credentials_handle(
            "x509", None, CredentialUse.INBOUND, bundle=args.bundle
        )
    else:
        parser.error("give --bundle (x509) or --keytab (kerberos)")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[
            SecurityInterceptor(credentials, policy=AuthorizationPolicy.any_authenticated())
        ],
    )
    front = Front(args.storage, args.storage_name)
    notes_pb2_grpc.add_NotesServicer_to_server(front, server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"READY 127.0.0.1:{port}", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace=1).wait()
    finally:
        front.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
