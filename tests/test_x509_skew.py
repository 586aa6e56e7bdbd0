"""Clock skew for certificate validity (issue 10 item 12): a peer whose clock is a few minutes
off still binds (default 5 minutes, like Kerberos' clockskew), an hour off still fails with
CertificateExpiredError, on both sides, for notBefore and notAfter, in TLS and in RFC 3820
proxy chains. Every clock is injected; nothing sleeps."""

from __future__ import annotations

import datetime
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from helpers.pair import handshake
from helpers.pki import make_authority

from rpcsec.packages.x509 import DEFAULT_CLOCK_SKEW, ProxyCertInfo, issue_proxy, verify_delegation
from rpcsec.sspi import (
    CertificateExpiredError,
    ContextReq,
    CredentialUse,
    DelegationPolicyError,
    accept_security_context,
    initialize_security_context,
)

UTC = datetime.UTC
NOW = time.time()
MINUTE = 60.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Certificates issued exactly at NOW (no backdating) and one that expired 2 minutes ago."""
    authority = make_authority(tmp_path_factory.mktemp("skew"))
    # Issued when the module's tests start (not at import: a long suite would age them);
    # NOW is the moment every test of this module reasons from.
    global NOW
    now = NOW = time.time()
    start = datetime.datetime.fromtimestamp(now, UTC)
    for name, service in (("fresh-alice", False), ("fresh-docs", True)):
        authority.issue(name, service=service, not_before=start)
    authority.issue("early-alice", not_before=start - datetime.timedelta(days=1))
    end = datetime.datetime.fromtimestamp(now - 2 * MINUTE, UTC)
    for name, service in (("stale-alice", False), ("stale-docs", True)):
        authority.issue(
            name, service=service, not_before=end - datetime.timedelta(days=1), not_after=end
        )
    return authority


def _bind(pki, user, service, *, client_clock=None, server_clock=None, skew=None):
    options = {} if skew is None else {"clock_skew": skew}
    client = initialize_security_context(
        pki.credentials(user),
        pki.id(service),
        ContextReq.default(),
        options=dict(options),
        **({"clock": client_clock} if client_clock else {}),
    )
    server = accept_security_context(
        pki.credentials(service, CredentialUse.INBOUND),
        options=dict(options),
        **({"clock": server_clock} if server_clock else {}),
    )
    return handshake(client, server)


def _behind(seconds):
    return lambda: time.time() - seconds


def test_default_skew_is_five_minutes():
    assert DEFAULT_CLOCK_SKEW == 5 * MINUTE


def test_client_clock_four_minutes_behind_binds(pki):
    # Regression: notBefore had no slack -- the server's fresh certificate was "expired".
    pair = _bind(pki, "alice", "fresh-docs", client_clock=_behind(4 * MINUTE))
    assert pair.client.complete and pair.server.complete


def test_server_clock_four_minutes_behind_binds(pki):
    pair = _bind(pki, "fresh-alice", "documents", server_clock=_behind(4 * MINUTE))
    assert pair.server.peer.principal == pki.id("fresh-alice")


@pytest.mark.parametrize("side", ["client", "server"])
def test_a_clock_one_hour_behind_still_fails(pki, side):
    clocks = {f"{side}_clock": _behind(60 * MINUTE)}
    with pytest.raises(CertificateExpiredError):
        _bind(pki, "fresh-alice", "fresh-docs", **clocks)


def test_a_certificate_just_past_notafter_is_within_the_skew(pki):
    pair = _bind(pki, "stale-alice", "stale-docs")
    assert pair.server.peer.principal == pki.id("stale-alice")


def test_skew_is_configurable(pki):
    with pytest.raises(CertificateExpiredError):
        _bind(pki, "alice", "fresh-docs", client_clock=_behind(4 * MINUTE), skew=0)
    with pytest.raises(CertificateExpiredError):
        _bind(pki, "stale-alice", "documents", skew=60)
    pair = _bind(pki, "fresh-alice", "fresh-docs", client_clock=_behind(60 * MINUTE), skew=7200)
    assert pair.client.complete


@pytest.mark.parametrize("skew", [-1, "300", float("nan"), 10 * 86400.0, True])
def test_bad_skew_is_a_caller_error(pki, skew):
    with pytest.raises((TypeError, ValueError)):
        initialize_security_context(
            pki.credentials("alice"), pki.id("documents"), options={"clock_skew": skew}
        ).step()


def _proxy(pki, not_before):
    path = pki.ca.locate("early-alice")
    cert = x509.load_pem_x509_certificate(path.certificate_path.read_bytes())
    key = serialization.load_pem_private_key(path.key_path.read_bytes(), None)
    info = ProxyCertInfo(path_len=0, delegate=pki.id("documents"), targets=frozenset())
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    # issue_proxy backdates by 5 minutes itself; "now" is chosen so notBefore == not_before.
    proxy = issue_proxy(
        cert, key, public, info, now=not_before + 300, lifetime=600, not_after_limit=NOW + 86400
    )
    anchors = (x509.load_pem_x509_certificate(pki.trust_bundle.read_bytes()),)
    return cert, proxy, anchors


def test_proxy_chains_get_the_same_skew(pki):
    cert, proxy, anchors = _proxy(pki, NOW + 7200)  # the root and the principal are valid
    start = proxy.not_valid_before_utc.timestamp()
    chain = verify_delegation((cert,), (proxy,), anchors, start - 4 * MINUTE)
    assert chain.principal == pki.id("early-alice")
    with pytest.raises(DelegationPolicyError):
        verify_delegation((cert,), (proxy,), anchors, start - 60 * MINUTE)
    with pytest.raises(DelegationPolicyError):
        verify_delegation((cert,), (proxy,), anchors, start - 4 * MINUTE, skew=0)
    end = proxy.not_valid_after_utc.timestamp()
    assert verify_delegation((cert,), (proxy,), anchors, end + 4 * MINUTE).principal
    with pytest.raises(DelegationPolicyError):
        verify_delegation((cert,), (proxy,), anchors, end + 6 * MINUTE)


def test_principal_certificate_in_a_chain_gets_the_skew(pki):
    path = pki.ca.locate("fresh-alice")
    cert = x509.load_pem_x509_certificate(path.certificate_path.read_bytes())
    key = serialization.load_pem_private_key(path.key_path.read_bytes(), None)
    info = ProxyCertInfo(path_len=0, delegate=pki.id("documents"), targets=frozenset())
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    proxy = issue_proxy(cert, key, public, info, now=NOW, lifetime=600, not_after_limit=NOW + 3600)
    anchors = (x509.load_pem_x509_certificate(pki.trust_bundle.read_bytes()),)
    assert verify_delegation((cert,), (proxy,), anchors, NOW - 4 * MINUTE).principal
    with pytest.raises(CertificateExpiredError):
        verify_delegation((cert,), (proxy,), anchors, NOW - 60 * MINUTE)
