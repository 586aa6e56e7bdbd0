"""The audit trail: one structured record per security event, from a real two-hop scenario.

alice calls documents (a real gRPC server), whose handler calls storage as alice (x509
delegation). bob is denied by a descriptor and by the policy; a rogue client fails to bind; a
wiretap alters and replays calls; the server's clock passes the context's lifetime. Every event
kind comes out of ``rpcsec.audit`` once, asserted field by field; the JSON formatter's output
is parsed back; OpenTelemetry's SDK (in-memory exporter) sees the span attributes on the server
spans of opentelemetry-instrumentation-grpc; and no log line of the whole run holds a key, a
password, a handle or token bytes.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import threading
import time

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers.echo import AdminServicer, EchoServicer
from helpers.wiretap import Wiretap, flip
from hypothesis import given, settings
from hypothesis import strategies as st

import rpcsec
from rpcsec.grpc import AuthorizationPolicy, AuthorizationRule, SecurityInterceptor, secure_channel
from rpcsec.security import (
    AUDIT_LOGGER,
    AccessMask,
    AuditEvent,
    AuditJsonFormatter,
    audit_key_rotation,
)
from rpcsec.sspi import ContextReq, ImpersonationLevel, SecurityError, acquire_credentials_handle

SAY = "/rpcsec.test.v1.Echo/Say"
SHUTDOWN = "/rpcsec.test.v1.Admin/Shutdown"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Capture(logging.Handler):
    """Every record of the run (all loggers), and each one as the JSON formatter writes it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self._json = AuditJsonFormatter()
        self._text = logging.Formatter("%(name)s %(levelname)s %(message)s")
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self.lines.append(self._text.format(record))
            self.lines.append(self._json.format(record))
            self._changed.notify_all()

    def wait_for(self, name: str, timeout: float = 10.0) -> None:
        """A server may log a refusal just after the client saw it: wait for that record."""
        with self._changed:
            assert self._changed.wait_for(lambda: self.audit(name), timeout), name

    def audit(self, name: str) -> list[dict]:
        return [
            json.loads(self._json.format(r))
            for r in self.records
            if r.name == AUDIT_LOGGER and r.rpcsec_audit["event"] == name
        ]


@pytest.fixture
def capture():
    handler = Capture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old)


@pytest.fixture
def wire_secrets(monkeypatch):
    """Every handshake token any context takes or makes in this test, and each established
    context's session key: what the log must never contain. (The real ``step`` runs; this
    only keeps copies.)"""
    from rpcsec.sspi import ContextAttribute, SecurityContext

    found: list[bytes] = []
    keys: list[bytes] = []
    real_step = SecurityContext.step

    def step(self, token=None):
        result = real_step(self, token)
        found.extend(t for t in (token, result.token) if t)
        if self.complete:  # the session key, read while the context is alive
            keys.append(self.query_attributes(ContextAttribute.SESSION_KEY).key)
        return result

    monkeypatch.setattr(SecurityContext, "step", step)

    def collect() -> list[bytes]:
        assert keys, "no session key was collected"
        return found + [k for k in keys if k]

    return collect


@pytest.fixture
def spans():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The global provider can be set once per process: the tests give theirs to the gRPC
    # instrumentation, whose server spans are current while rpcsec's behavior runs.
    yield provider, exporter
    provider.shutdown()


def _delegating(setup) -> dict:
    options = setup.channel_options(
        impersonation=ImpersonationLevel.DELEGATE,
        requirements=setup.requirements | ContextReq.DELEGATE,
    )
    if setup.package == "x509":
        options["package_options"] = {"delegate_to": [setup.target("storage")]}
    return options


def _refused(call, code) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() is code, info.value


def test_every_event_kind_from_a_real_scenario(
    x509_setup, serve, capture, spans, wire_secrets, tmp_path
):
    setup = x509_setup
    from opentelemetry.instrumentation.grpc import server_interceptor

    provider, exporter = spans
    alice, bob = setup.principal("alice"), setup.principal("bob")
    documents_id, storage_id = setup.target("documents"), setup.target("storage")
    clock = Clock()

    storage_address = serve([SecurityInterceptor(setup.server("storage"))], [EchoServicer()])

    def onward(request):
        with secure_channel(storage_address, **setup.channel_options("storage")) as channel:
            return echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="via front"))

    policy = AuthorizationPolicy(
        [
            AuthorizationRule(f"{SAY.rpartition('/')[0]}/*", allow={"group:everyone"}),
            AuthorizationRule(SHUTDOWN, allow={alice}),
        ]
    )
    front = SecurityInterceptor(
        setup.server("documents"), policy, max_lifetime=3600.0, idle_timeout=None, clock=clock
    )
    front_address = serve(
        [server_interceptor(tracer_provider=provider), front],
        [EchoServicer(onward=onward, readable_by=alice), AdminServicer()],
    )

    # 1. alice binds, runs as herself at documents, which delegates to storage as alice.
    with secure_channel(front_address, setup.client("alice"), **_delegating(setup)) as channel:
        reply = echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="onward"))
    assert reply.principal == alice

    # 2. bob: the descriptor of the resource he opens, then the policy, say no.
    tap = Wiretap()
    raw = grpc.intercept_channel(grpc.insecure_channel(front_address), tap)
    bob_channel = secure_channel(raw, setup.client("bob"), **setup.channel_options())
    stub = echo_pb2_grpc.EchoStub(bob_channel)
    _refused(
        lambda: stub.Say(echo_pb2.EchoRequest(text="check")), grpc.StatusCode.PERMISSION_DENIED
    )
    admin = echo_pb2_grpc.AdminStub(bob_channel)
    _refused(lambda: admin.Shutdown(echo_pb2.EchoRequest()), grpc.StatusCode.PERMISSION_DENIED)

    # 3. Tamper and replay on the wire.
    stub.Say(echo_pb2.EchoRequest(text="recorded"))
    recorded = tap.app_calls()[-1]
    tap.requests = lambda method, messages: [flip(messages[0], -1)]
    _refused(lambda: stub.Say(echo_pb2.EchoRequest(text="x")), grpc.StatusCode.UNAUTHENTICATED)
    tap.requests = None
    attacker = grpc.insecure_channel(front_address)
    replay = attacker.unary_unary(SAY)
    _refused(
        lambda: replay(recorded.requests[0], metadata=recorded.metadata),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    # A handle the server never issued: refused for another reason (context-unknown).
    forged = (("rpcsec-context-bin", b"\x00" * len(recorded.value("rpcsec-context-bin"))),)
    _refused(lambda: replay(recorded.requests[0], metadata=forged), grpc.StatusCode.UNAUTHENTICATED)
    attacker.close()

    # 4. A client from a rogue authority cannot bind.
    from helpers.pki import make_authority

    rogue = make_authority(tmp_path / "rogue", trust_domain="rogue.test")
    impostor = acquire_credentials_handle(
        "x509", None, authority_dir=str(rogue.path), name="alice", trust=str(setup.pki.trust_bundle)
    )
    with secure_channel(front_address, impostor, **setup.channel_options()) as channel:
        with pytest.raises(SecurityError):
            echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="let me in"))
    capture.wait_for("logon-failed")

    # 5. The context outlives the server's max lifetime: the next call is refused, expired.
    # (The raw wiretapped channel never re-binds on its own: replay the recorded context.)
    clock.now += 3601
    late = grpc.insecure_channel(front_address).unary_unary(SAY)
    _refused(
        lambda: late(b"\x53" + b"\x00" * 40, metadata=recorded.metadata),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    bob_channel.close()

    # 6. Key rotation (the session layer's ticket keys call this).
    audit_key_rotation("ticket-key", "k-2026-12-02", retired_key_id="k-2026-11-25")

    # -- the records, field by field ------------------------------------------------------
    logons = capture.audit("logon")
    at_front = [r for r in logons if r["principal"] == alice and not r["delegation_chain"]]
    assert at_front, logons
    logon = at_front[0]
    assert logon["event_id"] == 1000 and logon["outcome"] == "success"
    assert logon["level"] == "INFO" and logon["logger"] == "rpcsec.audit"
    assert logon["package"] == "x509"
    assert logon["impersonation_level"] == "DELEGATE"
    assert logon["groups"] == ["editors", "staff"]
    assert logon["peer"] == "127.0.0.1"  # the client host, as admission keys it
    at_storage = [r for r in logons if r["delegation_chain"] == [documents_id]]
    assert len(at_storage) == 1 and at_storage[0]["principal"] == alice
    assert any(r["principal"] == bob for r in logons)

    imp = [r for r in capture.audit("impersonation") if r["principal"] == alice]
    assert {tuple(r["delegation_chain"]) for r in imp} == {(), (documents_id,)}
    assert all(r["event_id"] == 1100 and r["level"] == "DEBUG" for r in imp)
    assert {r["protection_level"] for r in imp} == {"INTEGRITY"}

    (deleg,) = capture.audit("delegation")
    assert deleg["event_id"] == 1101
    assert deleg["principal"] == alice and deleg["target"] == storage_id
    assert deleg["delegation_chain"] == [] and deleg["impersonation_level"] == "DELEGATE"

    denied = capture.audit("access-denied")
    by_descriptor = [r for r in denied if r["by"] == "descriptor"]
    by_policy = [r for r in denied if r["by"] == "policy"]
    assert len(by_descriptor) == 1 and len(by_policy) == 1, denied
    assert len(denied) == 2  # the refusal that followed is not recorded a second time
    assert by_descriptor[0]["principal"] == bob
    assert by_descriptor[0]["desired_access"] == int(AccessMask.READ)
    assert by_descriptor[0]["reason"] == "access-denied"
    assert by_policy[0]["principal"] == bob and by_policy[0]["method"] == SHUTDOWN
    assert all(r["event_id"] == 1200 and r["level"] == "WARNING" for r in denied)

    (altered,) = capture.audit("message-altered")
    assert altered["event_id"] == 1300 and altered["method"] == SAY
    assert altered["reason"] == "message-altered" and altered["outcome"] == "failure"
    assert altered["peer"].startswith("ipv4:127.0.0.1:")
    (replayed,) = capture.audit("replay")
    assert replayed["event_id"] == 1301 and replayed["reason"] == "replay"
    (expired,) = [r for r in capture.audit("expired") if r["method"] == SAY]
    assert expired["event_id"] == 1302 and expired["reason"] == "expired"
    (unknown,) = [r for r in capture.audit("call-refused") if r["method"] == SAY]
    assert unknown["event_id"] == 1303 and unknown["reason"] == "context-unknown"

    (failed,) = capture.audit("logon-failed")
    assert failed["event_id"] == 1001 and failed["reason"] == "untrusted-root"
    assert failed["method"] == "/rpcsec.v1.SecurityHandshake/Negotiate"
    assert "principal" not in failed  # nobody was authenticated

    (rotation,) = capture.audit("key-rotation")
    assert rotation["event_id"] == 1400 and rotation["key_kind"] == "ticket-key"
    assert rotation["key_id"] == "k-2026-12-02"
    assert rotation["retired_key_id"] == "k-2026-11-25"

    seen = {r.rpcsec_audit["event"] for r in capture.records if r.name == AUDIT_LOGGER}
    assert seen == {e.event_name for e in AuditEvent}

    # -- OpenTelemetry: the server span of alice's call carries who and how ---------------
    said = [s for s in exporter.get_finished_spans() if s.name == SAY]
    alice_span = next(s for s in said if s.attributes.get("rpcsec.principal") == alice)
    assert alice_span.attributes["rpcsec.package"] == "x509"
    assert alice_span.attributes["rpcsec.protection_level"] == "INTEGRITY"
    assert alice_span.attributes["rpcsec.impersonation_level"] == "DELEGATE"
    assert tuple(alice_span.attributes["rpcsec.delegation_chain"]) == ()
    events = {e.name: e for e in alice_span.events}
    assert events["rpcsec.delegation"].attributes["rpcsec.target"] == storage_id
    bob_denied = next(
        s
        for s in said
        if s.attributes.get("rpcsec.principal") == bob and s.attributes.get("rpcsec.reason")
    )
    assert bob_denied.attributes["rpcsec.reason"] == "access-denied"
    assert bob_denied.attributes["rpcsec.by"] == "descriptor"
    assert "rpcsec.access-denied" in {e.name for e in bob_denied.events}
    (shutdown_span,) = [s for s in exporter.get_finished_spans() if s.name == SHUTDOWN]
    assert shutdown_span.attributes["rpcsec.by"] == "policy"

    # -- no secrets anywhere in the run's log output --------------------------------------
    tokens = wire_secrets()
    assert len(tokens) > 20  # handshakes of alice, bob, documents->storage, the impostor
    _assert_no_secrets(capture, setup, [recorded, *tap.calls], tokens)


def _assert_no_secrets(capture, setup, calls, extra=()) -> None:
    text = "\n".join(capture.lines)
    assert text  # something was logged
    secrets_: list[bytes] = [bytes(s) for s in extra]
    for key_file in setup.pki.path.rglob("*.key") if setup.pki is not None else ():
        data = key_file.read_bytes()
        secrets_.append(data)
        body = b"".join(line for line in data.splitlines() if not line.startswith(b"-----"))
        secrets_.extend(body[i : i + 24] for i in range(0, len(body) - 24, 24))
    for call in calls:
        for _key, value in call.metadata:
            if isinstance(value, bytes) and len(value) >= 8:
                secrets_.append(value)  # the context handle, signed call headers
        secrets_.extend(m for m in call.requests + call.responses if len(m) >= 8)
    assert secrets_
    for secret in secrets_:
        for form in (
            secret.hex(),
            base64.b64encode(secret).decode(),
            repr(secret)[2:-1][:40],
        ):
            if len(form) >= 16:
                assert form not in text, f"a secret leaked into the log ({form[:12]}...)"
        if secret.isascii() and len(secret) >= 16:
            assert secret.decode() not in text
    assert "PRIVATE KEY" not in text


def test_ntlm_passwords_and_failed_logons_never_reach_the_log(ntlm_setup, serve, capture):
    from helpers.grpc_setup import NTLM_PASSWORDS

    setup = ntlm_setup
    address = serve([SecurityInterceptor(setup.server())], [EchoServicer()])
    with secure_channel(address, setup.client("alice"), **setup.channel_options()) as channel:
        echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="hi"))
    wrong = acquire_credentials_handle(
        "ntlm", "RPCSEC\\alice", rpcsec.CredentialUse.OUTBOUND, password="Wrong-Pa55!"
    )
    with secure_channel(address, wrong, **setup.channel_options()) as channel:
        with pytest.raises(SecurityError):
            echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="hi"))
    capture.wait_for("logon-failed")
    (logon,) = capture.audit("logon")
    assert logon["principal"] == "RPCSEC\\alice" and logon["package"] == "ntlm"
    (failed,) = capture.audit("logon-failed")
    assert failed["reason"] == "logon-denied"
    text = "\n".join(capture.lines)
    for password in [*NTLM_PASSWORDS.values(), "Wrong-Pa55!"]:
        assert password not in text
        assert password.encode("utf-16-le").hex() not in text


def test_nothing_is_built_when_the_audit_logger_is_off(capture, monkeypatch):
    # The per-call path asks isEnabledFor once and, with no recording span, builds nothing.
    from rpcsec.security import _audit

    logging.getLogger(AUDIT_LOGGER).setLevel(logging.WARNING)
    try:
        built = []
        monkeypatch.setattr(_audit, "_token_fields", lambda t: built.append(t) or {})
        token = rpcsec.AccessToken("alice", "x509")
        with rpcsec.impersonate(token):
            pass
        _audit.logon(token, "ipv4:127.0.0.1:1")  # INFO: below WARNING
        assert built == []
        assert not [r for r in capture.records if r.name == AUDIT_LOGGER]
    finally:
        logging.getLogger(AUDIT_LOGGER).setLevel(logging.NOTSET)


def test_json_formatter_writes_stable_fields_and_plain_records():
    formatter = AuditJsonFormatter()
    record = logging.LogRecord("rpcsec.grpc", logging.INFO, __file__, 1, "plain %s", ("x",), None)
    assert json.loads(formatter.format(record))["message"] == "plain x"
    record = logging.LogRecord(AUDIT_LOGGER, logging.WARNING, __file__, 1, "m", (), None)
    record.rpcsec_audit = {"reason": "replay", "event": "replay", "event_id": 1301, "junk": 1}
    out = json.loads(formatter.format(record))
    assert list(out) == ["time", "level", "logger", "event", "event_id", "reason"]
    assert out["time"].endswith("+00:00")


def test_key_rotation_takes_names_not_keys():
    with pytest.raises(TypeError):
        audit_key_rotation("ticket-key", b"\x00" * 32)  # type: ignore[arg-type]


def test_long_details_are_cut_short(capture):
    from rpcsec.security import _audit
    from rpcsec.sspi import MessageAlteredError

    _audit.refusal(SAY, "ipv4:1.2.3.4:5", MessageAlteredError("x" * 5000), handshake=False)
    (record,) = capture.audit("message-altered")
    assert len(record["detail"]) <= 160


def test_without_opentelemetry_installed():
    # Import-guarded: with the API absent, auditing works and costs one check.
    code = (
        "import sys, logging; sys.modules['opentelemetry'] = None\n"
        "import rpcsec\n"
        "from rpcsec.security import _audit\n"
        "assert _audit._otel_trace is None and _audit._span() is None\n"
        "logging.basicConfig(level=logging.DEBUG)\n"
        "with rpcsec.impersonate(rpcsec.AccessToken('alice', 'x509')): pass\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "rpcsec.audit" in result.stderr and "impersonation" in result.stderr


@pytest.fixture(params=["x509", pytest.param("kerberos", marks=pytest.mark.kerberos)])
def delegating_setup(request, tmp_path):
    from helpers import grpc_setup

    if request.param == "x509":
        return grpc_setup.x509_setup(tmp_path)
    return grpc_setup.kerberos_setup(request.getfixturevalue("kerberos_realm"))


def test_a_refusal_relayed_from_downstream(delegating_setup, serve, capture, wire_secrets):
    # x509 proxy certificates and kerberos forwarded TGTs: the same records.
    setup = delegating_setup
    alice = setup.principal("alice")
    deny_alice = AuthorizationPolicy(
        [AuthorizationRule("*", allow={"group:everyone"}, deny={alice})]
    )
    storage = serve([SecurityInterceptor(setup.server("storage"), deny_alice)], [EchoServicer()])

    def onward(request):
        with secure_channel(storage, **setup.channel_options("storage")) as channel:
            return echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="via front"))

    front = serve([SecurityInterceptor(setup.server("documents"))], [EchoServicer(onward=onward)])
    with secure_channel(front, setup.client("alice"), **_delegating(setup)) as channel:
        _refused(
            lambda: echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="onward")),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    at_storage, at_front = capture.audit("access-denied")
    assert at_storage["by"] == "policy" and at_storage["principal"] == alice
    assert at_storage["package"] == setup.package
    assert len(at_storage["delegation_chain"]) == 1  # alice, through documents
    if setup.package == "x509":
        assert at_storage["delegation_chain"] == [setup.target("documents")]
    (deleg,) = capture.audit("delegation")
    assert deleg["principal"] == alice and deleg["target"] == setup.target("storage")
    # Kerberos AP-REQs and forwarded TGTs, x509 handshake records, session keys: not logged.
    _assert_no_secrets(capture, setup, [], wire_secrets())
    assert at_front["by"] == "downstream" and at_front["method"] == SAY
    assert at_front["reason"] == "access-denied" and "detail" not in at_front


@settings(max_examples=200, deadline=None)
@given(principal=st.text(max_size=80), detail=st.text(min_size=1, max_size=300))
def test_hostile_names_cannot_forge_log_lines(principal, detail):
    # A principal or an error text from the network never splits or forges a record.
    from rpcsec.security import _audit
    from rpcsec.sspi import ReplayError

    handler = Capture()
    logger = logging.getLogger(AUDIT_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        token = rpcsec.AccessToken(principal, "x509")
        _audit.logon(token, "ipv4:127.0.0.1:1")
        _audit.refusal(SAY, principal, ReplayError(detail))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    for line in handler.lines:
        assert "\n" not in line and "\r" not in line
    logon, refusal = (json.loads(handler._json.format(r)) for r in handler.records)
    assert logon["principal"] == principal
    assert refusal["peer"] == principal and refusal["detail"] == detail[:157] + (
        "..." if len(detail) > 160 else detail[157:]
    )


async def test_aio_server_records_the_same_events(ntlm_setup, aio_serve, capture):
    from helpers.echo import AsyncEchoServicer

    from rpcsec.grpc import aio as rpcsec_aio

    setup = ntlm_setup
    alice, bob = setup.principal("alice"), setup.principal("bob")
    address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server())], [AsyncEchoServicer(readable_by=alice)]
    )
    for who in ("alice", "bob"):
        async with rpcsec_aio.secure_channel(
            address, setup.client(who), **setup.channel_options()
        ) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            if who == "alice":
                assert (await stub.Say(echo_pb2.EchoRequest(text="check"))).principal == alice
            else:
                with pytest.raises(grpc.RpcError) as info:
                    await stub.Say(echo_pb2.EchoRequest(text="check"))
                assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    wrong = acquire_credentials_handle(
        "ntlm", "RPCSEC\\bob", rpcsec.CredentialUse.OUTBOUND, password="Not-Bob-Pa55!"
    )
    async with rpcsec_aio.secure_channel(address, wrong, **setup.channel_options()) as channel:
        with pytest.raises(SecurityError):
            await echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="hi"))
    capture.wait_for("logon-failed")
    assert sorted(r["principal"] for r in capture.audit("logon")) == sorted([alice, bob])
    assert {r["principal"] for r in capture.audit("impersonation")} == {alice, bob}
    (denied,) = capture.audit("access-denied")
    assert denied["by"] == "descriptor" and denied["principal"] == bob
    assert denied["package"] == "ntlm"
    (failed,) = capture.audit("logon-failed")
    assert failed["reason"] == "logon-denied" and failed["peer"] == "127.0.0.1"
    assert "Not-Bob-Pa55!" not in "\n".join(capture.lines)


def test_the_secrets_scan_finds_a_leak(x509_setup):
    # The scanner itself can fail: a token logged as hex, base64 or repr is found.
    import types

    secret = bytes(range(40))
    for leaked in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
        handler = Capture()
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "token %s", (leaked,), None)
        handler.emit(record)
        with pytest.raises(AssertionError, match="leaked"):
            _assert_no_secrets(handler, types.SimpleNamespace(pki=None), [], [secret])
    handler = Capture()
    key = next(x509_setup.pki.path.rglob("*.key")).read_text()
    handler.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (key[40:120],), None))
    with pytest.raises(AssertionError):
        _assert_no_secrets(handler, x509_setup, [])


def test_socket_and_http_bindings_record_logons_too(x509_setup, capture, tmp_path):
    from helpers.pki import make_authority

    from rpcsec.sspi import CredentialUse
    from rpcsec.transports import httpauth, sockauth

    setup = x509_setup
    alice = setup.principal("alice")
    rogue = make_authority(tmp_path / "rogue", trust_domain="rogue.test")
    impostor = acquire_credentials_handle(
        "x509", None, authority_dir=str(rogue.path), name="alice", trust=str(setup.pki.trust_bundle)
    )
    storage = setup.pki.credentials("storage", CredentialUse.INBOUND)
    target = setup.target("storage")

    def echo(conn) -> None:
        conn.send(conn.recv())

    server = sockauth.Server(("127.0.0.1", 0), storage, echo)
    server.start(poll_interval=0.01)
    try:
        with sockauth.connect(server.address, setup.client(), target_name=target) as conn:
            conn.send(b"hi")
            assert conn.recv() == b"hi"
        with pytest.raises(SecurityError):
            sockauth.connect(server.address, impostor, target_name=target).close()
        capture.wait_for("logon-failed")
    finally:
        server.__exit__(None, None, None)
    (logon,) = capture.audit("logon")
    assert logon["principal"] == alice and logon["peer"] == "127.0.0.1"
    (failed,) = capture.audit("logon-failed")
    assert failed["method"] == "sockauth" and failed["reason"] == "untrusted-root"

    class Hello(httpauth.AuthHTTPRequestHandler):
        def handle_authenticated(self, request):
            return httpauth.Response(200, b"hello")

    web = httpauth.AuthHTTPServer(("127.0.0.1", 0), Hello, storage)
    web.start(poll_interval=0.01)
    try:
        assert httpauth.http_get(web.url + "/", setup.client(), target_name=target).status == 200
        with pytest.raises(SecurityError):
            httpauth.http_get(web.url + "/", impostor, target_name=target)
    finally:
        web.__exit__(None, None, None)
    logons = capture.audit("logon")
    assert len(logons) == 2 and logons[1]["principal"] == alice
    failures = capture.audit("logon-failed")
    assert len(failures) == 2 and failures[1]["method"] == "httpauth"
    assert failures[1]["reason"] == "untrusted-root"
    assert failures[1]["peer"] == "127.0.0.1"


def test_an_unconfigured_application_gets_no_stderr_flood():
    # Python's last-resort handler would print every WARNING to stderr; the audit logger is a
    # library logger with a NullHandler, so only a configured application sees records.
    code = (
        "import rpcsec\n"
        "from rpcsec.security import _audit\n"
        "from rpcsec.sspi import ReplayError\n"
        "for _ in range(3): _audit.refusal('/x/Y', 'ipv4:1.2.3.4:5', ReplayError())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
