"""The per-credentials cache of verified peer chains (``rpcsec.packages.x509._peer``): it saves
re-reading a known chain's certificates, and never trust -- OpenSSL verifies every handshake,
and a chain whose facts are unacceptable is refused every time."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from helpers.pair import handshake
from helpers.pki import make_authority

from rpcsec.packages.x509._peer import PeerCache, VerifiedPeer
from rpcsec.sspi import (
    CertificateExpiredError,
    CredentialUse,
    UntrustedRootError,
    accept_security_context,
    initialize_security_context,
)


def _bind(pki, server_creds, user="alice", **server_kwargs):
    client = initialize_security_context(pki.credentials(user), pki.id("documents"))
    return handshake(client, accept_security_context(server_creds, **server_kwargs))


def test_a_known_chain_is_read_once_per_credentials_handle(tmp_path) -> None:
    pki = make_authority(tmp_path)
    server_creds = pki.credentials("documents", CredentialUse.INBOUND)
    peers = server_creds.material.peers
    first = _bind(pki, server_creds)
    second = _bind(pki, server_creds)
    assert len(peers) == 1  # alice's chain, read once
    assert first.server.peer.principal == second.server.peer.principal == pki.id("alice")
    assert second.server.peer.groups == frozenset({"staff", "editors"})
    _bind(pki, server_creds, user="bob")
    assert len(peers) == 2
    assert _bind(pki, server_creds, user="bob").server.peer.principal == pki.id("bob")


def test_a_cached_chain_is_still_verified_at_each_handshake(tmp_path) -> None:
    """Validity is OpenSSL's verdict at the handshake's time, never the cache's: the same
    chain that bound a minute ago is refused once it has expired."""
    pki = make_authority(tmp_path)
    server_creds = pki.credentials("documents", CredentialUse.INBOUND)
    _bind(pki, server_creds)
    assert len(server_creds.material.peers) == 1
    leaf = server_creds.material.identity.certificate
    later = leaf.not_valid_after_utc.timestamp() + 3600.0
    client = initialize_security_context(pki.credentials("alice"), pki.id("documents"))
    server = accept_security_context(server_creds, clock=lambda: later)
    with pytest.raises(CertificateExpiredError):
        handshake(client, server)


def test_a_chain_from_another_authority_is_refused_with_a_warm_cache(tmp_path) -> None:
    pki = make_authority(tmp_path)
    other = make_authority(tmp_path, trust_domain="other.test")
    server_creds = pki.credentials("documents", CredentialUse.INBOUND)
    _bind(pki, server_creds)
    client = initialize_security_context(other.credentials("alice"), pki.id("documents"))
    with pytest.raises(UntrustedRootError):
        handshake(client, accept_security_context(server_creds))
    assert len(server_creds.material.peers) == 1


def _self_signed(uri: str | None, *, ca: bool = False) -> x509.Certificate:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if uri is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    return builder.sign(key, None)


@pytest.mark.parametrize(
    "chain",
    [
        pytest.param(lambda: (_self_signed(None),), id="no-spiffe-id"),
        pytest.param(lambda: (_self_signed("spiffe://a.test/user/x", ca=True),), id="a-ca"),
        pytest.param(
            lambda: (
                _self_signed("spiffe://a.test/user/x"),
                _self_signed("spiffe://b.test", ca=True),
            ),
            id="other-trust-domain",
        ),
    ],
)
def test_unacceptable_facts_are_refused_every_time_and_never_cached(chain) -> None:
    cache = PeerCache()
    certs = chain()
    for _ in range(2):
        with pytest.raises(UntrustedRootError):
            cache.peer(certs)
    assert len(cache) == 0


def test_the_cache_is_bounded_and_forgets_the_least_recent() -> None:
    cache = PeerCache(size=2)
    chains = [(_self_signed(f"spiffe://a.test/user/u{i}"),) for i in range(3)]
    a = cache.peer(chains[0])
    cache.peer(chains[1])
    assert cache.peer(chains[0]) is a  # refreshed: chains[1] is now the oldest
    cache.peer(chains[2])
    assert len(cache) == 2
    assert cache.peer(chains[0]) is a
    assert cache.peer(chains[1]) is not None and len(cache) == 2
    assert PeerCache(size=0).peer(chains[0]).spiffe_id == "spiffe://a.test/user/u0"
    with pytest.raises(ValueError):
        PeerCache(size=-1)


def test_a_verified_peer_is_immutable() -> None:
    peer = VerifiedPeer((_self_signed("spiffe://a.test/user/x"),))
    assert peer.spiffe_id == "spiffe://a.test/user/x"
    assert not peer.server_auth and not peer.client_auth  # no extendedKeyUsage: nothing
    with pytest.raises(AttributeError):
        peer.spiffe_id = "spiffe://a.test/user/admin"  # type: ignore[misc]


def test_concurrent_handshakes_share_one_entry_per_chain(tmp_path) -> None:
    """Many threads reading the same chains at once: one fact set per chain, all correct."""
    from concurrent.futures import ThreadPoolExecutor

    pki = make_authority(tmp_path)
    server_creds = pki.credentials("documents", CredentialUse.INBOUND)
    users = ["alice", "bob"] * 8
    with ThreadPoolExecutor(max_workers=8) as pool:
        pairs = list(pool.map(lambda user: _bind(pki, server_creds, user=user), users))
    for user, pair in zip(users, pairs, strict=True):
        assert pair.server.peer.principal == pki.id(user)
    assert len(server_creds.material.peers) == 2


def test_a_malformed_key_purpose_is_refused_every_time() -> None:
    """An extendedKeyUsage that does not parse: InvalidTokenError, and nothing is cached."""
    from rpcsec.sspi import InvalidTokenError

    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://a.test/u/x")]),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(x509.oid.ExtensionOID.EXTENDED_KEY_USAGE, b"\x04\x00"),
            critical=False,
        )
        .sign(key, None)
    )
    cache = PeerCache()
    for _ in range(2):
        with pytest.raises(InvalidTokenError):
            cache.peer((cert,))
    assert len(cache) == 0
