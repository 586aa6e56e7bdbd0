"""Identities for the benchmark: one rpcsec x509 authority serves every configuration.

rpcsec x509 uses the authority's Ed25519 SVIDs as they are. The gRPC TLS baseline needs two
things those leaves do not have, so this module issues two extra leaves under the *same root*
with ``cryptography`` and the authority's root key:

* a DNS SAN ``localhost`` (gRPC checks the host name; rpcsec leaves carry only the SPIFFE URI);
* an ECDSA P-256 key: the BoringSSL inside grpcio refuses Ed25519 *leaf* keys in the TLS
  handshake (``NO_COMMON_SIGNATURE_ALGORITHMS``: gRPC does not enable the Ed25519 signature
  algorithm), although it verifies the Ed25519 root's signature on the leaf without trouble.

``Authority.issue`` only writes Ed25519 SVIDs, so the benchmark signs these itself.
"""

from __future__ import annotations

import datetime
import pathlib
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rpcsec.packages.x509 import Authority

__all__ = ["BenchPki", "TlsLeaf", "make_pki"]

TRUST_DOMAIN = "bench.rpcsec.test"
CLIENT = "alice"
SERVICE = "echo"


@dataclass(frozen=True)
class TlsLeaf:
    """PEM key and certificate for ``grpc.ssl_*_credentials``."""

    key: bytes = field(repr=False)
    certificate: bytes = field(repr=False)


@dataclass(frozen=True)
class BenchPki:
    authority: Authority
    root_pem: bytes
    tls_server: TlsLeaf
    tls_client: TlsLeaf

    @property
    def target(self) -> str:
        return self.authority.spiffe_id(SERVICE, service=True)


def _tls_leaf(authority: Authority, name: str, kind: str) -> TlsLeaf:
    root_key = serialization.load_pem_private_key(
        (authority.directory / "root.key").read_bytes(), password=None
    )
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} (gRPC TLS)")]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}/{kind}/{name}"),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(root_key, None)  # type: ignore[arg-type]
    )
    return TlsLeaf(
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        certificate=certificate.public_bytes(serialization.Encoding.PEM),
    )


def make_pki(directory: pathlib.Path) -> BenchPki:
    authority = Authority.init(directory / "authority", TRUST_DOMAIN)
    authority.issue(CLIENT, groups=("staff",))
    authority.issue(SERVICE, service=True)
    return BenchPki(
        authority=authority,
        root_pem=authority.certificate.public_bytes(serialization.Encoding.PEM),
        tls_server=_tls_leaf(authority, SERVICE, "svc"),
        tls_client=_tls_leaf(authority, CLIENT, "user"),
    )
