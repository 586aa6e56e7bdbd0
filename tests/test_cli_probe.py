"""``rpcsec probe``: against a real server (examples/server.py in its own process), the bind's
legs, the proven server, granted attributes and protection; on failure the reason, who
detected it and what to check -- and never a traceback."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
from concurrent import futures

import grpc
import pytest
from helpers.example_processes import ExampleServer

from rpcsec.cli import PROBE_HINTS, main
from rpcsec.sspi import SecStatus

TD = "probe.test"
NOTES = f"spiffe://{TD}/svc/notes"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("probe")
    for authority, td in (("pki", TD), ("other", "other.test")):
        assert main(["authority", "init", str(root / authority), "--trust-domain", td]) == 0
    issue = [("pki", "notes", True), ("pki", "alice", False), ("other", "mallory", False)]
    for authority, name, service in issue:
        out = str(root / "bundles" / name)
        flags = ["--service"] if service else []
        assert (
            main(["authority", "issue", str(root / authority), name, *flags, "--bundle", out]) == 0
        )
    shutil.rmtree(root / "pki")
    shutil.rmtree(root / "other")
    return root / "bundles"


@pytest.fixture(scope="module")
def server(bundles: pathlib.Path):
    with ExampleServer("server", "--bundle", str(bundles / "notes"), cwd=bundles) as running:
        yield running


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "rpcsec", "probe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )


def test_probe_shows_the_handshake_and_what_was_proven(server, bundles) -> None:
    result = probe(
        server.address,
        "--target-name",
        NOTES,
        "--bundle",
        str(bundles / "alice"),
        "--protection",
        "privacy",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    legs = re.findall(
        r"^([<>]) leg (\d+) .* token +(\d+) B .* at +[\d.]+ ms(?:  \[(.*)\])?$", out, re.M
    )
    assert [leg[0] for leg in legs] == [">", "<", ">", "<"]  # x509: 4 tokens
    assert all(int(leg[2]) > 0 for leg in legs)
    assert re.fullmatch(r"complete, context handle \d+ B", legs[-1][3])
    assert f"* probing {server.address} as spiffe://{TD}/user/alice (x509)" in out
    assert f"* server proven:  {NOTES}" in out
    assert re.search(r"^\* granted: .*MUTUAL_AUTH.*CONFIDENTIALITY", out, re.M)
    assert "* protection:     PRIVACY" in out
    assert "* impersonation:  IMPERSONATE" in out
    assert re.search(r"^\* bound in [\d.]+ ms$", out, re.M)
    assert "Traceback" not in out + result.stderr


def test_wrong_target_name_says_so_and_what_to_check(server, bundles) -> None:
    result = probe(
        server.address,
        "--target-name",
        f"spiffe://{TD}/svc/billing",
        "--bundle",
        str(bundles / "alice"),
    )
    assert result.returncode == 1
    assert "* FAILED (detected by this client): wrong-principal" in result.stdout
    assert "check: the server proved a different identity than --target-name" in result.stdout
    assert "server proven" not in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_server_outside_your_trust_bundle_is_untrusted(server, bundles) -> None:
    """mallory's bundle is from another authority, so is her trust bundle: the client
    refuses the server's certificate itself."""
    result = probe(server.address, "--target-name", NOTES, "--bundle", str(bundles / "mallory"))
    assert result.returncode == 1
    assert "untrusted-root" in result.stdout
    assert PROBE_HINTS["untrusted-root"][:40] in result.stdout


def test_refusal_by_the_server_is_labelled_unsigned(server, bundles) -> None:
    """mallory trusts the server's authority (``--option trust=``) but the server does not
    trust hers: the server refuses, and the probe says the reason came from the server,
    unsigned."""
    result = probe(
        server.address,
        "--target-name",
        NOTES,
        "--bundle",
        str(bundles / "mallory"),
        "--option",
        f"trust={bundles / 'notes' / 'svid_bundle.pem'}",
    )
    assert result.returncode == 1
    assert "* FAILED (refused by the server (its reason is not signed" in result.stdout
    assert "untrusted-root" in result.stdout


def test_missing_bundle_is_reported_before_any_network(bundles) -> None:
    result = probe("127.0.0.1:9", "--target-name", NOTES, "--bundle", str(bundles / "nobody"))
    assert result.returncode == 1
    assert "* FAILED (loading your credentials): no-credentials" in result.stdout
    assert "leg" not in result.stdout


def test_a_plain_grpc_server_is_not_an_rpcsec_server(bundles) -> None:
    plain = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = plain.add_insecure_port("127.0.0.1:0")
    plain.start()
    try:
        result = probe(
            f"127.0.0.1:{port}", "--target-name", NOTES, "--bundle", str(bundles / "alice")
        )
    finally:
        plain.stop(None)
    assert result.returncode == 1
    assert "* FAILED (no rpcsec handshake): UNIMPLEMENTED" in result.stdout
    assert "SecurityInterceptor" in result.stdout


def test_nothing_listening(bundles) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = probe(
            f"127.0.0.1:{port}",
            "--target-name",
            NOTES,
            "--bundle",
            str(bundles / "alice"),
            "--timeout",
            "3",
        )
    assert result.returncode == 1
    assert "no rpcsec handshake" in result.stdout


def test_every_reason_a_bind_can_fail_with_has_a_hint() -> None:
    """Hints exist for every handshake-time reason (the others fall back to docs/reasons.md)."""
    handshake_reasons = {
        SecStatus.WRONG_PRINCIPAL,
        SecStatus.TARGET_UNKNOWN,
        SecStatus.UNTRUSTED_ROOT,
        SecStatus.CERT_EXPIRED,
        SecStatus.NO_CREDENTIALS,
        SecStatus.LOGON_DENIED,
        SecStatus.INSUFFICIENT_ATTRIBUTES,
        SecStatus.INVALID_TOKEN,
        SecStatus.BUSY,
        SecStatus.TIME_SKEW,
        SecStatus.CONTEXT_EXPIRED,
        SecStatus.DELEGATION_POLICY,
    }
    assert {status.value for status in handshake_reasons} <= set(PROBE_HINTS)
    assert set(PROBE_HINTS) <= {status.value for status in SecStatus}


def _in_process_server(credentials) -> tuple[grpc.Server, str]:
    """A server with only rpcsec's handshake service: a probe calls nothing else."""
    from rpcsec.grpc import SecurityInterceptor

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[SecurityInterceptor(credentials)]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def test_ntlm_cannot_prove_the_server_and_the_probe_says_so(tmp_path: pathlib.Path) -> None:
    from rpcsec.sspi import CredentialUse, acquire_credentials_handle

    users = tmp_path / "users"
    users.write_text("RPCSEC:alice:Alice-Pa55!\n")
    credentials = acquire_credentials_handle(
        "ntlm", None, CredentialUse.INBOUND, user_file=str(users)
    )
    server, address = _in_process_server(credentials)
    common = [address, "--target-name", "storage@localhost", "--package", "ntlm"]
    common += ["--principal", "RPCSEC\\alice", "--option", "password=Alice-Pa55!"]
    try:
        strict = probe(*common)
        relaxed = probe(*common, "--no-mutual")
        wrong = probe(*common[:-1], "password=wrong", "--no-mutual")
    finally:
        server.stop(None)
    assert strict.returncode == 1
    assert "* FAILED (detected by this client): insufficient-attributes" in strict.stdout
    assert "--no-mutual" in strict.stdout
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert "* server NOT proven (no MUTUAL_AUTH): storage@localhost" in relaxed.stdout
    assert "server proven:" not in relaxed.stdout
    assert wrong.returncode == 1
    assert "logon-denied" in wrong.stdout
    assert "refused by the server" in wrong.stdout


@pytest.mark.kerberos
def test_kerberos_probe(kerberos_realm) -> None:
    from rpcsec.sspi import CredentialUse, acquire_credentials_handle

    realm = kerberos_realm
    credentials = acquire_credentials_handle(
        "kerberos",
        realm.service_principal("storage"),
        CredentialUse.INBOUND,
        keytab=realm.keytab("storage"),
        rcache=realm.rcache("storage"),
    )
    server, address = _in_process_server(credentials)
    common = ["--package", "kerberos", "--option", f"ccache={realm.ccache('alice')}"]
    try:
        ok = probe(address, "--target-name", realm.hostbased("storage"), *common)
        unknown = probe(address, "--target-name", "nosuchservice@localhost", *common)
    finally:
        server.stop(None)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"as {realm.principal('alice')} (kerberos)" in ok.stdout
    assert f"* server proven:  {realm.service_principal('storage')}" in ok.stdout
    assert "MUTUAL_AUTH" in ok.stdout
    assert unknown.returncode == 1
    assert "FAILED" in unknown.stdout and "Traceback" not in unknown.stdout + unknown.stderr


def test_busy_server_is_a_refusal_by_the_server(bundles) -> None:
    """One handshake slot, held half-open by another client: the probe is refused with
    RESOURCE_EXHAUSTED ``busy`` (a gRPC status, so: refused by the server, unsigned)."""
    import queue

    from rpcsec.grpc import NEGOTIATE_METHOD, SecurityInterceptor
    from rpcsec.grpc._proto import handshake_pb2
    from rpcsec.sspi import CredentialUse, acquire_credentials_handle, initialize_security_context

    notes = acquire_credentials_handle(
        "x509", None, CredentialUse.INBOUND, bundle=bundles / "notes"
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[SecurityInterceptor(notes, max_handshakes=1)],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    alice = acquire_credentials_handle(
        "x509", None, CredentialUse.OUTBOUND, bundle=bundles / "alice"
    )
    first = initialize_security_context(alice, NOTES).step(None).token
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    outbox.put(handshake_pb2.NegotiateRequest(package="x509", token=first).SerializeToString())
    raw = grpc.insecure_channel(f"127.0.0.1:{port}")
    holder = raw.stream_stream(NEGOTIATE_METHOD)(iter(outbox.get, None), timeout=30)
    try:
        next(holder)  # the server answered leg 1: its only handshake slot is taken
        # busy is retried with backoff within the deadline (docs/session.md): a deadline
        # shorter than the server's half-open timeout ends the retries while the slot is held.
        result = probe(
            f"127.0.0.1:{port}",
            "--target-name",
            NOTES,
            "--bundle",
            str(bundles / "alice"),
            "--timeout",
            "1",
        )
    finally:
        holder.cancel()
        outbox.put(None)
        raw.close()
        server.stop(None)
    assert result.returncode == 1
    assert "* FAILED (refused by the server (its reason is not signed" in result.stdout
    assert "busy" in result.stdout and "retry later" in result.stdout
