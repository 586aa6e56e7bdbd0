"""The ``rpcsec`` command line: ``rpcsec authority init|issue``, ``probe`` and ``demo``.

Each top-level command is one function that adds its subparser and sets ``handler``; add a
new command by writing such a function and listing it in ``COMMANDS``. Handlers return the
process exit code. Errors a user can fix (bad names, existing authority) print one line to
stderr and exit 1; argparse's usage errors exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

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
    if args.bundle:
        _write_issued_bundle(authority, issued, args.bundle)
    return 0


def _write_issued_bundle(authority: Any, issued: Any, directory: str) -> None:
    """``issue --bundle OUT``: the identity as a self-contained bundle (no root key)."""
    paths = authority.write_bundle(issued, directory)
    print(f"  bundle:      {paths.directory} (load with bundle={str(paths.directory)!r})")
    print(f"    {paths.certificate.name}  {paths.key.name} (mode 0600)  {paths.trust.name}")


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
    issue.add_argument(
        "--bundle",
        metavar="OUT",
        help="also write a self-contained bundle directory (certificate, key 0600, trust "
        "bundle) that services and clients load without the authority's root key",
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


# -- rpcsec probe: bind once and show what happened (curl -v / klist for a secured service) -----

# What a user should check for each reason a bind can fail with (docs/reasons.md says more).
PROBE_HINTS: dict[str, str] = {
    "wrong-principal": "the server proved a different identity than --target-name: check the "
    "address points at the service you mean, and --target-name is that service's name",
    "target-unknown": "the target name is not known to the package (Kerberos: no such service "
    "principal in the KDC; check the name is service@host and the host's DNS name)",
    "untrusted-root": "the peer's certificate does not chain to your trust bundle: check both "
    "sides use bundles from the same authority / trust domain",
    "cert-expired": "a certificate is outside its validity: re-issue it "
    "(rpcsec authority issue ... --bundle) and check both clocks",
    "no-credentials": "your own credentials could not be loaded: check --bundle / --option "
    "paths, file permissions and that the key matches the certificate",
    "logon-denied": "the server refused your credentials: check the user exists and the "
    "password / ticket is valid (klist)",
    "insufficient-attributes": "the server or you require attributes the other side did not "
    "grant: e.g. NTLM cannot prove the server (use --no-mutual), or the server needs PRIVACY",
    "invalid-token": "a handshake message was malformed: check both ends run rpcsec with the "
    "same --package, and nothing between them rewrites the stream",
    "busy": "the server has too many handshakes in progress: retry later, check for a flood",
    "time-skew": "the clocks differ too much: check NTP on both machines",
    "expired": "the context or credentials expired: re-issue or renew (kinit) and retry",
    "context-unknown": "the server does not know the context: it restarted or evicted it; "
    "retry, or check a load balancer is not spreading one channel over several servers",
    "delegation-required": "the call needs delegation: bind with --impersonation delegate",
    "delegation-policy": "delegation is outside the delegation policy (targets, depth, lifetime)",
    "access-denied": "you are authenticated but the policy does not allow this method",
    "unsupported-function": "the package cannot do what was asked (e.g. NTLM delegation)",
    "bad-bindings": "channel bindings differ: something between client and server terminates "
    "the connection",
}
_DEFAULT_HINT = "see docs/reasons.md for this reason"
_UNREACHABLE_HINT = (
    "nothing answered as an rpcsec server there: check the address and port, that the server "
    "runs, and that it was built with SecurityInterceptor / secure_server"
)


class _ProbeLeg:
    """One handshake message: direction, size of the token it carried, when it passed, and
    what else the server's message said (complete with a context handle of N bytes, refused)."""

    __slots__ = ("at", "direction", "note", "size", "total")

    def __init__(self, direction: str, size: int, total: int, at: float, note: str = "") -> None:
        self.direction, self.size, self.total, self.at = direction, size, total, at
        self.note = note


class _ProbeRecorder:
    """A client interceptor that watches the ``Negotiate`` stream and records each leg.

    It only observes: the bytes it sees are the ones ``secure_channel`` sends and receives.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.legs: list[_ProbeLeg] = []
        self.server_error: str | None = None

    def interceptor(self) -> Any:
        import grpc

        from rpcsec.grpc import NEGOTIATE_METHOD
        from rpcsec.grpc._proto import handshake_pb2

        recorder = self

        class _CallView:
            def __init__(self, call: Any) -> None:
                self._call = call

            def __iter__(self) -> Any:
                return self

            def __next__(self) -> Any:
                raw = next(self._call)
                token, note = b"", ""
                try:
                    reply = handshake_pb2.NegotiateResponse.FromString(raw)
                    token = reply.token
                    if reply.HasField("error"):
                        recorder.server_error = reply.error.reason[:64]
                        note = "refused"
                    elif reply.complete:
                        note = f"complete, context handle {len(reply.context_handle)} B"
                except Exception:  # malformed: secure_channel reports it
                    note = "malformed"
                leg = _ProbeLeg("<", len(token), len(raw), recorder.clock(), note)
                recorder.legs.append(leg)
                return raw

            def __getattr__(self, name: str) -> Any:
                return getattr(self._call, name)

        class _Interceptor(grpc.StreamStreamClientInterceptor):
            def intercept_stream_stream(
                self, continuation: Any, details: Any, request_iterator: Any
            ) -> Any:
                if details.method != NEGOTIATE_METHOD:
                    return continuation(details, request_iterator)

                def requests() -> Any:
                    for raw in request_iterator:
                        token = b""
                        with contextlib.suppress(Exception):  # malformed: secure_channel says so
                            token = handshake_pb2.NegotiateRequest.FromString(raw).token
                        recorder.legs.append(_ProbeLeg(">", len(token), len(raw), recorder.clock()))
                        yield raw

                return _CallView(continuation(details, requests()))

        return _Interceptor()


def _probe_credentials(args: argparse.Namespace) -> Any:
    from rpcsec.sspi import CredentialUse, acquire_credentials_handle

    options: dict[str, Any] = {}
    for item in args.option or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option takes KEY=VALUE, not {item!r}")
        options[key] = value
    if args.bundle:
        if args.package not in (None, "x509"):
            raise ValueError("--bundle is an x509 identity bundle; leave out --package")
        return acquire_credentials_handle(
            "x509", args.principal, CredentialUse.OUTBOUND, bundle=args.bundle, **options
        )
    if not args.package:
        raise ValueError("give --bundle DIR (x509) or --package NAME [--option KEY=VALUE ...]")
    return acquire_credentials_handle(
        args.package, args.principal, CredentialUse.OUTBOUND, **options
    )


def _probe_fail(stage: str, reason: str, detail: str, hint: str) -> int:
    print(f"* FAILED ({stage}): {reason}")
    if detail:
        print(f"*   {detail}")
    print(f"*   check: {hint}")
    return 1


def _probe(args: argparse.Namespace) -> int:
    """Bind once to ADDRESS, print every leg, then what was proven and granted."""
    import time

    import grpc

    from rpcsec.grpc import secure_channel
    from rpcsec.sspi import (
        ContextReq,
        ImpersonationLevel,
        ProtectionLevel,
        SecurityError,
    )

    try:
        credentials = _probe_credentials(args)
    except SecurityError as exc:
        return _probe_fail(
            "loading your credentials", exc.reason, str(exc), PROBE_HINTS["no-credentials"]
        )
    protection = ProtectionLevel[args.protection.upper()]
    impersonation = ImpersonationLevel[args.impersonation.upper()]
    requirements = None
    if args.no_mutual:
        requirements = ContextReq.default() & ~ContextReq.MUTUAL_AUTH
    print(f"* probing {args.address} as {credentials.principal} ({credentials.package_name})")
    print(f"* target name: {args.target_name}")
    print(f"* asking for {protection.name}, impersonation {impersonation.name}")
    recorder = _ProbeRecorder(time.perf_counter)
    raw = grpc.intercept_channel(grpc.insecure_channel(args.address), recorder.interceptor())
    channel = secure_channel(
        raw,
        credentials,
        target_name=args.target_name,
        requirements=requirements,
        impersonation=impersonation,
        protection=protection,
        handshake_timeout=args.timeout,
    )
    try:
        return _probe_bind(channel, recorder)
    finally:
        channel.close()


def _probe_bind(channel: Any, recorder: _ProbeRecorder) -> int:
    """The bind itself: legs as they went, then the context or the reason it failed."""
    import time

    import grpc

    from rpcsec.sspi import SecurityError

    started = time.perf_counter()
    try:
        try:
            context = channel.bind()
        finally:
            _print_legs(recorder, started)
    except SecurityError as exc:
        # The server's refusal arrives as an error message on the handshake stream or as a
        # gRPC status with an rpcsec-reason trailer (the typed error's cause): unsigned both.
        if recorder.server_error is not None or isinstance(exc.__cause__, grpc.RpcError):
            stage = "refused by the server (its reason is not signed: it may come from a proxy)"
        else:
            stage = "detected by this client"
        return _probe_fail(
            stage, exc.reason, str(exc)[:300], PROBE_HINTS.get(exc.reason, _DEFAULT_HINT)
        )
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        name = code.name if code is not None else "transport error"
        return _probe_fail("no rpcsec handshake", name, "", _UNREACHABLE_HINT)
    _print_context(context, started)
    return 0


def _print_legs(recorder: _ProbeRecorder, started: float) -> None:
    sent = sum(leg.total for leg in recorder.legs if leg.direction == ">")
    received = sum(leg.total for leg in recorder.legs if leg.direction == "<")
    for number, leg in enumerate(recorder.legs, 1):
        who = "client -> server" if leg.direction == ">" else "server -> client"
        ms = (leg.at - started) * 1000
        note = f"  [{leg.note}]" if leg.note else ""
        print(
            f"{leg.direction} leg {number}  {who}  token {leg.size:5d} B  (message {leg.total} B)"
            f"  at {ms:7.2f} ms{note}"
        )
    print(f"* {len(recorder.legs)} legs, {sent} B sent, {received} B received")


def _print_context(context: Any, started: float) -> None:
    import time

    from rpcsec.sspi import ContextAttribute, ContextReq

    elapsed = (time.perf_counter() - started) * 1000
    peer = context.peer
    lifespan = context.query_attributes(ContextAttribute.LIFESPAN)
    names = context.query_attributes(ContextAttribute.NATIVE_NAMES)
    print(f"* bound in {elapsed:.2f} ms")
    if context.attributes & ContextReq.MUTUAL_AUTH:
        print(f"* server proven:  {peer.principal}")
    else:  # NTLM: the client learns nothing about the server
        print(f"* server NOT proven (no MUTUAL_AUTH): {peer.principal} is only the name asked for")
    if names.peer and names.peer != peer.principal:
        print(f"*   native name:  {names.peer}")
    print(f"* package:        {context.package.name}")
    print(f"* granted:        {_flag_names(context.attributes)}")
    print(f"* protection:     {context.protection_level.name}")
    print(
        f"* impersonation:  {context.impersonation_level.name} (the most the server may do as you)"
    )
    if lifespan.expiry is None:
        print("* expires:        never (no lifetime limit)")
    else:
        left = lifespan.expiry - time.time()
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(lifespan.expiry))
        print(f"* expires:        {when} (in {left / 3600:.1f} h)")


def _flag_names(flags: Any) -> str:
    names = [flag.name for flag in type(flags) if flag.name and flag in flags and flag.value]
    return "|".join(names) or "NONE"


def add_probe_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``rpcsec probe``: bind to a server once and show the handshake and the result."""
    probe = subparsers.add_parser(
        "probe",
        help="bind to a secured server and show the handshake, identity and attributes",
        description="Bind once to ADDRESS (one Negotiate stream, nothing else is called), print "
        "each handshake leg with its size and time, the server's proven identity, the granted "
        "attributes and protection level; on failure the reason and what to check. Exit 0 when "
        "the bind succeeded, 1 otherwise.",
    )
    probe.add_argument("address", metavar="ADDRESS", help="host:port of the server")
    probe.add_argument(
        "--target-name",
        required=True,
        metavar="NAME",
        help="who the server must prove to be (x509: spiffe://TD/svc/NAME; kerberos: svc@host)",
    )
    probe.add_argument("--bundle", metavar="DIR", help="your x509 identity bundle")
    probe.add_argument("--package", help="security package when not using --bundle")
    probe.add_argument("--principal", help="your principal (default: the credentials')")
    probe.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="a credential option of the package (repeatable), e.g. ccache=/tmp/krb5cc",
    )
    probe.add_argument("--protection", choices=["integrity", "privacy"], default="integrity")
    probe.add_argument(
        "--impersonation",
        choices=["anonymous", "identify", "impersonate", "delegate"],
        default="impersonate",
    )
    probe.add_argument(
        "--no-mutual", action="store_true", help="do not require the server to prove itself (NTLM)"
    )
    probe.add_argument("--timeout", type=float, default=10.0, help="handshake timeout, seconds")
    probe.set_defaults(handler=_probe)


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
    add_probe_command,
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
