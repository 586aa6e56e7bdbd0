"""The scripted demo (``rpcsec demo`` / ``make demo``): a readable multi-hop story.

On a fresh checkout it creates a temporary authority (or NTLM user file), starts the storage
and documents services on loopback, waits for their READY lines, runs the story, prints a
trace, stops everything and exits 0 only if every step behaved as the security model says.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from protos.demo.v1 import documents_pb2 as pb
from protos.demo.v1 import documents_pb2_grpc as pb_grpc
from rpcsec.sspi import PackageCapability, query_security_package_info
from server.environment import DemoEnvironment

from . import __main__ as client_cli
from .tamper import TamperingProxy

REPO = pathlib.Path(__file__).resolve().parent.parent
TRUST_DOMAIN = "demo.rpcsec"
USERS = ("alice", "bob")
SERVICES = ("documents", "storage")


# -- environments, one builder per package ---------------------------------------------------


def _quiet(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def _x509_environment(workdir: pathlib.Path) -> dict:
    """An authority, then one bundle per identity: services and clients load only their
    bundle (certificate, key, trust bundle), never the authority's root.key."""
    authority = workdir / "authority"
    bundles = workdir / "bundles"
    cli = [sys.executable, "-m", "rpcsec", "authority"]
    print(f"$ rpcsec authority init {authority} --trust-domain {TRUST_DOMAIN}")
    _quiet([*cli, "init", str(authority), "--trust-domain", TRUST_DOMAIN])
    for user in USERS:
        print(
            f"$ rpcsec authority issue {authority} {user} --group staff --bundle {bundles / user}"
        )
        _quiet(
            [
                *cli,
                "issue",
                str(authority),
                user,
                "--group",
                "staff",
                "--bundle",
                str(bundles / user),
            ]
        )
    for service in SERVICES:
        print(
            f"$ rpcsec authority issue {authority} {service} --service --bundle {bundles / service}"
        )
        _quiet(
            [
                *cli,
                "issue",
                str(authority),
                service,
                "--service",
                "--bundle",
                str(bundles / service),
            ]
        )
    options = lambda name: {"bundle": str(bundles / name)}  # noqa: E731
    return {
        "principals": {
            user: {"principal": f"spiffe://{TRUST_DOMAIN}/user/{user}", "options": options(user)}
            for user in USERS
        },
        "services": {
            service: {
                "principal": f"spiffe://{TRUST_DOMAIN}/svc/{service}",
                "target_name": f"spiffe://{TRUST_DOMAIN}/svc/{service}",
                "options": options(service),
            }
            for service in SERVICES
        },
    }


def _ntlm_environment(workdir: pathlib.Path) -> dict:
    passwords = {user: secrets.token_urlsafe(12) for user in USERS}
    user_file = workdir / "ntlm-users"
    user_file.write_text("".join(f"RPCSEC:{u}:{p}\n" for u, p in passwords.items()))
    user_file.chmod(0o600)
    return {
        "principals": {
            user: {"principal": f"RPCSEC\\{user}", "options": {"password": passwords[user]}}
            for user in USERS
        },
        "services": {
            service: {
                "principal": None,
                "target_name": f"{service}@localhost",
                "options": {"user_file": str(user_file)},
            }
            for service in SERVICES
        },
    }


_labs: list = []


def _kerberos_environment(workdir: pathlib.Path, package: str = "kerberos") -> dict:
    """A real MIT realm on loopback: the same lab the tests use (tests/kdc.py), started here
    and stopped when the demo ends. The services' processes get its KRB5_CONFIG."""
    sys.path.insert(0, str(REPO / "tests"))
    from kdc import kerberos_unavailable_reason, start_lab  # type: ignore[import-not-found]

    reason = kerberos_unavailable_reason()
    if reason:
        raise SystemExit(f"the {package} demo needs a Kerberos KDC: {reason}")
    lab = start_lab(workdir / "realm")
    _labs.append(lab)
    realm = lab.main
    ntlm = _ntlm_environment(workdir) if package == "negotiate" else None
    principals = {}
    for user in USERS:
        options = {"ccache": realm.ccache(user)}
        if ntlm is not None:  # negotiate can fall back to NTLM with these
            options |= {
                "password": ntlm["principals"][user]["options"]["password"],
                "ntlm_principal": f"RPCSEC\\{user}",
            }
        principals[user] = {"principal": realm.principal(user), "options": options}
    services = {}
    for service in SERVICES:
        options = {"keytab": realm.keytab(service), "rcache": realm.rcache(service)}
        if ntlm is not None:
            options |= ntlm["services"][service]["options"]
        services[service] = {
            "principal": realm.service_principal(service),
            "target_name": realm.hostbased(service),
            "options": options,
        }
    return {
        "principals": principals,
        "services": services,
        "process_env": {"KRB5_CONFIG": os.environ["KRB5_CONFIG"]},
    }


ENVIRONMENTS: dict[str, Callable[[pathlib.Path], dict]] = {
    "x509": _x509_environment,
    "ntlm": _ntlm_environment,
    "kerberos": _kerberos_environment,
    "negotiate": lambda workdir: _kerberos_environment(workdir, "negotiate"),
}


# -- processes ---------------------------------------------------------------------------------


class Services:
    """The two demo services as child processes, started in order and stopped on exit."""

    def __init__(self, package: str, env: DemoEnvironment) -> None:
        self.package = package
        self.env = env
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, service: str, *extra: str) -> str:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                service,
                "--package",
                self.package,
                "--env",
                str(self.env.path),
                *extra,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until the service says READY (or dies)
        if not line.startswith("READY "):
            raise SystemExit(f"{service} failed to start (exit {process.poll()})")
        return line.split()[1]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


# -- the story -----------------------------------------------------------------------------------


@dataclass
class Step:
    title: str
    argv: list[str]
    expect_ok: bool
    expect_text: str


class Story:
    def __init__(self, package: str, env: DemoEnvironment, out=sys.stdout) -> None:
        self.package = package
        self.workdir = env.path.parent
        self.workdir = env.path.parent
        self.env = env
        self.out = out
        self.failures: list[str] = []
        self.delegates = bool(
            query_security_package_info(package).capabilities & PackageCapability.DELEGATION
        )

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def run(self, step: Step, target: str | None = None) -> str:
        self.say(f"\n== {step.title}")
        argv = ["--package", self.package, "--env", str(self.env.path), "-v"]
        if target:
            argv += ["--target", target]
        self.say("   $ python -m client " + " ".join(step.argv))
        buffer = io.StringIO()
        code = client_cli.run(client_cli.build_parser().parse_args(argv + step.argv), out=buffer)
        text = buffer.getvalue()
        for line in text.rstrip().splitlines():
            self.say(f"   {line}")
        ok = code == 0
        if ok != step.expect_ok or step.expect_text not in text:
            self.failures.append(step.title)
            self.say(
                f"   !! unexpected outcome (wanted {'success' if step.expect_ok else 'refusal'}"
                f" mentioning {step.expect_text!r})"
            )
        else:
            self.say("   -> as expected")
        return text

    def tell(self, proxy: TamperingProxy) -> None:
        delegate = ["--impersonation", "delegate", "--delegate-to", "storage"]
        onward_refusal = "delegation-required"
        self.run(
            Step(
                "alice binds to documents: handshake and granted attributes",
                ["--as", "alice", "whoami"],
                True,
                "alice",
            )
        )
        if self.delegates:
            self.run(
                Step(
                    "alice reads her report through documents -> storage (delegation)",
                    ["--as", "alice", *delegate, "get", "report.txt"],
                    True,
                    "via",
                )
            )
            budget = self.workdir / "budget.csv"
            budget.write_bytes(b"quarter,amount\n" + b"q3,1200\n" * 20000)
            upload = ["upload", "budget.csv", str(budget)]
            self.run(
                Step(
                    "alice uploads budget.csv (client streaming) through documents as herself",
                    ["--as", "alice", *delegate, *upload],
                    True,
                    "via",
                )
            )
            self.run(
                Step(
                    "alice downloads it back (server streaming)",
                    ["--as", "alice", *delegate, "download", "budget.csv"],
                    True,
                    "160015 bytes",
                )
            )
            self.run(
                Step(
                    "bob asks for alice's report: storage's ACL denies bob",
                    ["--as", "bob", *delegate, "get", "report.txt"],
                    False,
                    "access-denied",
                )
            )
        else:
            self.say(
                f"\n   ({self.package} cannot delegate: the onward hop is refused, as on NT 4.0)"
            )
            self.run(
                Step(
                    "alice reads her report through documents -> storage: no delegation with "
                    f"{self.package}",
                    ["--as", "alice", *delegate, "get", "report.txt"],
                    False,
                    onward_refusal,
                )
            )
        self.run(
            Step(
                "alice allows only IMPERSONATE: documents may act as her locally, not onward",
                ["--as", "alice", "--impersonation", "impersonate", "get", "report.txt"],
                False,
                onward_refusal,
            )
        )
        self.say("\n== a man in the middle flips one bit of alice's next request")
        proxy.arm()
        self.run(
            Step(
                "tampered call is rejected before any handler runs",
                ["--as", "alice", "whoami"],
                False,
                "message-altered",
            ),
            target=proxy.address,
        )
        self.unauthenticated_caller()

    def unauthenticated_caller(self) -> None:
        """A plain gRPC client (no rpcsec, no credentials) calls documents directly: refused
        before any handler runs, with a one-line reason, and the service keeps serving."""
        title = "a caller without rpcsec (plain grpc.insecure_channel) is refused"
        self.say(f"\n== {title}")
        with grpc.insecure_channel(self.env.address("documents")) as channel:
            stub = pb_grpc.DocumentsStub(channel)
            try:
                stub.GetDocument(pb.GetDocumentRequest(name="report.txt"))
                outcome = "served (!)"
            except grpc.RpcError as error:
                outcome = f"refused: {client_cli.error_summary(error)}"
        self.say(f"   {outcome}")
        if "UNAUTHENTICATED" not in outcome:
            self.failures.append(title)
            self.say("   !! unexpected outcome (wanted UNAUTHENTICATED)")
        else:
            self.say("   -> as expected")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rpcsec demo", description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="x509", choices=sorted(ENVIRONMENTS))
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="rpcsec-demo-"))
    os.chdir(REPO)
    services: Services | None = None
    proxy: TamperingProxy | None = None
    try:
        print(f"rpcsec demo, package {args.package}; working in {workdir}")
        env = DemoEnvironment(
            workdir / "demo-env.json",
            {"packages": {args.package: ENVIRONMENTS[args.package](workdir)}, "addresses": {}},
        )
        env.save()
        services = Services(args.package, env)
        env.data["addresses"]["storage"] = services.start("storage")
        env.save()
        env.data["addresses"]["documents"] = services.start("documents")
        env.save()
        print(f"storage on {env.address('storage')}, documents on {env.address('documents')}")
        proxy = TamperingProxy(env.address("documents")).start()
        story = Story(args.package, env)
        story.tell(proxy)
        if story.failures:
            print(f"\nDEMO FAILED: {len(story.failures)} step(s) did not behave: {story.failures}")
            return 1
        print("\nDemo complete: every step behaved as the security model says.")
        return 0
    finally:
        if proxy is not None:
            proxy.stop()
        if services is not None:
            services.stop()
        for lab in _labs:
            lab.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
