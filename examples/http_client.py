"""An HTTP client of the authenticated server: one GET, the server proven, the response verified.

    python examples/http_client.py --bundle bundles/alice \
        --target-name spiffe://example.test/svc/notes http://127.0.0.1:PORT/hello
"""

from __future__ import annotations

import argparse
import sys

from rpcsec.sspi import CredentialUse, SecurityError, acquire_credentials_handle
from rpcsec.transports.httpauth import http_get


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--target-name", required=True, help="the server's identity")
    parser.add_argument("url")
    args = parser.parse_args(argv)
    # [readme:http-client]
    alice = acquire_credentials_handle("x509", None, CredentialUse.OUTBOUND, bundle=args.bundle)
    try:
        result = http_get(args.url, alice, target_name=args.target_name)
    except SecurityError as exc:  # the server refused us, or the response was not signed
        print(f"refused: {exc.reason}", file=sys.stderr)
        return 1
    server = result.server.principal if result.server else "?"
    print(f"{result.status} from {server} (signature verified: {result.verified})")
    print(result.body.decode(), end="")
    # [/readme:http-client]
    return 0 if result.status == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
