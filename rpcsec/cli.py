"""The ``rpcsec`` command line: ``rpcsec authority init|issue`` and ``rpcsec demo``.

Each top-level command is one function that adds its subparser and sets ``handler``; add a
new command by writing such a function and listing it in ``COMMANDS``. Handlers return the
process exit code. Errors a user can fix (bad names, existing authority) print one line to
stderr and exit 1; argparse's usage errors exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

__all__ = ["COMMANDS", "build_parser", "main"]


def _authority_init(args: argparse.Namespace) -> int:
    from rpcsec.packages.x509 import Authority

    authority = Authority.init(args.directory, args.trust_domain, days=args.days)
    print(f"created authority for trust domain {authority.trust_domain}")
    print(f"  trust bundle: {authority.trust_bundle_path}")
    print(f"  root key:     {authority.directory / 'root.key'} (mode 0600)")
    return 0


def _authority_issue(args: argparse.Namespace) -> int:
    from rpcsec.packages.x509 import Authority

    authority = Authority.open(args.directory)
    issued = authority.issue(
        args.name, service=args.service, groups=args.group or (), days=args.days
    )
    print(issued.spiffe_id)
    print(f"  certificate: {issued.certificate_path}")
    print(f"  key:         {issued.key_path} (mode 0600)")
    return 0


def add_authority_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``rpcsec authority``: the local x509 certificate authority."""
    authority = subparsers.add_parser(
        "authority",
        help="manage a local x509 authority (SPIFFE identities for the x509 package)",
        description="A local Ed25519 certificate authority issuing SPIFFE X509-SVIDs.",
    )
    actions = authority.add_subparsers(dest="action", required=True, metavar="ACTION")

    init = actions.add_parser("init", help="create a new authority (root certificate and key)")
    init.add_argument("directory", metavar="DIR", help="where to create the authority")
    init.add_argument(
        "--trust-domain", required=True, metavar="NAME", help="SPIFFE trust domain, e.g. corp.test"
    )
    init.add_argument(
        "--days", type=float, default=3650, help="root validity in days (default 3650)"
    )
    init.set_defaults(handler=_authority_init)

    issue = actions.add_parser("issue", help="issue a user or service identity")
    issue.add_argument("directory", metavar="DIR", help="an authority made by 'init'")
    issue.add_argument("name", metavar="NAME", help="user or service name, e.g. alice")
    issue.add_argument(
        "--service", action="store_true", help="issue spiffe://TD/svc/NAME instead of /user/NAME"
    )
    issue.add_argument(
        "--group",
        action="append",
        metavar="G",
        help="add the identity to group G (repeatable)",
    )
    issue.add_argument(
        "--days", type=float, default=365, help="certificate validity in days (default 365)"
    )
    issue.set_defaults(handler=_authority_issue)


def _find_demo_checkout() -> str | None:
    """The source checkout holding ``server/`` and ``client/`` (the demo system is not
    installed with the library): the current directory or a parent, else this package's."""
    import pathlib

    here = pathlib.Path.cwd()
    candidates = [here, *here.parents, pathlib.Path(__file__).resolve().parent.parent]
    for candidate in candidates:
        if (candidate / "client" / "demo.py").is_file() and (candidate / "server").is_dir():
            return str(candidate)
    return None


def _demo(args: argparse.Namespace) -> int:
    checkout = _find_demo_checkout()
    if checkout is None:
        print(
            "rpcsec demo: the demo system (server/, client/) lives in the source checkout; "
            "run this from a clone of the repository",
            file=sys.stderr,
        )
        return 1
    sys.path.insert(0, checkout)
    from client.demo import main as demo_main  # type: ignore[import-not-found]

    argv = ["--package", args.package] + (["--keep"] if args.keep else [])
    return int(demo_main(argv))


def add_demo_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``rpcsec demo``: the multi-hop story (client -> documents -> storage)."""
    demo = subparsers.add_parser(
        "demo",
        help="run the scripted multi-hop demo on loopback",
        description="Start the documents and storage services and tell the delegation story.",
    )
    demo.add_argument("--package", default="x509", help="security package (x509, ntlm, ...)")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")
    demo.set_defaults(handler=_demo)


def _keyring_create(args: argparse.Namespace) -> int:
    from rpcsec.session import TicketKeyRing

    ring = TicketKeyRing.create(args.directory)
    print(f"created ticket key ring {args.directory} (directory 0700, key files 0600)")
    print(f"  sealing key: {ring.key_names[0].hex()}")
    return 0


def _keyring_rotate(args: argparse.Namespace) -> int:
    from rpcsec.session import TicketKeyRing

    ring = TicketKeyRing.rotate(args.directory, keep=args.keep)
    print(f"rotated ticket key ring {args.directory}: {len(ring.key_names)} keys")
    print(f"  sealing key: {ring.key_names[0].hex()}")
    return 0


def _keyring_show(args: argparse.Namespace) -> int:
    import time

    from rpcsec.session import DEFAULT_MAX_AGE, TicketKeyRing

    now = time.time()
    for index, info in enumerate(TicketKeyRing.describe(args.directory)):
        role = "seals+opens" if index == 0 else "opens"
        age = max(0.0, now - info.created_at)
        if index == 0 and age >= DEFAULT_MAX_AGE:
            role = "opens (too old to seal: run 'rpcsec keyring rotate')"
        print(f"{info.name.hex()}  age {age / 3600:8.2f} h  {role}")
    return 0


def add_keyring_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``rpcsec keyring``: the service-wide ticket key ring replicas share (RFC 5077 §4)."""
    keyring = subparsers.add_parser(
        "keyring",
        help="manage a ticket key ring (sealed context tickets any replica opens)",
        description="Create, rotate and inspect a directory of ticket keys (files 0600).",
    )
    actions = keyring.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a ring with its first key")
    create.add_argument("directory", metavar="DIR", help="ring directory (made 0700)")
    create.set_defaults(handler=_keyring_create)
    rotate = actions.add_parser("rotate", help="add a new sealing key, retire the oldest")
    rotate.add_argument("directory", metavar="DIR", help="a ring made by 'create'")
    rotate.add_argument(
        "--keep", type=int, default=3, metavar="N", help="keys kept after rotating (default 3)"
    )
    rotate.set_defaults(handler=_keyring_rotate)
    show = actions.add_parser("show", help="list key names and ages (never the secrets)")
    show.add_argument("directory", metavar="DIR", help="a ring directory")
    show.set_defaults(handler=_keyring_show)


COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    add_authority_command,
    add_demo_command,
    add_keyring_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpcsec", description="Authenticated RPC for Python: tools and demos."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (ValueError, OSError, LookupError) as exc:
        print(f"rpcsec {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
