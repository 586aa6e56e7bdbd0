"""Crafted Kerberos tokens never crash the process (issue 10 item 1).

MIT krb5 1.20 dereferences NULL when ``gss_unwrap_aead`` / ``gss_verify_mic`` get an RFC 1964
token id (``02 01``, ``01 01``, ``01 02``) on an AES (RFC 4121) context: one unauthenticated
message killed a kerberos server. Every case runs in a subprocess (tests/helpers/gss_probe.py)
against a real KDC, so a SIGSEGV fails the test instead of killing pytest; each token must
come back as a typed ``SecurityError``, and the child must exit normally.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.sspi import SecurityError

pytestmark = pytest.mark.kerberos

TESTS = pathlib.Path(__file__).parent
# RFC 1964 §1.2 token ids (MIC, Wrap, delete), RFC 4121 §4.2.6 (MIC, Wrap), and nonsense.
RFC1964_IDS = (b"\x01\x01", b"\x02\x01", b"\x01\x02")
RFC4121_IDS = (b"\x04\x04", b"\x05\x04")
HEADER_KIND_WRAP = 0x57
HEADER_KIND_MIC = 0x4D


def probe(realm, mode: str, tokens: list[bytes]) -> list[str]:
    """Run the child on ``tokens``; fail on a crash, a timeout or an untyped error."""
    request = {
        "ccache": realm.ccache("alice"),
        "keytab": realm.keytab("storage"),
        "rcache": realm.rcache("storage"),
        "target": realm.hostbased("storage"),
        "service": realm.service_principal("storage"),
        "user": realm.principal("alice"),
        "tokens": [t.hex() for t in tokens],
    }
    env = dict(os.environ, **realm.lab.env)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "helpers.gss_probe", mode],
        input=json.dumps(request).encode(),
        capture_output=True,
        env=env,
        cwd=TESTS,  # rpcsec comes from the environment's install, not a checkout in the cwd
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, (
        f"the {mode} child died with {proc.returncode} "
        f"(negative = signal): {proc.stderr.decode(errors='replace')[-2000:]}"
    )
    outcomes = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert len(outcomes) == len(tokens)
    untyped = [o for o in outcomes if o.startswith("!")]
    assert not untyped, untyped
    return outcomes


def gss_token(token_id: bytes, body_length: int, *, filler: bytes = b"\xff") -> bytes:
    """An RFC 1964-shaped (or RFC 4121-shaped) token header followed by zeros."""
    return token_id + b"\x00\x00" + filler * 4 + bytes(max(0, body_length))


def wrap_message(gss: bytes, seq: int = 1) -> bytes:
    """The core's 9-byte header (kind WRAP, sequence) around a forged GSS token."""
    return bytes([HEADER_KIND_WRAP]) + seq.to_bytes(8, "big") + gss


def mic_message(gss: bytes, seq: int = 1) -> bytes:
    return bytes([HEADER_KIND_MIC]) + seq.to_bytes(8, "big") + gss


# -- the reported crash, through the public message API ------------------------------------


def test_rfc1964_wrap_ids_through_unwrap_do_not_crash(kerberos_realm) -> None:
    tokens = [wrap_message(gss_token(tid, 100)) for tid in RFC1964_IDS]
    tokens += [wrap_message(gss_token(tid, 60)) for tid in RFC1964_IDS]  # exactly trailer-sized
    outcomes = probe(kerberos_realm, "unwrap", tokens)
    assert "ok" not in outcomes


def test_rfc1964_mic_ids_through_verify_do_not_crash(kerberos_realm) -> None:
    tokens = [mic_message(gss_token(tid, 20)) for tid in RFC1964_IDS + RFC4121_IDS]
    outcomes = probe(kerberos_realm, "verify", tokens)
    assert "ok" not in outcomes


# -- GssProtector straight (what a standard-GSS mode keeps using) ---------------------------


def test_gss_protector_refuses_rfc1964_tokens_before_the_native_call(kerberos_realm) -> None:
    tokens = [gss_token(tid, n) for tid in RFC1964_IDS for n in (0, 12, 44, 100)]
    for mode in ("gss-unseal", "gss-verify", "gss-record"):
        outcomes = probe(kerberos_realm, mode, tokens)
        assert set(outcomes) <= {"MessageAlteredError", "InvalidTokenError"}, (mode, outcomes)


def test_gss_protector_refuses_malformed_rfc4121_headers(kerberos_realm) -> None:
    bad = [
        b"\x05\x04\x02\xff" + bytes(12 + 60),  # Wrap: filler byte not 0xFF
        b"\x05\x04\x06\xff\xff\xff\x00\x00" + bytes(8 + 60),  # EC filler past the end
        b"\x05\x04\x06\xff\x00\x00\xff\xff" + bytes(8 + 60),  # RRC past the end
        b"\x04\x04\x00\xff\xff\xff\xff\xff" + bytes(8 + 12),  # MIC: acceptor-subkey flag unset
        b"\x04\x04\x00\x00\xff\xff\xff\xff" + bytes(8 + 12),  # MIC: filler not 0xFF
        b"\x05\x04\xf8\xff" + bytes(12),  # unknown flags
        b"\x05\x04",  # truncated
        b"",
    ]
    for mode in ("gss-unseal", "gss-verify", "gss-record"):
        outcomes = probe(kerberos_realm, mode, bad)
        assert "ok" not in outcomes, (mode, outcomes)


# -- the handshake's native paths -----------------------------------------------------------


def test_crafted_ap_req_tokens_do_not_crash_the_acceptor(kerberos_realm) -> None:
    oid = bytes.fromhex("06092a864886f712010202")  # 1.2.840.113554.1.2.2
    tokens = [
        b"",
        b"\x60\x00",
        b"\x60\x0b" + oid,  # no inner token id
        b"\x60\x0d" + oid + b"\x02\x01",  # RFC 1964 wrap id inside the framing
        b"\x60\x0d" + oid + b"\x01\x01",
        b"\x60\x0f" + oid + b"\x01\x00\x6e\x00",  # AP-REQ id with an empty APPLICATION 14
        b"\x60\x84\xff\xff\xff\xff" + oid + b"\x01\x00",  # huge claimed length
        b"\x01\x00\x6e\x00",  # bare AP-REQ id, no framing
        b"\x02\x01" + bytes(60),
    ]
    outcomes = probe(kerberos_realm, "accept", tokens)
    assert set(outcomes) == {"InvalidTokenError"}, outcomes


def test_crafted_ap_rep_tokens_do_not_crash_the_initiator(kerberos_realm) -> None:
    oid = bytes.fromhex("06092a864886f712010202")
    tokens = [
        b"\x02\x01" + bytes(40),
        b"\x60\x0d" + oid + b"\x02\x01",
        b"\x60\x0f" + oid + b"\x02\x00\x6f\x00",  # AP-REP id, empty APPLICATION 15
        b"\x60\x0f" + oid + b"\x03\x00\x7e\x00",  # KRB-ERROR id, empty APPLICATION 30
        b"\x60\x0f" + oid + b"\x01\x01\x6f\x00",
    ]
    outcomes = probe(kerberos_realm, "init", tokens)
    assert "ok" not in outcomes, outcomes


def test_crafted_spnego_tokens_do_not_crash_the_negotiate_acceptor(kerberos_realm) -> None:
    krb_oid = bytes.fromhex("06092a864886f712010202")
    spnego_oid = bytes.fromhex("06062b0601050502")
    mech_types = b"\x30\x0b" + krb_oid
    inner = b"\x60\x0d" + krb_oid + b"\x02\x01"  # RFC 1964 id as the optimistic token
    neg_init = (
        b"\x30"
        + bytes([len(mech_types) + 2 + len(inner) + 4])
        + b"\xa0"
        + bytes([len(mech_types)])
        + mech_types
        + b"\xa2"
        + bytes([len(inner) + 2])
        + b"\x04"
        + bytes([len(inner)])
        + inner
    )
    body = spnego_oid + b"\xa0" + bytes([len(neg_init)]) + neg_init
    tokens = [
        b"\x60" + bytes([len(body)]) + body,
        b"\x60\x08" + spnego_oid,
        b"\xa1\x00",
        b"\x60\x84\x7f\xff\xff\xff" + spnego_oid,
        inner,
    ]
    outcomes = probe(kerberos_realm, "negotiate-accept", tokens)
    assert "ok" not in outcomes, outcomes


def test_crafted_spnego_replies_do_not_crash_the_negotiate_initiator(kerberos_realm) -> None:
    from spnego._spnego import NegTokenResp

    krb = "1.2.840.113554.1.2.2"
    oid = bytes.fromhex("06092a864886f712010202")
    tokens = [
        NegTokenResp(supported_mech=krb, response_token=b"\x60\x0d" + oid + b"\x02\x01").pack(),
        NegTokenResp(supported_mech=krb, response_token=b"\x02\x01" + bytes(40)).pack(),
        # an RFC 1964 MIC id as the mechListMIC MIT would verify
        NegTokenResp(supported_mech=krb, mech_list_mic=b"\x01\x01" + bytes(30)).pack(),
        NegTokenResp(supported_mech=krb, mech_list_mic=b"\x04\x04" + bytes(26)).pack(),
        b"\xa1\x00",
        b"\x60\x00",
    ]
    outcomes = probe(kerberos_realm, "negotiate-init", [bytes(t) for t in tokens])
    assert "ok" not in outcomes, outcomes


# -- fuzz: generated RFC 1964 / 4121 token ids and lengths, in one child per example batch ---


token_ids = st.sampled_from(RFC1964_IDS + RFC4121_IDS + (b"\x00\x00", b"\xff\xff", b"\x04\x05"))
gss_tokens = st.builds(
    lambda tid, flags, filler, ec_rrc, length: tid + flags + filler + ec_rrc + bytes(length),
    token_ids,
    st.binary(min_size=1, max_size=1),
    st.sampled_from([b"\xff", b"\xff\xff\xff\xff\xff", b"\x00", b""]),
    st.binary(min_size=0, max_size=4),
    st.integers(min_value=0, max_value=200),
)


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(gss_tokens, min_size=20, max_size=40))
def test_fuzzed_gss_tokens_never_crash(kerberos_realm, tokens: list[bytes]) -> None:
    for mode in ("gss-unseal", "gss-verify", "gss-record"):
        outcomes = probe(kerberos_realm, mode, tokens)
        assert "ok" not in outcomes, (mode, outcomes)
    outcomes = probe(kerberos_realm, "unwrap", [wrap_message(t) for t in tokens])
    assert "ok" not in outcomes


# -- the reported attack, end to end: one DATA frame to a kerberos sockauth server ------------


def test_one_forged_data_frame_does_not_kill_a_sockauth_server(kerberos_realm) -> None:
    """Issue 10 item 1 as reported: the server survives, refuses the frame, serves others."""

    from rpcsec.transports import sockauth
    from rpcsec.transports._framing import encode_frame

    realm = kerberos_realm
    request = {
        "keytab": realm.keytab("storage"),
        "rcache": realm.rcache("storage"),
        "service": realm.service_principal("storage"),
    }
    env = dict(os.environ, **realm.lab.env)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    server = subprocess.Popen(
        [sys.executable, "-m", "helpers.gss_probe", "sockauth-server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=TESTS,
    )
    try:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write((json.dumps(request) + "\n").encode())
        server.stdin.flush()
        ready = server.stdout.readline().decode().split()
        assert ready and ready[0] == "READY", ready
        address = ("127.0.0.1", int(ready[1]))
        alice = realm.client_credentials("alice")
        target = realm.hostbased("storage")
        for token_id in RFC1964_IDS:
            with sockauth.connect(address, alice, target_name=target, timeout=10) as conn:
                conn.send(b"ping")
                assert conn.recv() == b"ping"
                forged = bytes([0x03]) + wrap_message(gss_token(token_id, 60), seq=1)
                conn._sock.sendall(encode_frame(forged))
                with pytest.raises((SecurityError, OSError)):
                    conn.recv()
            assert server.poll() is None, f"the server died with {server.returncode}"
        with sockauth.connect(address, alice, target_name=target, timeout=10) as conn:
            conn.send(b"still serving")
            assert conn.recv() == b"still serving"
        assert server.poll() is None
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def genuine_ap_req(kerberos_realm) -> bytes:
    """A real AP-REQ for storage (made here, by the client side: nothing hostile reaches MIT)."""
    from rpcsec.packages.kerberos._records import decode_frame
    from rpcsec.sspi import initialize_security_context

    client = initialize_security_context(
        kerberos_realm.client_credentials("alice"), kerberos_realm.hostbased("storage")
    )
    return decode_frame(b"RK", client.step().token, 1).first


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=4000), st.integers(min_value=1, max_value=255)
        ),
        min_size=20,
        max_size=40,
    )
)
def test_mutated_ap_reqs_that_pass_the_gate_never_crash_the_acceptor(
    kerberos_realm, genuine_ap_req, flips
) -> None:
    """Byte flips deep inside a genuine AP-REQ's DER (which the structure gate lets through
    when lengths still nest) reach MIT's ASN.1 decoder: typed errors, never a crash."""
    tokens = []
    for index, xor in flips:
        mutated = bytearray(genuine_ap_req)
        mutated[index % len(mutated)] ^= xor
        tokens.append(bytes(mutated))
    # probe() fails on a crash or an untyped error. "ok" can happen: a flip in a field the
    # AP-REQ does not authenticate (its msg-type, the ticket's clear sname) leaves the genuine
    # authenticator, bound to the same offer record, which MIT then accepts once.
    outcomes = probe(kerberos_realm, "accept", tokens)
    assert outcomes.count("ok") <= 1, outcomes  # once at most: then the replay cache has it
