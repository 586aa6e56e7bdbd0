"""x509 package: the TLS 1.3 handshake, negotiation of attributes, and every refusal of it."""

from __future__ import annotations

import base64
import datetime
import time

import pytest
from cryptography.hazmat.primitives import serialization
from helpers.pair import handshake
from helpers.pki import make_authority

from rpcsec.packages.x509 import X509Credential
from rpcsec.sspi import (
    ANY_SERVER,
    CertificateExpiredError,
    ContextAttribute,
    ContextExpiredError,
    ContextReq,
    ContextState,
    CredentialUse,
    ImpersonationLevel,
    InsufficientAttributesError,
    InvalidStateError,
    InvalidTokenError,
    NoCredentialsError,
    PackageCapability,
    SecStatus,
    UntrustedRootError,
    WrongPrincipalError,
    accept_security_context,
    acquire_credentials_handle,
    get_package,
    initialize_security_context,
    query_security_package_info,
)

UTC = datetime.UTC


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def alice(pki):
    return pki.credentials("alice")


@pytest.fixture(scope="module")
def documents(pki):
    return pki.credentials("documents", CredentialUse.INBOUND)


def pair(pki, client, server, target="documents", requested=None, server_requested=None, **kw):
    server_kw = {k[7:]: kw.pop(k) for k in list(kw) if k.startswith("server_")}
    ctx = initialize_security_context(client, pki.id(target) if target else None, requested, **kw)
    srv = accept_security_context(server, server_requested, **server_kw)
    return ctx, srv


def test_package_is_registered_with_its_capabilities():
    info = query_security_package_info("x509")
    assert info.available
    for capability in (
        PackageCapability.INTEGRITY,
        PackageCapability.PRIVACY,
        PackageCapability.CONNECTION,
        PackageCapability.DATAGRAM,
        PackageCapability.STREAM,
        PackageCapability.MUTUAL_AUTH,
        PackageCapability.IMPERSONATION,
        PackageCapability.DELEGATION,
    ):
        assert info.capabilities & capability


def test_mutual_handshake_in_four_tokens(pki, alice, documents):
    result = handshake(*pair(pki, alice, documents))
    assert result.legs == 4  # NewSessionTicket rides in the server's last leg
    client, server = result.client, result.server
    assert client.state is ContextState.ESTABLISHED and server.state is ContextState.ESTABLISHED
    peer = server.peer
    assert peer.principal == "spiffe://rpcsec.test/user/alice"
    assert peer.package == "x509"
    assert peer.groups == frozenset({"staff", "editors"})
    assert peer.impersonation_level is ImpersonationLevel.IMPERSONATE
    assert peer.delegation_chain == ()
    assert peer.delegated_credentials is None
    assert peer.expires_at is not None and peer.expires_at > time.time()
    assert client.peer.principal == "spiffe://rpcsec.test/svc/documents"
    assert client.attributes & ContextReq.MUTUAL_AUTH
    assert server.attributes == client.attributes
    names = server.query_attributes(ContextAttribute.NAMES)
    assert names.local == pki.id("documents") and names.peer == pki.id("alice")
    native = server.query_attributes(ContextAttribute.NATIVE_NAMES)
    assert "CN=alice" in native.peer
    assert client.query_attributes(ContextAttribute.NATIVE_NAMES).peer.startswith("CN=documents")


def test_session_key_is_shared_and_not_a_direction_secret(pki, alice, documents):
    result = handshake(*pair(pki, alice, documents))
    client_key = result.client.query_attributes(ContextAttribute.SESSION_KEY)
    server_key = result.server.query_attributes(ContextAttribute.SESSION_KEY)
    assert client_key == server_key and len(client_key.key) == 32
    outbound, inbound = result.client._protector.secrets()
    assert client_key.key not in (outbound, inbound)
    other = handshake(*pair(pki, alice, documents))
    assert other.client.query_attributes(ContextAttribute.SESSION_KEY) != client_key


def test_context_expiry_is_the_earliest_certificate(pki, alice, documents):
    result = handshake(*pair(pki, alice, documents))
    certs = [
        alice.material.identity.certificate,
        documents.material.identity.certificate,
        pki.ca.certificate,
    ]
    earliest = min(c.not_valid_after_utc.timestamp() for c in certs)
    assert result.client.expires_at == pytest.approx(earliest)
    assert result.server.expires_at == pytest.approx(earliest)
    lifespan = result.server.query_attributes(ContextAttribute.LIFESPAN)
    assert lifespan.expiry == pytest.approx(earliest)


@pytest.mark.parametrize(
    ("requested", "impersonation", "granted_level", "delegate"),
    [
        (ContextReq.default(), ImpersonationLevel.IMPERSONATE, ImpersonationLevel.IMPERSONATE, 0),
        (ContextReq.default(), ImpersonationLevel.IDENTIFY, ImpersonationLevel.IDENTIFY, 0),
        (
            ContextReq.default() | ContextReq.IDENTIFY,
            ImpersonationLevel.DELEGATE,
            ImpersonationLevel.IDENTIFY,
            0,
        ),
        (
            ContextReq.default() | ContextReq.DELEGATE,
            ImpersonationLevel.IMPERSONATE,
            ImpersonationLevel.IMPERSONATE,
            0,
        ),
        (ContextReq.default(), ImpersonationLevel.DELEGATE, ImpersonationLevel.IMPERSONATE, 0),
        (
            ContextReq.default() | ContextReq.DELEGATE,
            ImpersonationLevel.DELEGATE,
            ImpersonationLevel.DELEGATE,
            1,
        ),
    ],
)
def test_granted_attributes_follow_the_negotiation(
    pki, alice, documents, requested, impersonation, granted_level, delegate
):
    result = handshake(
        *pair(pki, alice, documents, requested=requested, impersonation=impersonation)
    )
    server, client = result.server, result.client
    assert server.impersonation_level is granted_level
    assert client.impersonation_level is granted_level
    assert server.peer.impersonation_level is granted_level
    assert bool(server.attributes & ContextReq.DELEGATE) is bool(delegate)
    assert bool(client.attributes & ContextReq.DELEGATE) is bool(delegate)
    assert (server.peer.delegated_credentials is not None) is bool(delegate)
    assert result.legs == 4 + delegate


def test_only_requested_attributes_are_granted(pki, alice, documents):
    requested = ContextReq.INTEGRITY | ContextReq.CONNECTION
    result = handshake(*pair(pki, alice, documents, requested=requested))
    granted = result.client.attributes
    assert not granted & ContextReq.MUTUAL_AUTH
    assert not granted & ContextReq.CONFIDENTIALITY
    assert not granted & ContextReq.REPLAY_DETECT
    assert granted & ContextReq.INTEGRITY
    assert result.client.query_attributes(ContextAttribute.FLAGS).requested == requested


def test_server_can_refuse_delegation(pki, alice, documents):
    requested = ContextReq.default() | ContextReq.DELEGATE
    client, server = pair(
        pki,
        alice,
        documents,
        requested=requested,
        impersonation=ImpersonationLevel.DELEGATE,
        server_options={"accept_delegation": False},
    )
    result = handshake(client, server)
    assert not result.server.attributes & ContextReq.DELEGATE
    assert result.server.peer.impersonation_level is ImpersonationLevel.IMPERSONATE
    assert result.server.peer.delegated_credentials is None
    assert result.legs == 4


def test_server_requirement_the_client_did_not_offer_fails(pki, alice, documents):
    client, server = pair(
        pki,
        alice,
        documents,
        requested=ContextReq.default(),
        server_requested=ContextReq.CONFIDENTIALITY,
    )
    with pytest.raises(InsufficientAttributesError):
        handshake(client, server)
    assert server.state is ContextState.FAILED


def test_anonymous_level_hides_the_client(pki, alice, documents):
    result = handshake(*pair(pki, alice, documents, impersonation=ImpersonationLevel.ANONYMOUS))
    assert result.server.peer.is_anonymous
    assert result.server.peer.principal == "anonymous"
    assert result.server.query_attributes(ContextAttribute.NATIVE_NAMES).peer == ""


def test_wrong_target_is_refused_by_the_client(pki, alice, documents):
    client, server = pair(pki, alice, documents, target="storage")
    first = client.step()
    second = server.step(first.token)
    with pytest.raises(WrongPrincipalError):
        client.step(second.token)
    assert client.state is ContextState.FAILED
    with pytest.raises(InvalidStateError):  # sticky
        client.step(second.token)


def test_no_target_name_is_refused_any_server_is_explicit(pki, alice, documents):
    with pytest.raises(ValueError):
        pair(pki, alice, documents, target=None)
    client = initialize_security_context(alice, ANY_SERVER)
    result = handshake(client, accept_security_context(documents))
    assert result.client.peer.principal == pki.id("documents")


def test_target_must_be_a_spiffe_id(pki, alice, documents):
    with pytest.raises(ValueError):  # the caller's mistake, at once, not the peer's
        initialize_security_context(alice, "documents")


def test_untrusted_client_authority(tmp_path, pki, documents):
    other = make_authority(tmp_path, trust_domain="rpcsec.test")  # same name, other root
    impostor = other.ca.locate("alice")
    creds = acquire_credentials_handle(  # trusts the real root, so only the server can refuse
        "x509", cert=impostor.certificate_path, key=impostor.key_path, trust=pki.trust_bundle
    )
    client, server = pair(pki, creds, documents)
    with pytest.raises(UntrustedRootError):
        handshake(client, server)
    assert server.state is ContextState.FAILED


def test_untrusted_server_authority(tmp_path, pki, alice):
    other = make_authority(tmp_path, trust_domain="evil.test")
    client, server = pair(pki, alice, other.credentials("documents", CredentialUse.INBOUND))
    with pytest.raises(UntrustedRootError):
        handshake(client, server)
    assert client.state is ContextState.FAILED


def test_trust_domain_of_the_anchor_binds_the_principal(tmp_path, pki, documents):
    """A root trusted for rpcsec.test cannot vouch for another trust domain's IDs."""
    other = make_authority(tmp_path, trust_domain="other.test")
    mixed = other.ca.directory / "mixed.pem"
    mixed.write_bytes(pki.trust_bundle.read_bytes() + other.trust_bundle.read_bytes())
    alice_other = acquire_credentials_handle(
        "x509",
        None,
        CredentialUse.OUTBOUND,
        cert=str(other.ca.locate("alice").certificate_path),
        key=str(other.ca.locate("alice").key_path),
        trust=str(mixed),
    )
    server = acquire_credentials_handle(
        "x509",
        None,
        CredentialUse.INBOUND,
        cert=str(pki.ca.locate("documents").certificate_path),
        key=str(pki.ca.locate("documents").key_path),
        trust=str(mixed),
    )
    result = handshake(*pair(pki, alice_other, server))  # both anchors trusted: fine
    assert result.server.peer.principal == "spiffe://other.test/user/alice"
    # An SVID claiming rpcsec.test issued under other.test's root is refused.
    now = datetime.datetime.now(UTC)
    other.ca.trust_domain = "rpcsec.test"  # make the other root issue rpcsec.test names
    other.ca.issue("mallory", not_before=now - datetime.timedelta(minutes=1))
    mallory = acquire_credentials_handle(
        "x509",
        None,
        CredentialUse.OUTBOUND,
        cert=str(other.ca.directory / "user" / "mallory.crt"),
        key=str(other.ca.directory / "user" / "mallory.key"),
        trust=str(mixed),
    )
    client, srv = pair(pki, mallory, server)
    with pytest.raises(UntrustedRootError):
        handshake(client, srv)


def _expired(pki, name, service=False):
    now = datetime.datetime.now(UTC)
    return pki.issue(
        name,
        service=service,
        not_before=now - datetime.timedelta(days=2),
        not_after=now - datetime.timedelta(days=1),
    )


def test_expired_client_certificate(pki, documents):
    _expired(pki, "old-alice")
    client, server = pair(pki, pki.credentials("old-alice"), documents)
    with pytest.raises(CertificateExpiredError):
        handshake(client, server)
    assert server.state is ContextState.FAILED


def test_expired_server_certificate(pki, alice):
    _expired(pki, "old-documents", service=True)
    server_creds = pki.credentials("old-documents", CredentialUse.INBOUND)
    client, server = pair(pki, alice, server_creds, target="old-documents")
    with pytest.raises(CertificateExpiredError):
        handshake(client, server)
    assert client.state is ContextState.FAILED


def test_injected_clock_drives_certificate_validity(pki, alice, documents):
    """OpenSSL verifies at the context's clock, not the system time."""
    future = Clock(time.time() + 400 * 86400)  # past the leaves' 365 days
    client, server = pair(pki, alice, documents, server_clock=future)
    with pytest.raises(CertificateExpiredError):
        handshake(client, server)
    past = Clock(time.time() - 86400)  # before the leaves were issued
    client, server = pair(pki, alice, documents, clock=past)
    with pytest.raises(CertificateExpiredError):
        handshake(client, server)


def test_context_expires_when_a_certificate_does(pki, alice, documents):
    clock = Clock()
    result = handshake(*pair(pki, alice, documents, clock=clock, server_clock=clock))
    token = result.client.sign(b"ok")
    result.server.verify(b"ok", token)
    clock.now = result.server.expires_at + 1
    with pytest.raises(ContextExpiredError):
        result.client.sign(b"late")
    with pytest.raises(ContextExpiredError):
        result.server.verify(b"ok", token)


def test_failure_is_sticky_in_the_mechanism(pki, alice):
    package = get_package("x509")
    mechanism = package.client_mechanism(
        alice.material,
        target_name=pki.id("documents"),
        requested=ContextReq.default(),
        impersonation=ImpersonationLevel.IMPERSONATE,
        options={},
        clock=time.time,
    )
    assert mechanism.step(None)
    with pytest.raises(InvalidTokenError):
        mechanism.step(b"\x16\x03\x03\x00\x05hello")
    with pytest.raises(InvalidTokenError):
        mechanism.step(b"anything")
    assert not mechanism.complete and mechanism.result is None


def test_client_must_speak_first(pki, alice):
    client = initialize_security_context(alice, pki.id("documents"))
    with pytest.raises(InvalidTokenError):
        client.step(b"a token before the hello")


def test_server_step_result_statuses(pki, alice, documents):
    client, server = pair(pki, alice, documents)
    first = client.step()
    assert first.status is SecStatus.CONTINUE_NEEDED and first.token
    second = server.step(first.token)
    assert second.status is SecStatus.CONTINUE_NEEDED and second.token
    third = client.step(second.token)
    assert third.status is SecStatus.CONTINUE_NEEDED and third.token
    fourth = server.step(third.token)
    assert fourth.status is SecStatus.OK and fourth.token  # grant + ticket
    fifth = client.step(fourth.token)
    assert fifth.status is SecStatus.OK and fifth.token is None


def test_oversized_token_is_refused(pki, alice, documents):
    client, server = pair(pki, alice, documents)
    client.step()
    with pytest.raises(InvalidTokenError):
        server.step(b"\x16" * (get_package("x509").max_token + 1))


@pytest.mark.parametrize(
    "client_options",
    [
        {"delegate_to": "spiffe://rpcsec.test/svc/storage"},
        {"delegate_to": ["not a spiffe id"]},
        {"delegation_depth": -1},
        {"delegation_depth": 99},
        {"delegation_depth": True},
        {"proxy_lifetime": 0},
        {"unknown": 1},
    ],
)
def test_bad_client_options_are_caller_errors(pki, alice, client_options):
    with pytest.raises((TypeError, ValueError)):
        get_package("x509").client_mechanism(
            alice.material,
            target_name=pki.id("documents"),
            requested=ContextReq.default(),
            impersonation=ImpersonationLevel.DELEGATE,
            options=client_options,
            clock=time.time,
        )


@pytest.mark.parametrize("server_options", [{"accept_delegation": "yes"}, {"unknown": 1}])
def test_bad_server_options_are_caller_errors(documents, server_options):
    with pytest.raises((TypeError, ValueError)):
        get_package("x509").server_mechanism(
            documents.material,
            requested=ContextReq.NONE,
            options=server_options,
            clock=time.time,
        )


# -- credentials ----------------------------------------------------------------------------


def test_credentials_principal_is_the_spiffe_id(pki):
    creds = pki.credentials("alice")
    assert creds.principal == "spiffe://rpcsec.test/user/alice"
    assert creds.material.principal == creds.principal
    assert isinstance(creds.material, X509Credential)


def test_credentials_from_paths_and_from_pem_bytes(pki):
    issued = pki.ca.locate("bob")
    by_path = acquire_credentials_handle(
        "x509",
        "spiffe://rpcsec.test/user/bob",
        cert=issued.certificate_path,
        key=str(issued.key_path),
        trust=pki.trust_bundle,
    )
    by_bytes = acquire_credentials_handle(
        "x509",
        cert=issued.certificate_path.read_bytes(),
        key=issued.key_path.read_bytes(),
        trust=pki.trust_bundle.read_bytes(),
    )
    assert by_path.principal == by_bytes.principal == pki.id("bob")
    assert by_bytes.material.identity.groups == frozenset({"staff"})


def test_credentials_by_short_principal_and_kind_prefix(pki):
    assert pki.credentials("svc/storage").principal == pki.id("storage")
    short = acquire_credentials_handle("x509", "alice", authority_dir=str(pki.path))
    assert short.principal == pki.id("alice")
    full = acquire_credentials_handle("x509", pki.id("alice"), authority_dir=str(pki.path))
    assert full.principal == pki.id("alice")


def test_credential_failures(tmp_path, pki):
    alice, bob = pki.ca.locate("alice"), pki.ca.locate("bob")
    trust = pki.trust_bundle
    with pytest.raises(NoCredentialsError):  # key of someone else
        acquire_credentials_handle(
            "x509", cert=alice.certificate_path, key=bob.key_path, trust=trust
        )
    with pytest.raises(NoCredentialsError):  # not the principal asked for
        acquire_credentials_handle(
            "x509", pki.id("bob"), cert=alice.certificate_path, key=alice.key_path, trust=trust
        )
    with pytest.raises(NoCredentialsError):  # missing file
        acquire_credentials_handle(
            "x509", cert=tmp_path / "nope.crt", key=alice.key_path, trust=trust
        )
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    with pytest.raises(NoCredentialsError):  # not a certificate
        acquire_credentials_handle(
            "x509", cert=tmp_path / "junk.pem", key=alice.key_path, trust=trust
        )
    with pytest.raises(NoCredentialsError):  # a CA is not an SVID
        acquire_credentials_handle(
            "x509", cert=pki.trust_bundle, key=pki.path / "root.key", trust=trust
        )
    with pytest.raises(NoCredentialsError):
        acquire_credentials_handle("x509", authority_dir=str(pki.path), name="carol")
    with pytest.raises(NoCredentialsError):
        acquire_credentials_handle("x509", authority_dir=str(tmp_path), name="alice")
    with pytest.raises(ValueError):
        acquire_credentials_handle("x509", cert=alice.certificate_path)  # no key, no trust
    with pytest.raises(ValueError):
        acquire_credentials_handle("x509", authority_dir=str(pki.path), name="alice", pin=1)
    with pytest.raises(TypeError):
        acquire_credentials_handle("x509", cert=42, key=alice.key_path, trust=trust)


def test_ambiguous_short_name_needs_a_kind(pki):
    pki.issue("printer")
    pki.issue("printer", service=True)
    with pytest.raises(NoCredentialsError):
        pki.credentials("printer")
    assert pki.credentials("svc/printer").principal.endswith("/svc/printer")


def test_keys_never_appear_in_repr(pki, alice, documents):
    identity = alice.material.identity
    raw = identity.key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    pem = pki.ca.locate("alice").key_path.read_bytes()
    result = handshake(*pair(pki, alice, documents))
    secrets = [raw.hex(), base64.b64encode(raw).decode(), repr(raw)[2:-1], pem.decode()[30:60]]
    for c2s in result.client._protector.secrets():
        secrets += [c2s.hex(), repr(c2s)[2:-1]]
    shown = " ".join(
        [
            repr(alice),
            str(alice),
            repr(alice.material),
            repr(identity),
            repr(alice.material.trust),
            repr(result.client),
            repr(result.server),
            repr(result.server.peer),
            repr(result.client._protector),
            repr(pki.ca),
        ]
    )
    for secret in secrets:
        assert secret not in shown


def test_certificate_that_is_not_an_svid_is_refused(pki, documents):
    """A CA-signed leaf with two URI SANs is not an X509-SVID (X509-SVID §2): no principal."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from rpcsec.packages.x509 import TrustBundle, X509Identity
    from rpcsec.sspi import Credentials

    root_key = serialization.load_pem_private_key((pki.path / "root.key").read_bytes(), None)
    key = ed25519.Ed25519PrivateKey.generate()
    now = datetime.datetime.now(UTC)
    uris = [pki.id("alice"), "https://example.test/alice"]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=two-names"))
        .issuer_name(pki.ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
        .sign(root_key, None)
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(NoCredentialsError):
        acquire_credentials_handle(
            "x509", cert=cert.public_bytes(pem), key=key_pem, trust=pki.trust_bundle
        )
    identity = X509Identity(spiffe_id=pki.id("alice"), certificate=cert, key=key)
    material = X509Credential(identity, TrustBundle((pki.ca.certificate,)))
    creds = Credentials(get_package("x509"), pki.id("alice"), CredentialUse.OUTBOUND, material)
    client, server = pair(pki, creds, documents)
    with pytest.raises(UntrustedRootError):
        handshake(client, server)
    assert server.state is ContextState.FAILED
