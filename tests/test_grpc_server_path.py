"""The server's one-frame per-call path (``ServerSecurity.open_unary``) keeps every check.

The opening request of a ticket context is opened inline with the epoch key cached on the
entry (``TicketServerProtection.receive``), the store claimed directly, the policy's kept
decision read from two slots. These tests drive real x509 ticket contexts, paired in memory,
through that path and its fallbacks: epoch boundaries (the cache follows only a verified
epoch, a forged far-ahead number changes nothing), tampering of every kind (hypothesis), a
context deleted under a call in flight, and the audit's OpenTelemetry gate (a span is looked
up only once a span implementation is loaded, and is then recorded).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap

import pytest
from helpers.wiretap import craft_call, craft_stream_call, message_aad
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.grpc._binding import ChannelSecurity
from rpcsec.grpc._server_core import ServerMethod, ServerSecurity
from rpcsec.sspi import (
    ContextReq,
    ImpersonationLevel,
    InvalidTokenError,
    MessageAlteredError,
    ProtectionLevel,
    ReplayError,
    SecurityError,
)
from rpcsec.sspi._protection import EPOCH_BITS

METHOD = "/a.Svc/M"
EPOCH = 1 << EPOCH_BITS


@pytest.fixture
def ticket_pair(x509_setup):
    """(server security, the client's context, the server's cached ticket entry)."""
    client = ChannelSecurity(
        x509_setup.client(),
        target_name=x509_setup.target(),
        requirements=x509_setup.requirements | ContextReq.CONFIDENTIALITY,
        impersonation=ImpersonationLevel.IMPERSONATE,
        protection=ProtectionLevel.INTEGRITY,
        package_options=None,
    )
    security = ServerSecurity(x509_setup.server())
    negotiation = client.negotiation()
    accept = security.negotiation("ipv4:127.0.0.1:1")
    message = negotiation.start()
    while message is not None:
        reply, _ = accept.receive(message)
        message = negotiation.receive(reply)
    (entry,) = security.table.entries()
    assert entry.ticket_id is not None and entry.keys is not None
    return security, negotiation.context, entry


def _call(security, context, entry, payload=b"payload", level=ProtectionLevel.INTEGRITY):
    metadata, token, call_seq = craft_call(context, entry.handle, METHOD, payload, level)
    return metadata, token, call_seq


def test_the_cached_epoch_key_follows_only_a_verified_epoch(ticket_pair) -> None:
    security, client, entry = ticket_pair
    method = ServerMethod(METHOD, None, None)
    assert entry.keys.receive is None  # an idle context holds no AEAD of its own
    metadata, token, _ = _call(security, client, entry, b"first")
    assert security.open_unary(metadata, method, token)[1] == b"first"
    assert entry.keys.receive[0] == 0  # cached by the first request that verified
    client._send_seq = itertools.count(EPOCH - 2)  # the client is about to change epoch
    last_of_epoch_0 = [_call(security, client, entry, b"%d" % i) for i in range(2)]
    first, second = (_call(security, client, entry, b"%d" % i) for i in range(2, 4))
    assert int.from_bytes(first[2], "big") == EPOCH
    # A forged request far ahead (epoch 5) is refused and moves nothing.
    metadata, token, _ = first
    forged = token[:1] + (5 * EPOCH).to_bytes(8, "big") + token[9:]
    with pytest.raises(MessageAlteredError):
        security.open_unary(metadata, method, forged)
    assert entry.keys.receive[0] == 0
    # The first request of epoch 1 verifies through the core, which re-caches the key.
    _, payload = security.open_unary(first[0], method, first[1])
    assert payload == b"2" and entry.keys.receive[0] == 1
    # The next one is opened with the cached key; one of epoch 0 still opens (out of order),
    # and the cache stays on the newer epoch.
    assert security.open_unary(second[0], method, second[1])[1] == b"3"
    metadata, token, _ = last_of_epoch_0[1]
    assert security.open_unary(metadata, method, token)[1] == b"1"
    assert entry.keys.receive[0] == 1
    # Each was claimed: none opens twice, on either path.
    for metadata, token, _ in (first, second, last_of_epoch_0[1]):
        with pytest.raises(ReplayError):
            security.open_unary(metadata, method, token)
    # A tampered request in the cached epoch is refused by the inline AEAD call.
    metadata, token, _ = _call(security, client, entry, b"x" * 40)
    with pytest.raises(MessageAlteredError):
        security.open_unary(metadata, method, token[:-1] + bytes([token[-1] ^ 1]))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    level=st.sampled_from([ProtectionLevel.INTEGRITY, ProtectionLevel.PRIVACY]),
    cut=st.integers(min_value=0, max_value=200),
    flip=st.integers(min_value=0, max_value=200),
    bit=st.integers(min_value=0, max_value=7),
    extra=st.binary(max_size=3),
)
def test_an_altered_opening_request_is_refused_with_a_security_error(
    ticket_pair, level, cut, flip, bit, extra
) -> None:
    security, client, entry = ticket_pair
    method = ServerMethod(METHOD, None, None)
    metadata, token, _ = _call(security, client, entry, b"p" * 64, level)
    altered = bytearray(token[: len(token) - cut % len(token)] if cut else token)
    if flip < len(altered) and (cut or not extra):
        altered[flip] ^= 1 << bit
    altered = bytes(altered) + extra
    if altered == token:
        return
    with pytest.raises(SecurityError):
        security.open_unary(metadata, method, altered)
    # The untouched request still opens exactly once: nothing above moved the window.
    call, payload = security.open_unary(metadata, method, token)
    assert payload == b"p" * 64 and call.token.protection_level is level


def test_a_request_that_is_not_a_token_is_refused_before_any_key_work(ticket_pair) -> None:
    security, client, entry = ticket_pair
    method = ServerMethod(METHOD, None, None)
    metadata, token, _ = _call(security, client, entry)
    for bad in (b"", "text", token[:8], token[:24], b"\x01" + token[1:]):
        with pytest.raises(InvalidTokenError):
            security.open_unary(metadata, method, bad)  # type: ignore[arg-type]
    sealed = _call(security, client, entry, level=ProtectionLevel.PRIVACY)[1]
    with pytest.raises(MessageAlteredError):  # a sealed token shorter than its tag
        security.open_unary(metadata, method, sealed[:20])


def test_a_context_released_under_a_stream_in_flight_opens_no_further_message(
    ticket_pair,
) -> None:
    security, client, entry = ticket_pair
    method = ServerMethod(METHOD, None, None)
    metadata, _, call_seq = craft_stream_call(client, entry.handle, METHOD, [])
    call = security.open_call(metadata, method)
    inbound = call.inbound()
    first, second = (
        client.wrap(
            b"m%d" % i, aad=message_aad(entry.handle, METHOD, call_seq, 0x01, i), encrypt=False
        )
        for i in range(2)
    )
    assert inbound.open(first) == b"m0"  # the cached key opens stream messages too
    security.release(call)  # DeleteSecurityContext while the stream is open
    assert entry.keys is None
    with pytest.raises(SecurityError):
        inbound.open(second)


def test_the_span_lookup_waits_for_a_span_implementation_and_then_records() -> None:
    """In a fresh interpreter: before any OpenTelemetry implementation is imported the
    impersonation event never asks for the current span; once the SDK is imported, a span
    made current is found and gets the caller's attributes."""
    script = textwrap.dedent(
        """
        import sys
        from rpcsec.security import AccessToken
        from rpcsec.security._impersonation import run_as
        from rpcsec.security import _audit
        assert "opentelemetry.sdk.trace" not in sys.modules
        asked = []
        real = _audit._current_span
        _audit._current_span = lambda: asked.append(1) or real()
        token = AccessToken(principal="spiffe://t/user/alice", package="x509")
        for _ in range(50):
            run_as(token, lambda: None)
        assert asked == [], asked
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("t").start_as_current_span("call"):
            run_as(token, lambda: None)
        (span,) = exporter.get_finished_spans()
        assert span.attributes["rpcsec.principal"] == "spiffe://t/user/alice", span.attributes
        assert span.attributes["rpcsec.event"] == "impersonation"
        assert asked, "the span was never looked up"
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


async def test_run_as_async_is_impersonate_around_one_await(caplog) -> None:
    """The asyncio server's per-call form: the token is current for the awaited handler only,
    the previous one is back after a return or a raise, a non-token is refused before anything
    runs, and the impersonation is audited as ``impersonate`` audits it."""
    import logging

    from rpcsec.security import AccessToken, current_token, impersonate
    from rpcsec.security._impersonation import run_as_async

    alice = AccessToken("alice", "x509")
    bob = AccessToken("bob", "x509")

    async def seen(value):
        return current_token(), value

    async def fails():
        raise KeyError("missing")

    with caplog.at_level(logging.DEBUG, logger="rpcsec.audit"):
        assert await run_as_async(alice, seen, 1) == (alice, 1)
    assert current_token() is None
    (record,) = [r for r in caplog.records if r.name == "rpcsec.audit"]
    assert record.rpcsec_audit["event"] == "impersonation"
    assert record.rpcsec_audit["principal"] == "alice"
    with impersonate(bob):
        with pytest.raises(KeyError):
            await run_as_async(alice, fails)
        assert current_token() is bob
    called = []

    async def record_call():
        called.append(1)

    with pytest.raises(TypeError):
        await run_as_async("alice", record_call)  # type: ignore[arg-type]
    assert called == []
