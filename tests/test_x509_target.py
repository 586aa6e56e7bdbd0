"""Whom an x509 client authenticates (issue 10 item 4): the server's identity is required
(``ANY_SERVER`` is the explicit opt-out), users are issued without serverAuth, both sides
check extendedKeyUsage, and target names are checked for syntax when a context or a channel
is made -- not by the first stub call."""

from __future__ import annotations

import datetime

import echo_pb2
import echo_pb2_grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers.echo import EchoServicer
from helpers.packages import PACKAGES, credentials_for
from helpers.pair import handshake
from helpers.pki import make_authority

import rpcsec
from rpcsec.grpc import SecurityInterceptor, secure_channel
from rpcsec.packages.x509._extensions import SIGNING_ONLY
from rpcsec.sspi import (
    ANY_SERVER,
    CertificateWrongUsageError,
    ContextState,
    CredentialUse,
    WrongPrincipalError,
    accept_security_context,
    acquire_credentials_handle,
    check_service_name,
    check_target_name,
    initialize_security_context,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_authority(tmp_path_factory.mktemp("target"))


def _usage(pki, name):
    cert = x509.load_pem_x509_certificate(pki.ca.locate(name).certificate_path.read_bytes())
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_users_are_issued_without_server_auth(pki):
    assert _usage(pki, "alice") == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _usage(pki, "documents") == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }


def test_x509_clients_need_a_target_name(pki):
    # Regression: target_name=None accepted any server of the trust domain.
    with pytest.raises(ValueError, match="ANY_SERVER"):
        initialize_security_context(pki.credentials("alice"), None)


def test_any_server_is_an_explicit_opt_out(pki):
    pair = handshake(
        initialize_security_context(pki.credentials("alice"), ANY_SERVER),
        accept_security_context(pki.credentials("storage", CredentialUse.INBOUND)),
    )
    assert pair.client.peer.principal == pki.id("storage")
    assert rpcsec.ANY_SERVER is ANY_SERVER and repr(ANY_SERVER) == "ANY_SERVER"


def test_a_user_cannot_pose_as_a_service(pki):
    """bob runs a server with his own (user) certificate: before, alice's client with no
    target accepted him; now his certificate lacks serverAuth, even for ANY_SERVER."""
    impostor = pki.credentials("bob", CredentialUse.INBOUND)
    client = initialize_security_context(pki.credentials("alice"), ANY_SERVER)
    with pytest.raises(CertificateWrongUsageError):
        handshake(client, accept_security_context(impostor))
    assert client.state is ContextState.FAILED
    client = initialize_security_context(pki.credentials("alice"), pki.id("documents"))
    with pytest.raises((WrongPrincipalError, CertificateWrongUsageError)):
        handshake(client, accept_security_context(impostor))


def _custom_identity(pki, tmp_path, name, usages):
    """A leaf of the test authority with the given extendedKeyUsage (None: no extension)."""
    root_cert = x509.load_pem_x509_certificate(pki.trust_bundle.read_bytes())
    root_key = serialization.load_pem_private_key((pki.path / "root.key").read_bytes(), None)
    key = ed25519.Ed25519PrivateKey.generate()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(SIGNING_ONLY, critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{pki.trust_domain}/svc/{name}")]
            ),
            critical=False,
        )
    )
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    cert = builder.sign(root_key, None)
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    def credentials(use):
        return acquire_credentials_handle(
            "x509", None, use, cert=str(cert_path), key=str(key_path), trust=str(pki.trust_bundle)
        )

    return f"spiffe://{pki.trust_domain}/svc/{name}", credentials


@pytest.mark.parametrize(
    "usages", [[ExtendedKeyUsageOID.SERVER_AUTH], None], ids=["server-only", "no-eku"]
)
def test_the_server_checks_the_clients_key_usage(pki, tmp_path, usages):
    _name, credentials = _custom_identity(pki, tmp_path, "serverish", usages)
    client = initialize_security_context(credentials(CredentialUse.OUTBOUND), pki.id("documents"))
    server = accept_security_context(pki.credentials("documents", CredentialUse.INBOUND))
    with pytest.raises(CertificateWrongUsageError):
        handshake(client, server)
    assert server.state is ContextState.FAILED


@pytest.mark.parametrize(
    "usages", [[ExtendedKeyUsageOID.CLIENT_AUTH], None], ids=["client-only", "no-eku"]
)
def test_the_client_checks_the_servers_key_usage(pki, tmp_path, usages):
    name, credentials = _custom_identity(pki, tmp_path, "clientish", usages)
    client = initialize_security_context(pki.credentials("alice"), name)
    with pytest.raises(CertificateWrongUsageError):
        handshake(client, accept_security_context(credentials(CredentialUse.INBOUND)))
    assert client.state is ContextState.FAILED


def test_any_extended_key_usage_is_not_a_tls_server(pki, tmp_path):
    # anyExtendedKeyUsage is not serverAuth: OpenSSL refuses it for TLS, and so do we.
    name, credentials = _custom_identity(
        pki, tmp_path, "anything", [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]
    )
    client = initialize_security_context(pki.credentials("alice"), name)
    with pytest.raises(CertificateWrongUsageError):
        handshake(client, accept_security_context(credentials(CredentialUse.INBOUND)))


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("documents", ValueError),
        ("https://rpcsec.test/svc/documents", ValueError),
        ("spiffe://rpcsec.test", ValueError),
        ("spiffe://rpcsec.test/svc/../x", ValueError),
        (b"spiffe://rpcsec.test/svc/documents", TypeError),
        (42, TypeError),
    ],
)
def test_malformed_x509_targets_fail_at_construction(pki, target, error):
    alice = pki.credentials("alice")
    with pytest.raises(error):
        check_target_name(alice, target)
    with pytest.raises(error):
        initialize_security_context(alice, target)


@pytest.mark.parametrize(
    "target",
    ["storage@localhost", "storage/localhost", "storage/localhost@KRBTEST.COM", "HTTP/a/b@R"],
)
def test_service_names_that_parse(target):
    assert check_service_name(target) == target


@pytest.mark.parametrize(
    "target",
    [
        *("", "storage", "@host", "svc@", "a@b@c", "svc/", "/host", "svc/host@"),
        *("bad\x00name@host", "svc/host@R@S", "svc@host name", "x" * 1025 + "@h"),
    ],
)
def test_service_names_that_do_not(target):
    with pytest.raises(ValueError):
        check_service_name(target)


@pytest.fixture(params=PACKAGES)
def package_creds(request, tmp_path):
    return credentials_for(request.param, tmp_path, request)


def test_every_package_checks_its_target_names_at_construction(package_creds):
    client_creds, _server_creds, target = package_creds
    package = client_creds.package_name
    check_target_name(client_creds, target)
    with pytest.raises(ValueError):
        initialize_security_context(client_creds, "not a name")
    with pytest.raises(TypeError):
        initialize_security_context(client_creds, 7)  # type: ignore[arg-type]
    if package == "x509":
        return
    with pytest.raises(ValueError):
        initialize_security_context(client_creds, ANY_SERVER)  # only x509 can honour it
    if package == "ntlm":
        # NTLM never proves the server: a missing target loses nothing it could check.
        initialize_security_context(client_creds, None)
    else:
        with pytest.raises(ValueError):
            initialize_security_context(client_creds, None)


def test_secure_channel_checks_the_target_name_at_construction(pki):
    alice = pki.credentials("alice")
    for bad, error in ((None, ValueError), ("documents", ValueError), (5, TypeError)):
        with pytest.raises(error):
            secure_channel("127.0.0.1:1", alice, target_name=bad)  # no server needed


def test_secure_channel_to_any_server_and_to_an_impostor(pki, serve):
    echo = EchoServicer()
    genuine = serve(
        [SecurityInterceptor(pki.credentials("storage", CredentialUse.INBOUND))], [echo]
    )
    with secure_channel(genuine, pki.credentials("alice"), target_name=ANY_SERVER) as channel:
        said = echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="hi"))
        assert said.principal == pki.id("alice")
    impostor_echo = EchoServicer()
    impostor = serve(
        [SecurityInterceptor(pki.credentials("bob", CredentialUse.INBOUND))], [impostor_echo]
    )
    with secure_channel(impostor, pki.credentials("alice"), target_name=ANY_SERVER) as channel:
        with pytest.raises(CertificateWrongUsageError):
            echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="secret"))
    assert impostor_echo.calls == 0


async def test_aio_secure_channel_checks_the_target_name_at_construction(pki):
    from rpcsec.grpc import aio

    alice = pki.credentials("alice")
    for bad, error in ((None, ValueError), ("spiffe://", ValueError), (b"x", TypeError)):
        with pytest.raises(error):
            aio.secure_channel("127.0.0.1:1", alice, target_name=bad)
    channel = aio.secure_channel("127.0.0.1:1", alice, target_name=pki.id("documents"))
    await channel.close()


def test_a_delegation_chain_must_speak_for_a_client(pki, tmp_path):
    """The principal of a proxy chain is a client: a leaf without clientAuth cannot be one."""
    from rpcsec.packages.x509 import ProxyCertInfo, issue_proxy, verify_delegation

    _name, _credentials = _custom_identity(
        pki, tmp_path, "server-only", [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    cert = x509.load_pem_x509_certificate((tmp_path / "server-only.crt").read_bytes())
    key = serialization.load_pem_private_key((tmp_path / "server-only.key").read_bytes(), None)
    now = datetime.datetime.now(datetime.UTC).timestamp()
    info = ProxyCertInfo(path_len=0, delegate=pki.id("documents"), targets=frozenset())
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    proxy = issue_proxy(cert, key, public, info, now=now, lifetime=600, not_after_limit=now + 3600)
    anchors = (x509.load_pem_x509_certificate(pki.trust_bundle.read_bytes()),)
    with pytest.raises(CertificateWrongUsageError):
        verify_delegation((cert,), (proxy,), anchors, now)
