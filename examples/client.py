"""A client of the secured Notes service (sync): generated stubs over ``secure_channel``.

    python examples/client.py --bundle bundles/alice --target 127.0.0.1:PORT \
        --target-name spiffe://example.test/svc/notes write hello "first note"
    python examples/client.py ... read hello
    python examples/client.py ... list

Kerberos: ``--ccache FILE`` instead of ``--bundle`` and ``--target-name notes@host``.
``--target-name`` is who the server must prove to be: the channel refuses any other server.
A refusal prints the gRPC status and rpcsec's reason and exits 1.
"""

from __future__ import annotations

import argparse
import sys

import grpc
import notes_pb2
import notes_pb2_grpc

from rpcsec.grpc import reason_of, secure_channel
from rpcsec.sspi import (
    Credentials,
    CredentialUse,
    ImpersonationLevel,
    ProtectionLevel,
    SecurityError,
    acquire_credentials_handle,
)


def user_credentials(args: argparse.Namespace) -> Credentials:
    if args.ccache:  # kerberos: a ticket cache from kinit
        return acquire_credentials_handle(
            "kerberos", None, CredentialUse.OUTBOUND, ccache=args.ccache
        )
    return acquire_credentials_handle("x509", None, CredentialUse.OUTBOUND, bundle=args.bundle)


def open_channel(args: argparse.Namespace, credentials: Credentials) -> grpc.Channel:
    # [readme:client]
    # Swap grpc.insecure_channel for secure_channel; the stubs are unchanged.
    channel = secure_channel(
        args.target,
        credentials,
        target_name=args.target_name,  # the server must prove this identity
        protection=ProtectionLevel[args.protection.upper()],  # PRIVACY sealed, INTEGRITY signed
        impersonation=args.impersonation,  # DELEGATE: the server may call onward as you
        # x509 delegation names where the service may act as you (default: nowhere)
        package_options={"delegate_to": args.delegate_to} if args.delegate_to else None,
    )
    # [/readme:client]
    return channel


def show(note: notes_pb2.Note) -> None:
    via = f" via {', '.join(note.via)}" if note.via else ""
    print(f"{note.name}: {note.text!r} (server saw {note.caller}{via})")


def run(stub: notes_pb2_grpc.NotesStub, command: str, names: list[str]) -> None:
    if command == "write":
        show(stub.Write(notes_pb2.WriteRequest(name=names[0], text=names[1])))
    elif command == "read":
        show(stub.Read(notes_pb2.ReadRequest(name=names[0])))
    else:
        for note in stub.List(notes_pb2.ListRequest()):
            show(note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="x509 identity bundle directory")
    parser.add_argument("--ccache", help="kerberos: ticket cache")
    parser.add_argument("--target", required=True, help="server address host:port")
    parser.add_argument("--target-name", required=True, help="the server's identity")
    parser.add_argument("--protection", choices=["privacy", "integrity"], default="privacy")
    parser.add_argument("--delegate", action="store_true", help="allow the server to delegate")
    parser.add_argument(
        "--delegate-to", action="append", metavar="NAME", help="x509: allowed onward target"
    )
    parser.add_argument("command", choices=["write", "read", "list"])
    parser.add_argument("args", nargs="*")
    args = parser.parse_args(argv)
    delegate = args.delegate or bool(args.delegate_to)
    args.impersonation = ImpersonationLevel.DELEGATE if delegate else ImpersonationLevel.IMPERSONATE
    channel = open_channel(args, user_credentials(args))
    try:
        run(notes_pb2_grpc.NotesStub(channel), args.command, args.args)
    except SecurityError as exc:  # detected here, by this client (e.g. a tampered response)
        print(f"refused by this client: {exc.reason}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:  # refused by the server: status + rpcsec-reason trailer
        print(f"refused: {exc.code().name} {reason_of(exc) or exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
