"""Run a demo service: ``python -m server storage|documents [options]``.

Prints ``READY <address>`` on stdout once it serves, so a supervisor waits on readiness, not
on a sleep. Identity, trust and policy come from the demo environment file.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from concurrent import futures

import grpc

from protos.demo.v1 import documents_pb2_grpc as pb_grpc
from rpcsec.grpc import AuthorizationPolicy, AuthorizationRule, SecurityInterceptor
from rpcsec.security import EVERYONE
from rpcsec.sspi import ImpersonationLevel, ProtectionLevel

from .documents import DocumentsServicer
from .environment import DemoEnvironment
from .storage import StorageServicer

PROTECTION = {"integrity": ProtectionLevel.INTEGRITY, "privacy": ProtectionLevel.PRIVACY}


def _policy(
    allow: list[str], protection: ProtectionLevel, impersonation: ImpersonationLevel
) -> AuthorizationPolicy:
    """Who may call this service (``--allow``, default every authenticated principal), at
    least this protection and impersonation level; everything else is PERMISSION_DENIED."""
    rule = AuthorizationRule(
        "*",
        allow=frozenset(allow or {EVERYONE}),
        min_protection=protection,
        min_impersonation=impersonation,
    )
    return AuthorizationPolicy([rule])


def build_server(
    args: argparse.Namespace, env: DemoEnvironment
) -> tuple[grpc.Server, int, Callable[[], None]]:
    """The service's server, its port, and what to close after it stops."""
    overrides = {"trust": args.trust} if args.trust else {}
    credentials = env.service_credentials(args.package, args.identity or args.service, **overrides)
    minimum = PROTECTION[args.min_protection]
    if args.service == "storage":
        # Storage lets any authenticated caller in; its per-document descriptors decide.
        policy = _policy(args.allow, minimum, ImpersonationLevel.IMPERSONATE)
        alice = env.principal(args.package, "alice")
        bob = env.principal(args.package, "bob")
        servicer = StorageServicer(
            {
                "report.txt": (alice, b"Q3 report: revenue up 12%, costs flat.\n"),
                "notes.txt": (bob, b"bob's private notes\n"),
            }
        )
        register = pb_grpc.add_StorageServicer_to_server
    else:
        policy = _policy(args.allow, minimum, ImpersonationLevel.IDENTIFY)
        servicer = DocumentsServicer(
            storage_address=args.storage or env.address("storage"),
            storage_target=env.target_name(args.package, "storage"),
            protection=PROTECTION[args.onward_protection],
        )
        register = pb_grpc.add_DocumentsServicer_to_server
    interceptor = SecurityInterceptor(credentials, policy=policy)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=[interceptor])
    register(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    close = servicer.close if isinstance(servicer, DocumentsServicer) else (lambda: None)
    return server, port, close


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=["storage", "documents"])
    parser.add_argument("--package", default="x509", help="security package (x509, ntlm, ...)")
    parser.add_argument("--env", help="demo environment file (default: demo-env.json)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--storage", help="storage address for the documents service")
    parser.add_argument(
        "--identity", help="the demo identity to serve as (default: the service's own name)"
    )
    parser.add_argument("--trust", help="x509 trust bundle (default: the demo authority's)")
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="TRUSTEE",
        help="principal or group:NAME allowed to call (repeatable; default: any authenticated)",
    )
    parser.add_argument("--min-protection", choices=list(PROTECTION), default="integrity")
    parser.add_argument("--onward-protection", choices=list(PROTECTION), default="privacy")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format=f"[{args.service}] %(levelname)s %(name)s: %(message)s",
    )
    env = DemoEnvironment.load(args.env)
    env.apply_process_env(args.package)
    server, port, close = build_server(args, env)
    server.start()
    print(f"READY 127.0.0.1:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()
    close()  # the front's one channel to storage
    return 0


if __name__ == "__main__":
    sys.exit(main())
