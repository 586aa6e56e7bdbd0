"""sockauth's standard mode against MIT's gss-sample programs (Debian krb5-gss-samples).

``gss-client`` (Kerberos, and SPNEGO with ``-spnego``) -> rpcsec ``GssSampleServer``, and rpcsec
``call_server`` -> ``gss-server``, both started by the tests; then the protocol's bad input:
flags that would lower protection, an unauthenticated session, oversize and garbage frames
(hypothesis), none of which reaches the handler.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import time

import pytest
from helpers.negotiate_peers import require_tool
from hypothesis import given, settings
from hypothesis import strategies as st

from rpcsec.security import current_token
from rpcsec.sspi import InvalidTokenError, MessageAlteredError, SecurityError
from rpcsec.transports import FrameTooLargeError
from rpcsec.transports._gss_sample import (
    CONTEXT,
    CONTEXT_NEXT,
    DATA,
    ENCRYPTED,
    NOOP,
    SEND_MIC,
    WRAPPED,
    SampleToken,
    SampleTokenReader,
    ServerProtocol,
    encode_sample_token,
)
from rpcsec.transports.gss_sample import GssSampleServer, call_server

SERVICE = "storage@localhost"


@contextlib.contextmanager
def _rpcsec_server(realm, received, **kwargs):
    def handler(message: bytes) -> None:
        received.append((message, current_token().principal))

    creds = realm.server_credentials("storage")
    with GssSampleServer(("127.0.0.1", 0), creds, handler, **kwargs) as server:
        server.start()
        yield server


def _gss_client(realm, port, *args, message="hello from gss-client"):
    tool = require_tool("gss-client")
    env = dict(realm.lab.env, KRB5CCNAME=realm.ccache("alice"))
    return subprocess.run(
        [tool, "-port", str(port), *args, "127.0.0.1", SERVICE, message],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.mark.kerberos
@pytest.mark.parametrize("mech", [[], ["-spnego"]], ids=["krb5", "spnego"])
def test_gss_client_to_rpcsec_server(kerberos_realm, mech):
    received = []
    with _rpcsec_server(kerberos_realm, received) as server:
        proc = _gss_client(kerberos_realm, server.address[1], *mech, "-mcount", "2")
    output = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, output + proc.stderr.decode(errors="replace")
    assert output.count("Signature verified.") == 2  # gss-client checked our MICs
    assert received == [(b"hello from gss-client", "alice@KRBTEST.COM")] * 2  # ran as alice
    assert server.sessions[0].principal == "alice@KRBTEST.COM"


@pytest.mark.kerberos
@pytest.mark.parametrize(
    ("args", "level"),
    [
        (["-d"], "DELEGATE"),  # gss-client forwards alice's TGT
        (["-nomutual"], "IMPERSONATE"),
        (["-seq", "-ccount", "2"], "IMPERSONATE"),  # two connections, GSS sequence checks
        (["-nx", "-nm"], "IMPERSONATE"),  # integrity only, no MIC asked: NOOP replies
    ],
)
def test_gss_client_options(kerberos_realm, args, level):
    seen = []

    def handler(message: bytes) -> None:
        token = current_token()
        usable = token.delegated_credentials is not None
        seen.append((message, token.impersonation_level.name, usable))

    creds = kerberos_realm.server_credentials("storage")
    with GssSampleServer(("127.0.0.1", 0), creds, handler) as server:
        server.start()
        proc = _gss_client(kerberos_realm, server.address[1], *args)
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")
    count = 2 if "-ccount" in args else 1
    assert seen == [(b"hello from gss-client", level, level == "DELEGATE")] * count


@pytest.mark.kerberos
@pytest.mark.parametrize(("encrypt", "mic"), [(False, True), (True, False)])
def test_rpcsec_client_options_against_gss_server(kerberos_realm, encrypt, mic):
    with _mit_gss_server(kerberos_realm) as (port, _proc):
        result = call_server(
            ("127.0.0.1", port),
            kerberos_realm.client_credentials("alice"),
            SERVICE,
            [b"plain but signed"],
            encrypt=encrypt,
            mic=mic,
        )
    assert result.signed == (1 if mic else 0)


@pytest.mark.kerberos
@pytest.mark.parametrize(
    "flag", ["-nw", "-na"], ids=["unwrapped-message", "unauthenticated-session"]
)
def test_gss_client_lowering_protection_is_refused(kerberos_realm, flag):
    received = []
    with _rpcsec_server(kerberos_realm, received) as server:
        proc = _gss_client(kerberos_realm, server.address[1], flag)
    assert proc.returncode != 0 or b"Signature verified" not in proc.stdout
    assert received == []


@pytest.mark.kerberos
def test_unencrypted_message_is_refused_when_privacy_is_required(kerberos_realm):
    from rpcsec.sspi import ProtectionLevel

    received = []
    with _rpcsec_server(kerberos_realm, received, protection=ProtectionLevel.PRIVACY) as server:
        proc = _gss_client(kerberos_realm, server.address[1], "-nx")
    assert b"Signature verified" not in proc.stdout
    assert received == []


@contextlib.contextmanager
def _mit_gss_server(realm):
    tool = require_tool("gss-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(realm.lab.env, KRB5_KTNAME=realm.keytab("storage"))
    proc = subprocess.Popen(
        ["stdbuf", "-oL", tool, "-port", str(port), SERVICE],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # readiness: the port accepts (this probe session just ends)
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "gss-server did not start"
                time.sleep(0.05)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.kerberos
@pytest.mark.parametrize("mech", ["krb5", "spnego"])
def test_rpcsec_client_to_gss_server(kerberos_realm, mech):
    with _mit_gss_server(kerberos_realm) as (port, proc):
        result = call_server(
            ("127.0.0.1", port),
            kerberos_realm.client_credentials("alice"),
            SERVICE,
            [b"first message", b"second message"],
            mech=mech,
        )
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode(errors="replace")
    assert result.signed == 2  # both MICs from gss-server verified
    assert result.server.principal == "storage/localhost@KRBTEST.COM"  # mutual auth
    assert 'Accepted connection: "alice@KRBTEST.COM"' in output
    assert 'Received message: "first message"' in output


@pytest.mark.kerberos
def test_rpcsec_client_to_rpcsec_server_standard_mode(kerberos_realm):
    received = []
    with _rpcsec_server(kerberos_realm, received) as server:
        result = call_server(
            server.address, kerberos_realm.client_credentials("alice"), SERVICE, [b"x"]
        )
    assert result.signed == 1 and received == [(b"x", "alice@KRBTEST.COM")]


@pytest.mark.kerberos
@pytest.mark.parametrize(
    "payload",
    [
        b"\x11" + struct.pack(">I", 1 << 30),  # NOOP|CONTEXT_NEXT, then a huge length
        encode_sample_token(NOOP | CONTEXT_NEXT, b"") + b"\x02" + struct.pack(">I", 1 << 30),
        encode_sample_token(NOOP | CONTEXT_NEXT, b"") + encode_sample_token(CONTEXT, b"\x60\x00"),
        encode_sample_token(NOOP | CONTEXT_NEXT, b"") + encode_sample_token(DATA, b"hi"),
        b"garbage that is not gss-sample at all",
    ],
)
def test_hostile_raw_clients_are_dropped(kerberos_realm, payload):
    received = []
    with _rpcsec_server(kerberos_realm, received) as server:
        with socket.create_connection(server.address, 10) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b""  # closed without an answer
        # and the server still serves a real client
        result = call_server(
            server.address, kerberos_realm.client_credentials("alice"), SERVICE, [b"ok"]
        )
    assert result.signed == 1 and received == [(b"ok", "alice@KRBTEST.COM")]


# -- the framing and the server's state machine, without a network ------------------------


@given(st.integers(1, 255), st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=20))
def test_token_round_trip_in_any_pieces(flags, token, cuts):
    wire = encode_sample_token(flags, token) * 2
    reader = SampleTokenReader(1024)
    got, pos = [], 0
    for cut in [*cuts, len(wire)]:
        reader.feed(wire[pos : pos + cut])
        pos += cut
        while (item := reader.next_token()) is not None:
            got.append(item)
    assert got == [SampleToken(flags, token)] * 2


@given(st.binary(max_size=200))
def test_reader_raises_only_frame_too_large(data):
    reader = SampleTokenReader(64)
    reader.feed(data)
    try:
        while reader.next_token() is not None:
            pass
    except FrameTooLargeError:
        pass


def test_v1_framing_has_a_three_byte_length():
    reader = SampleTokenReader()
    reader.feed(b"\x00\x00\x00\x03abc")
    assert reader.next_token() == SampleToken(0, b"abc")
    assert encode_sample_token(0, b"abc") == b"\x00\x00\x00\x03abc"


def _protocol(received, *, encrypted=True, require_encryption=False):
    return ServerProtocol(
        accept=lambda token: (b"reply", True),
        unwrap=lambda token: (token, encrypted),
        get_mic=lambda data: b"mic:" + data,
        on_message=received.append,
        require_encryption=require_encryption,
    )


def _established(received, **kwargs):
    protocol = _protocol(received, **kwargs)
    protocol.receive(SampleToken(NOOP | CONTEXT_NEXT, b""))
    protocol.receive(SampleToken(CONTEXT, b"token"))
    assert protocol.established
    return protocol


@given(st.integers(0, 255), st.binary(max_size=20))
def test_server_protocol_raises_only_security_errors_and_fails_sticky(flags, token):
    received = []
    protocol = _established(received)
    try:
        protocol.receive(SampleToken(flags, token))
    except SecurityError:
        with pytest.raises(InvalidTokenError):
            protocol.receive(SampleToken(NOOP, b""))
        assert received == []
        return
    # accepted: it was a NOOP (end) or a wrapped, encrypted data token
    assert flags & NOOP or (flags & DATA and flags & WRAPPED and flags & ENCRYPTED)


@settings(max_examples=50)
@given(st.integers(0, 255))
def test_server_protocol_needs_context_next_first(flags):
    protocol = _protocol([])
    if flags == NOOP | CONTEXT_NEXT:
        assert protocol.receive(SampleToken(flags, b"")) == []
    else:
        with pytest.raises(InvalidTokenError):
            protocol.receive(SampleToken(flags, b""))


def test_encrypted_flag_must_match_conf_state():
    received = []
    protocol = _established(received, encrypted=False)
    with pytest.raises(MessageAlteredError):
        protocol.receive(SampleToken(DATA | WRAPPED | ENCRYPTED | SEND_MIC, b"m"))
    assert received == []
    protocol = _established(received, encrypted=False, require_encryption=True)
    with pytest.raises(MessageAlteredError):
        protocol.receive(SampleToken(DATA | WRAPPED | SEND_MIC, b"m"))
    protocol = _established(received, encrypted=False)
    assert protocol.receive(SampleToken(DATA | WRAPPED | SEND_MIC, b"m")) == [
        encode_sample_token(0x08, b"mic:m")
    ]
    assert received == [b"m"]
