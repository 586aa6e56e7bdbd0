"""``python -m client --as alice get report.txt``: call the documents service as a demo user
and print who each service saw, including the delegation chain."""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import sys
from collections.abc import Iterator

import grpc

from protos.demo.v1 import documents_pb2 as pb
from protos.demo.v1 import documents_pb2_grpc as pb_grpc
from rpcsec.grpc import secure_channel
from rpcsec.sspi import (
    ContextReq,
    ImpersonationLevel,
    PackageCapability,
    ProtectionLevel,
    SecurityError,
    query_security_package_info,
)
from server.environment import DemoEnvironment

LEVELS = {level.name.lower(): level for level in ImpersonationLevel}
PROTECTION = {"integrity": ProtectionLevel.INTEGRITY, "privacy": ProtectionLevel.PRIVACY}


def describe(identity: pb.Identity) -> str:
    via = "".join(f" via {hop}" for hop in identity.delegation_chain)
    return (
        f"{identity.principal}{via} [{identity.package}, {identity.impersonation_level}, "
        f"{identity.protection_level}]"
    )


def required_flags(package: str, protection: ProtectionLevel) -> ContextReq:
    """What this client insists on: integrity with replay detection, confidentiality for
    privacy, and mutual authentication wherever the package can prove the server."""
    required = ContextReq.REPLAY_DETECT | ContextReq.INTEGRITY
    if protection is ProtectionLevel.PRIVACY:
        required |= ContextReq.CONFIDENTIALITY
    if query_security_package_info(package).capabilities & PackageCapability.MUTUAL_AUTH:
        required |= ContextReq.MUTUAL_AUTH
    return required


def open_channel(args: argparse.Namespace, env: DemoEnvironment) -> grpc.Channel:
    package_options = {}
    if args.delegate_to and args.package == "x509":  # proxy-certificate policy; Kerberos
        # forwards the TGT itself and has no per-target policy of ours
        package_options["delegate_to"] = [
            env.target_name(args.package, service) for service in args.delegate_to
        ]
    return secure_channel(
        args.target or env.address("documents"),
        env.user_credentials(args.package, args.user),
        target_name=env.target_name(args.package, "documents"),
        requirements=required_flags(args.package, PROTECTION[args.protection]),
        impersonation=LEVELS[args.impersonation],
        protection=PROTECTION[args.protection],
        package_options=package_options,
    )


def _chunks(name: str, data: bytes, size: int = 64 * 1024) -> Iterator[pb.Chunk]:
    yield pb.Chunk(name=name, data=data[:size])
    for offset in range(size, len(data), size):
        yield pb.Chunk(data=data[offset : offset + size])


def run(args: argparse.Namespace, out=sys.stdout) -> int:
    env = DemoEnvironment.load(args.env)
    env.apply_process_env(args.package)
    channel = open_channel(args, env)
    stub = pb_grpc.DocumentsStub(channel)
    try:
        if args.command == "get":
            doc = stub.GetDocument(pb.GetDocumentRequest(name=args.name))
            print(doc.content.decode(errors="replace"), end="", file=out)
            print(f"  documents saw: {describe(doc.front_saw)}", file=out)
            print(f"  storage saw:   {describe(doc.storage_saw)}", file=out)
        elif args.command == "put":
            put = stub.PutDocument(
                pb.PutDocumentRequest(name=args.name, content=args.text.encode())
            )
            print(f"stored {put.name} ({put.size} bytes)", file=out)
            print(f"  storage saw:   {describe(put.storage_saw)}", file=out)
        elif args.command == "list":
            listing = stub.ListDocuments(pb.ListDocumentsRequest())
            print("\n".join(listing.names) or "(nothing readable)", file=out)
            print(f"  storage saw:   {describe(listing.storage_saw)}", file=out)
        elif args.command == "whoami":
            print(f"documents saw: {describe(stub.WhoAmI(pb.WhoAmIRequest()))}", file=out)
        elif args.command == "upload":
            data = pathlib.Path(args.file).read_bytes()
            put = stub.Upload(_chunks(args.name, data))
            digest = hashlib.sha256(data).hexdigest()[:16]
            print(f"uploaded {args.name} ({put.size} bytes, sha256 {digest}...)", file=out)
            print(f"  storage saw:   {describe(put.storage_saw)}", file=out)
        elif args.command == "download":
            request = pb.GetDocumentRequest(name=args.name)
            data = b"".join(chunk.data for chunk in stub.Download(request))
            if args.output:
                pathlib.Path(args.output).write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()[:16]
            print(f"downloaded {args.name} ({len(data)} bytes, sha256 {digest}...)", file=out)
        if args.verbose:
            describe_binding(channel, out)
        return 0
    except grpc.RpcError as error:
        print(f"refused: {error_summary(error)}", file=out)
        return 1
    except SecurityError as error:
        print(f"refused locally: {error.reason}: {error}", file=out)
        return 1
    finally:
        channel.close()


def flag_names(flags: ContextReq) -> str:
    return "|".join(flag.name or "" for flag in ContextReq if flag and flag in flags) or "NONE"


def describe_binding(channel: grpc.Channel, out) -> None:
    """The handshake's outcome: who the server proved to be and what was granted."""
    context = getattr(channel, "security_context", None)
    if context is None:
        return
    server = context.peer
    proven = "proved" if context.attributes & ContextReq.MUTUAL_AUTH else "claimed (unproven)"
    print(f"  bound with {context.package.name}: server {proven} {server.principal}", file=out)
    print(f"  granted: {flag_names(context.attributes)}", file=out)
    print(f"  server may act as us at level {context.impersonation_level.name}", file=out)


def error_summary(error: grpc.RpcError) -> str:
    """``CODE reason: details`` from a failed call (the reason rides in trailing metadata)."""
    code = error.code() if hasattr(error, "code") else None
    reason = ""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == "rpcsec-reason":
            reason = value if isinstance(value, str) else value.decode()
    details = error.details() if hasattr(error, "details") else str(error)
    name = code.name if code is not None else "UNKNOWN"
    return f"{name} {reason}: {details}" if reason else f"{name}: {details}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client", description=__doc__.splitlines()[0])
    parser.add_argument("--as", dest="user", required=True, help="demo user: alice or bob")
    parser.add_argument("--package", default="x509")
    parser.add_argument("--protection", choices=list(PROTECTION), default="privacy")
    parser.add_argument("--impersonation", choices=list(LEVELS), default="delegate")
    parser.add_argument(
        "--delegate-to",
        action="append",
        default=[],
        metavar="SERVICE",
        help="service the documents front may call as you (x509 proxy policy); repeatable",
    )
    parser.add_argument("--env", help="demo environment file (default: demo-env.json)")
    parser.add_argument("--target", help="documents address (default: from the environment)")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("get").add_argument("name")
    put = commands.add_parser("put")
    put.add_argument("name")
    put.add_argument("--text", required=True)
    commands.add_parser("list")
    commands.add_parser("whoami")
    upload = commands.add_parser("upload")
    upload.add_argument("name")
    upload.add_argument("file")
    download = commands.add_parser("download")
    download.add_argument("name")
    download.add_argument("-o", "--output", help="write the document here")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
