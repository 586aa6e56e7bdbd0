"""The HTTP binding: an ``http.server`` whose every request is authenticated (Negotiate shape).

    python examples/http_server.py --bundle bundles/notes

The client's tokens travel in ``Authorization`` / ``WWW-Authenticate`` (401 challenge, the
RFC 4559 shape); the handler runs as the caller, and each response is signed with the context
(``X-Rpcsec-Signature``) so the client can tell it was not altered. Prints
``READY http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import contextlib

import rpcsec
from rpcsec.sspi import CredentialUse, acquire_credentials_handle
from rpcsec.transports.httpauth import AuthHTTPRequestHandler, AuthHTTPServer, Request, Response


# [readme:http-server]
class Hello(AuthHTTPRequestHandler):
    def handle_authenticated(self, request: Request) -> Response:
        caller = rpcsec.current_token()  # the authenticated caller, as in a gRPC handler
        return Response(200, f"hello {caller.principal}, you asked for {request.path}\n".encode())
        # [/readme:http-server]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="x509 identity bundle directory")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    credentials = acquire_credentials_handle(
        "x509", None, CredentialUse.INBOUND, bundle=args.bundle
    )
    with AuthHTTPServer(("127.0.0.1", args.port), Hello, credentials) as server:
        print(f"READY {server.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
