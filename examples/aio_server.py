"""The same secured Notes service on ``grpc.aio``: only the imports and ``async`` change.

    python examples/aio_server.py --bundle bundles/notes

Prints ``READY 127.0.0.1:PORT`` once it accepts calls. Async handlers run as the caller too:
``current_token()`` follows the task (it is a context variable).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import notes_pb2
import notes_pb2_grpc

import rpcsec
from rpcsec.grpc import AuthorizationPolicy
from rpcsec.grpc.aio import SecurityInterceptor
from rpcsec.sspi import Credentials, CredentialUse, acquire_credentials_handle


class Notes(notes_pb2_grpc.NotesServicer):
    def __init__(self) -> None:
        self._notes: dict[str, str] = {}

    def _note(self, name: str, text: str) -> notes_pb2.Note:
        caller = rpcsec.current_token()
        return notes_pb2.Note(
            name=name, text=text, caller=caller.principal, via=list(caller.delegation_chain)
        )

    async def Write(self, request, context):
        self._notes[request.name] = request.text
        return self._note(request.name, request.text)

    async def Read(self, request, context):
        text = self._notes.get(request.name)
        if text is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no note {request.name!r}")
        return self._note(request.name, text)

    async def List(self, request, context) -> AsyncIterator[notes_pb2.Note]:
        for name, text in sorted(self._notes.items()):
            yield self._note(name, text)


async def serve(credentials: Credentials, port: int = 0) -> tuple[grpc.aio.Server, int]:
    # [readme:aio-server]
    server = grpc.aio.server(
        interceptors=[
            SecurityInterceptor(credentials, policy=AuthorizationPolicy.any_authenticated()),
        ],
    )
    notes_pb2_grpc.add_NotesServicer_to_server(Notes(), server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    # [/readme:aio-server]
    return server, port


async def main_async(args: argparse.Namespace) -> None:
    credentials = acquire_credentials_handle(
        "x509", None, CredentialUse.INBOUND, bundle=args.bundle
    )
    server, port = await serve(credentials, args.port)
    print(f"READY 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="x509 identity bundle directory")
    parser.add_argument("--port", type=int, default=0)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
