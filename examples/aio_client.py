"""A ``grpc.aio`` client of the secured Notes service: ``rpcsec.grpc.aio.secure_channel``.

    python examples/aio_client.py --bundle bundles/alice --target 127.0.0.1:PORT \
        --target-name spiffe://example.test/svc/notes

Writes two notes concurrently (both share the channel's one handshake), reads one back,
streams the list, and prints what the server saw.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
import notes_pb2
import notes_pb2_grpc

from rpcsec.grpc import reason_of
from rpcsec.grpc.aio import secure_channel
from rpcsec.sspi import (
    CredentialUse,
    ProtectionLevel,
    SecurityError,
    acquire_credentials_handle,
)


async def run(args: argparse.Namespace) -> None:
    # [readme:aio-client]
    credentials = acquire_credentials_handle(
        "x509",
        None,
        CredentialUse.OUTBOUND,
        bundle=args.bundle,
    )
    channel = secure_channel(
        args.target,
        credentials,
        target_name=args.target_name,
        protection=ProtectionLevel.PRIVACY,
    )
    stub = notes_pb2_grpc.NotesStub(channel)
    written = await asyncio.gather(
        stub.Write(notes_pb2.WriteRequest(name="a", text="one")),
        stub.Write(notes_pb2.WriteRequest(name="b", text="two")),
    )
    # [/readme:aio-client]
    try:
        for note in written:
            print(f"wrote {note.name} as {note.caller}")
        note = await stub.Read(notes_pb2.ReadRequest(name="a"))
        print(f"read {note.name}: {note.text!r} (server saw {note.caller})")
        async for note in stub.List(notes_pb2.ListRequest()):
            print(f"listed {note.name}")
    finally:
        await channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--target-name", required=True)
    try:
        asyncio.run(run(parser.parse_args(argv)))
    except SecurityError as exc:
        print(f"refused by this client: {exc.reason}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"refused: {exc.code().name} {reason_of(exc) or exc.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
