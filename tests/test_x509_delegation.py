"""x509 package: RFC 3820 proxy delegation (seed: C, C/S1, C/S2) and every refusal of it,
early on the delegate's side and again, without trusting the delegate, downstream."""

from __future__ import annotations

import datetime
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from helpers.pair import handshake
from helpers.pki import make_authority
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import rpcsec.packages.x509._mechanism as mechanism_module
from rpcsec.packages.x509 import (
    DEFAULT_CLOCK_SKEW,
    PROXY_CERT_INFO_OID,
    DelegatedChain,
    Delegation,
    ProxyCertInfo,
    X509Credential,
    issue_proxy,
)
from rpcsec.packages.x509._extensions import decode_proxy_cert_info
from rpcsec.packages.x509._proxy import verify_delegation
from rpcsec.sspi import (
    ANY_SERVER,
    ContextAttribute,
    ContextReq,
    ContextState,
    Credentials,
    CredentialUse,
    DelegationPolicyError,
    ImpersonationLevel,
    InvalidTokenError,
    SecurityError,
    UntrustedRootError,
    accept_security_context,
    get_package,
    initialize_security_context,
)

DELEGATE = ContextReq.default() | ContextReq.DELEGATE


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    authority = make_authority(tmp_path_factory.mktemp("pki"))
    authority.issue("archive", service=True)
    authority.issue("printer", service=True)
    return authority


def delegate(
    pki,
    *,
    user="alice",
    service="documents",
    delegate_to=("storage",),
    depth=1,
    lifetime=None,
    clock=None,
    impersonation=ImpersonationLevel.DELEGATE,
    requested=DELEGATE,
):
    """alice -> documents with delegation; returns the pair (server side holds the creds)."""
    options = {"delegate_to": [pki.id(t) for t in delegate_to], "delegation_depth": depth}
    if lifetime is not None:
        options["proxy_lifetime"] = lifetime
    timing = {"clock": clock} if clock is not None else {}
    client = initialize_security_context(
        pki.credentials(user),
        pki.id(service),
        requested,
        impersonation=impersonation,
        options=options,
        **timing,
    )
    server = accept_security_context(pki.credentials(service, CredentialUse.INBOUND), **timing)
    return handshake(client, server)


def onward(
    pki,
    credentials,
    target,
    *,
    requested=None,
    impersonation=ImpersonationLevel.IMPERSONATE,
    options=None,
    clock=None,
):
    """An onward context with (delegated) ``credentials`` to ``target``, not yet stepped."""
    timing = {"clock": clock} if clock is not None else {}
    client = initialize_security_context(
        credentials,
        pki.id(target) if target else None,
        requested,
        impersonation=impersonation,
        options=options or {},
        **timing,
    )
    server = accept_security_context(pki.credentials(target, CredentialUse.INBOUND), **timing)
    return client, server


def forged(pki, holder, principal_chain, proxies, key, *, targets, remaining=1, expires=None):
    """Delegated credentials assembled by hand, as a malicious delegate could: the client-side
    policy fields say whatever the forger likes, so only the downstream can refuse."""
    own = pki.credentials(holder).material
    chain = Delegation(
        principal=pki.id("alice"),
        groups=frozenset(),
        delegates=(pki.id(holder),),
        targets=frozenset(pki.id(t) for t in targets),
        remaining_depth=remaining,
        expires_at=expires if expires is not None else time.time() + 86400,
        principal_chain=tuple(principal_chain),
        proxies=tuple(proxies),
    )
    material = X509Credential(own.identity, own.trust, DelegatedChain(chain, key))
    return Credentials(
        package=get_package("x509"),
        principal=chain.principal,
        use=CredentialUse.OUTBOUND,
        material=material,
    )


def leaf(pki, name):
    path = pki.ca.locate(name)
    cert = x509.load_pem_x509_certificate(path.certificate_path.read_bytes())
    key = serialization.load_pem_private_key(path.key_path.read_bytes(), None)
    return cert, key


# -- the happy paths -------------------------------------------------------------------------


def test_delegation_hands_the_server_proxy_credentials(pki):
    pair = delegate(pki)
    assert pair.legs == 5  # one extra client leg carries the proxy certificate
    server = pair.server
    assert server.attributes & ContextReq.DELEGATE and pair.client.attributes & ContextReq.DELEGATE
    assert server.impersonation_level is ImpersonationLevel.DELEGATE
    peer = server.peer
    assert peer.impersonation_level is ImpersonationLevel.DELEGATE and peer.can_delegate
    creds = peer.delegated_credentials
    assert isinstance(creds, Credentials)
    assert creds.package_name == "x509" and creds.use is CredentialUse.OUTBOUND
    assert creds.principal == pki.id("alice")
    material = creds.material
    assert material.identity.spiffe_id == pki.id("documents")  # TLS still proves documents
    chain = material.delegated.delegation
    assert chain.delegates == (pki.id("documents"),)
    assert chain.targets == frozenset({pki.id("storage")})
    assert chain.remaining_depth == 1
    assert chain.groups == frozenset({"staff", "editors"})


def test_proxy_certificate_follows_rfc3820(pki):
    before = time.time()
    pair = delegate(pki, lifetime=600, depth=0)
    material = pair.server.peer.delegated_credentials.material
    proxy = material.delegated.delegation.last
    alice, _ = leaf(pki, "alice")
    ext = proxy.extensions.get_extension_for_oid(PROXY_CERT_INFO_OID)
    assert ext.critical
    info = decode_proxy_cert_info(ext.value.value)
    assert info == ProxyCertInfo(
        path_len=0, delegate=pki.id("documents"), targets=frozenset({pki.id("storage")})
    )
    assert proxy.issuer == alice.subject
    assert list(proxy.subject.rdns)[:-1] == list(alice.subject.rdns)
    assert proxy.subject.rdns[-1].rfc4514_string() == f"CN={proxy.serial_number}"
    proxy.verify_directly_issued_by(alice)  # signed by alice's own key
    with pytest.raises(x509.ExtensionNotFound):
        proxy.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not proxy.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert proxy.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    # the key pair was made by the server; only its public half ever left it
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert proxy.public_key().public_bytes(*raw) == (
        material.delegated.key.public_key().public_bytes(*raw)
    )
    assert proxy.public_key().public_bytes(*raw) != alice.public_key().public_bytes(*raw)
    assert proxy.not_valid_after_utc <= alice.not_valid_after_utc
    assert before + 590 <= proxy.not_valid_after_utc.timestamp() <= time.time() + 601


def test_proxy_lifetime_never_exceeds_the_clients_certificate(pki):
    now = datetime.datetime.now(datetime.UTC)
    pki.issue("carol", not_after=now + datetime.timedelta(minutes=10))
    pair = delegate(pki, user="carol", lifetime=3600)
    proxy = pair.server.peer.delegated_credentials.material.delegated.delegation.last
    carol, _ = leaf(pki, "carol")
    assert proxy.not_valid_after_utc == carol.not_valid_after_utc


def test_onward_call_speaks_for_the_original_client(pki):
    creds = delegate(pki).server.peer.delegated_credentials
    hop = handshake(*onward(pki, creds, "storage"))
    peer = hop.server.peer
    assert peer.principal == pki.id("alice")
    assert peer.groups == frozenset({"staff", "editors"})
    assert peer.delegation_chain == (pki.id("documents"),)
    assert peer.impersonation_level is ImpersonationLevel.IMPERSONATE
    assert peer.delegated_credentials is None
    assert str(peer).startswith(
        "spiffe://rpcsec.test/user/alice/spiffe://rpcsec.test/svc/documents"
    )
    assert "CN=alice" in hop.server.query_attributes(ContextAttribute.NATIVE_NAMES).peer
    assert hop.client.peer.principal == pki.id("storage")
    assert hop.client.query_attributes(ContextAttribute.NAMES).local == pki.id("alice")
    message = hop.client.wrap(b"read alice's file", encrypt=False)
    assert hop.server.unwrap(message) == b"read alice's file"


def test_onward_level_is_what_that_hop_granted(pki):
    creds = delegate(pki).server.peer.delegated_credentials
    hop = handshake(*onward(pki, creds, "storage", impersonation=ImpersonationLevel.IDENTIFY))
    assert hop.server.peer.impersonation_level is ImpersonationLevel.IDENTIFY


def test_second_hop_grows_the_chain(pki):
    first = delegate(pki, delegate_to=("storage", "archive"), depth=1)
    documents_creds = first.server.peer.delegated_credentials
    second = handshake(
        *onward(
            pki,
            documents_creds,
            "storage",
            requested=DELEGATE,
            impersonation=ImpersonationLevel.DELEGATE,
            options={"delegate_to": [pki.id("archive")]},
        )
    )
    assert second.legs == 5
    assert second.server.peer.delegation_chain == (pki.id("documents"),)
    storage_creds = second.server.peer.delegated_credentials
    chain = storage_creds.material.delegated.delegation
    assert chain.delegates == (pki.id("documents"), pki.id("storage"))
    assert chain.targets == frozenset({pki.id("archive")})
    assert chain.remaining_depth == 0
    assert len(chain.proxies) == 2
    chain.proxies[1].verify_directly_issued_by(chain.proxies[0])  # signed with proxy 1's key
    third = handshake(*onward(pki, storage_creds, "archive"))
    peer = third.server.peer
    assert peer.principal == pki.id("alice")
    assert peer.delegation_chain == (pki.id("documents"), pki.id("storage"))
    assert peer.impersonation_level is ImpersonationLevel.IMPERSONATE
    # and no further: depth is exhausted
    client, _ = onward(
        pki,
        storage_creds,
        "archive",
        requested=DELEGATE,
        impersonation=ImpersonationLevel.DELEGATE,
    )
    with pytest.raises(DelegationPolicyError):
        client.step()


# -- no delegation-level context --------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "impersonation"),
    [
        (DELEGATE, ImpersonationLevel.IMPERSONATE),
        (ContextReq.default(), ImpersonationLevel.DELEGATE),
    ],
)
def test_impersonate_only_context_has_no_delegated_credentials(pki, requested, impersonation):
    pair = delegate(pki, requested=requested, impersonation=impersonation)
    assert pair.legs == 4
    assert not pair.server.attributes & ContextReq.DELEGATE
    assert pair.server.peer.impersonation_level is ImpersonationLevel.IMPERSONATE
    assert pair.server.peer.delegated_credentials is None
    assert not pair.server.peer.can_delegate


# -- early refusals on the delegate's side --------------------------------------------------------


def test_target_outside_the_policy_is_refused(pki):
    creds = delegate(pki, delegate_to=("storage",)).server.peer.delegated_credentials
    client, _ = onward(pki, creds, "archive")
    with pytest.raises(DelegationPolicyError):
        client.step()
    assert client.state is ContextState.FAILED


def test_default_policy_allows_no_target(pki):
    creds = delegate(pki, delegate_to=()).server.peer.delegated_credentials
    for target in ("storage", "documents", "archive"):
        client, _ = onward(pki, creds, target)
        with pytest.raises(DelegationPolicyError):
            client.step()


def test_delegated_credentials_need_a_target_name(pki):
    creds = delegate(pki).server.peer.delegated_credentials
    with pytest.raises(ValueError):
        initialize_security_context(creds, None)
    client = initialize_security_context(creds, ANY_SERVER)  # not a target the policy names
    with pytest.raises(DelegationPolicyError):
        client.step()


def test_depth_exhausted_is_refused(pki):
    creds = delegate(pki, depth=0).server.peer.delegated_credentials
    client, _ = onward(
        pki,
        creds,
        "storage",
        requested=DELEGATE,
        impersonation=ImpersonationLevel.DELEGATE,
        options={"delegate_to": [pki.id("archive")]},
    )
    with pytest.raises(DelegationPolicyError):
        client.step()
    handshake(*onward(pki, creds, "storage"))  # using them without delegating is fine


def test_second_hop_cannot_widen_the_targets(pki):
    creds = delegate(pki, delegate_to=("storage",)).server.peer.delegated_credentials
    client, _ = onward(
        pki,
        creds,
        "storage",
        requested=DELEGATE,
        impersonation=ImpersonationLevel.DELEGATE,
        options={"delegate_to": [pki.id("printer")]},
    )
    with pytest.raises(DelegationPolicyError):
        client.step()


def test_expired_proxy_is_refused(pki):
    """Proxy expiry is a DelegationPolicyError (the credentials exist; their policy is over)."""
    clock = Clock()
    pair = delegate(pki, lifetime=60, clock=clock)
    creds = pair.server.peer.delegated_credentials
    expires = creds.material.delegated.delegation.expires_at
    assert expires == pytest.approx(clock.now + 60, abs=1)
    clock.now += 30
    handshake(*onward(pki, creds, "storage", clock=clock))
    clock.now += 60
    client, _ = onward(pki, creds, "storage", clock=clock)
    with pytest.raises(DelegationPolicyError):
        client.step()


# -- the downstream trusts nothing the delegate claims ---------------------------------------


def test_downstream_refuses_a_proxy_signed_by_another_user(pki):
    alice, _ = leaf(pki, "alice")
    _, bob_key = leaf(pki, "bob")
    key = ed25519.Ed25519PrivateKey.generate()
    info = ProxyCertInfo(1, pki.id("documents"), frozenset({pki.id("storage")}))
    now = time.time()
    fake = issue_proxy(
        alice, bob_key, key.public_key(), info, now=now, lifetime=600, not_after_limit=now + 600
    )
    creds = forged(pki, "documents", [alice], [fake], key, targets=["storage"])
    client, server = onward(pki, creds, "storage")
    with pytest.raises(DelegationPolicyError):
        handshake(client, server)
    assert server.state is ContextState.FAILED


def test_downstream_refuses_a_principal_from_an_untrusted_authority(tmp_path, pki):
    other = make_authority(tmp_path)  # same trust domain name, another root
    path = other.ca.locate("alice")
    alice = x509.load_pem_x509_certificate(path.certificate_path.read_bytes())
    alice_key = serialization.load_pem_private_key(path.key_path.read_bytes(), None)
    key = ed25519.Ed25519PrivateKey.generate()
    info = ProxyCertInfo(1, pki.id("documents"), frozenset({pki.id("storage")}))
    now = time.time()
    proxy = issue_proxy(
        alice, alice_key, key.public_key(), info, now=now, lifetime=600, not_after_limit=now + 600
    )
    creds = forged(pki, "documents", [alice], [proxy], key, targets=["storage"])
    client, server = onward(pki, creds, "storage")
    with pytest.raises(UntrustedRootError):
        handshake(client, server)


def test_chain_replayed_without_the_proxy_key_fails(pki):
    real = delegate(pki).server.peer.delegated_credentials.material.delegated.delegation
    stolen_key = ed25519.Ed25519PrivateKey.generate()  # the chain, but not its key
    creds = forged(
        pki, "documents", real.principal_chain, real.proxies, stolen_key, targets=["storage"]
    )
    client, server = onward(pki, creds, "storage")
    with pytest.raises(DelegationPolicyError):
        handshake(client, server)
    assert server.state is ContextState.FAILED


def test_chain_presented_by_another_service_fails(pki):
    """storage saw alice's chain to documents; even with the key it is not the delegate."""
    material = delegate(pki, delegate_to=("storage", "archive")).server.peer
    real = material.delegated_credentials.material.delegated
    creds = forged(
        pki,
        "storage",
        real.delegation.principal_chain,
        real.delegation.proxies,
        real.key,
        targets=["archive"],
    )
    client, server = onward(pki, creds, "archive")
    with pytest.raises(DelegationPolicyError):
        handshake(client, server)


def test_downstream_enforces_the_targets(pki):
    real = delegate(pki, delegate_to=("storage",)).server.peer.delegated_credentials
    chain = real.material.delegated
    creds = forged(
        pki,
        "documents",
        chain.delegation.principal_chain,
        chain.delegation.proxies,
        chain.key,
        targets=["storage", "archive"],  # a lie
    )
    client, server = onward(pki, creds, "archive")
    with pytest.raises(DelegationPolicyError):
        handshake(client, server)


def test_downstream_enforces_the_depth(pki):
    """documents got depth 0 but signs a second proxy anyway: archive refuses the chain."""
    real = delegate(pki, delegate_to=("storage", "archive"), depth=0).server.peer
    first = real.delegated_credentials.material.delegated
    storage_key = ed25519.Ed25519PrivateKey.generate()
    info = ProxyCertInfo(0, pki.id("storage"), frozenset({pki.id("archive")}))
    now = time.time()
    second = issue_proxy(
        first.delegation.last,
        first.key,
        storage_key.public_key(),
        info,
        now=now,
        lifetime=600,
        not_after_limit=first.delegation.expires_at,
    )
    creds = forged(
        pki,
        "storage",
        first.delegation.principal_chain,
        (*first.delegation.proxies, second),
        storage_key,
        targets=["archive"],
    )
    client, server = onward(pki, creds, "archive")
    with pytest.raises(DelegationPolicyError):
        handshake(client, server)


def test_downstream_does_not_grant_delegation_the_chain_cannot_give(pki):
    real = delegate(pki, delegate_to=("storage", "archive"), depth=0).server.peer
    chain = real.delegated_credentials.material.delegated
    creds = forged(
        pki,
        "documents",
        chain.delegation.principal_chain,
        chain.delegation.proxies,
        chain.key,
        targets=["storage", "archive"],
        remaining=3,  # a lie: the proxy says 0
    )
    hop = handshake(
        *onward(
            pki,
            creds,
            "storage",
            requested=DELEGATE,
            impersonation=ImpersonationLevel.DELEGATE,
            options={"delegate_to": [pki.id("archive")]},
        )
    )
    assert hop.legs == 4
    assert not hop.server.attributes & ContextReq.DELEGATE
    assert hop.server.peer.delegated_credentials is None
    assert hop.server.peer.impersonation_level is ImpersonationLevel.IMPERSONATE


def test_downstream_enforces_proxy_expiry(pki):
    clock = Clock()
    real = delegate(pki, lifetime=60, clock=clock).server.peer.delegated_credentials
    chain = real.material.delegated
    creds = forged(
        pki,
        "documents",
        chain.delegation.principal_chain,
        chain.delegation.proxies,
        chain.key,
        targets=["storage"],
        expires=clock.now + 86400,  # a lie
    )
    clock.now += 60 + DEFAULT_CLOCK_SKEW + 1  # past the proxy's notAfter plus the clock skew
    client, server = onward(pki, creds, "storage", clock=clock)
    with pytest.raises(DelegationPolicyError):
        handshake(client, server)


# -- the server checks the proxy it is handed ------------------------------------------------------


def _patched_issue(monkeypatch, change):
    original = mechanism_module.issue_proxy

    def issue(signer, signer_key, public_key, info, **kwargs):
        signer, signer_key, public_key, info = change(signer, signer_key, public_key, info)
        return original(signer, signer_key, public_key, info, **kwargs)

    monkeypatch.setattr(mechanism_module, "issue_proxy", issue)


@pytest.mark.parametrize("fault", ["other-key", "other-signer", "other-delegate", "not-a-proxy"])
def test_server_verifies_the_proxy_it_receives(pki, monkeypatch, fault):
    _, bob_key = leaf(pki, "bob")

    def change(signer, signer_key, public_key, info):
        if fault == "other-key":
            public_key = ed25519.Ed25519PrivateKey.generate().public_key()
        elif fault == "other-signer":
            signer_key = bob_key
        elif fault == "other-delegate":
            info = ProxyCertInfo(info.path_len, pki.id("storage"), info.targets)
        return signer, signer_key, public_key, info

    if fault == "not-a-proxy":
        monkeypatch.setattr(
            mechanism_module,
            "issue_proxy",
            lambda *args, **kwargs: pki.credentials("bob").material.identity.certificate,
        )
    else:
        _patched_issue(monkeypatch, change)
    client = initialize_security_context(
        pki.credentials("alice"),
        pki.id("documents"),
        DELEGATE,
        impersonation=ImpersonationLevel.DELEGATE,
        options={"delegate_to": [pki.id("storage")]},
    )
    server = accept_security_context(pki.credentials("documents", CredentialUse.INBOUND))
    with pytest.raises(DelegationPolicyError):
        handshake(client, server)
    assert server.state is ContextState.FAILED
    assert client.state is ContextState.ESTABLISHED  # it sent its last leg and finished


def test_delegated_credentials_never_show_keys(pki):
    creds = delegate(pki).server.peer.delegated_credentials
    raw = creds.material.delegated.key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    shown = " ".join(
        [
            repr(creds),
            repr(creds.material),
            repr(creds.material.delegated),
            repr(creds.material.delegated.delegation),
        ]
    )
    assert raw.hex() not in shown and repr(raw)[2:-1] not in shown
    assert "documents" in repr(creds.material)


# -- malformed proxy certificates through the public verify_delegation (issue 10 item 11) ---


def _proxy_der(pki):
    cert, key = leaf(pki, "alice")
    now = time.time()
    info = ProxyCertInfo(path_len=0, delegate=pki.id("documents"), targets=frozenset())
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    proxy = issue_proxy(cert, key, public, info, now=now, lifetime=600, not_after_limit=now + 3600)
    return cert, proxy, proxy.public_bytes(serialization.Encoding.DER)


def _anchors(pki):
    return (x509.load_pem_x509_certificate(pki.trust_bundle.read_bytes()),)


def test_verify_delegation_with_an_unparsable_name_is_a_typed_error(pki):
    # Regression: a proxy whose subject does not parse raised a bare ValueError.
    cert, proxy, der = _proxy_der(pki)
    at = der.index(str(proxy.serial_number).encode())  # the CN (UTF8String) RFC 3820 adds
    broken = x509.load_der_x509_certificate(der[:at] + b"\xff" + der[at + 1 :])
    with pytest.raises(InvalidTokenError):
        verify_delegation((cert,), (broken,), _anchors(pki), time.time())


@pytest.fixture(scope="module")
def signed_proxy(pki):
    return _proxy_der(pki)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_verify_delegation_with_any_corrupted_proxy_is_a_typed_error(pki, signed_proxy, data):
    cert, _proxy, der = signed_proxy
    position = data.draw(st.integers(0, len(der) - 1), label="position")
    value = data.draw(st.integers(0, 255), label="value")
    assume(der[position] != value)
    try:
        corrupted = x509.load_der_x509_certificate(
            der[:position] + bytes([value]) + der[position + 1 :]
        )
    except (ValueError, x509.InvalidVersion):
        return  # cryptography refused it at load: it never reaches verify_delegation
    with pytest.raises(SecurityError):
        verify_delegation((cert,), (corrupted,), _anchors(pki), time.time())
