"""The certificate extensions the x509 package writes and reads, with their OIDs.

* **Groups** (ours, non-critical): ``Groups ::= SEQUENCE OF UTF8String`` under
  ``GROUPS_OID``, a UUID-based OID (ITU-T X.667 / RFC 4122 §"2.25" arc) so it collides with
  nobody's. Non-critical, so other verifiers ignore it.
* **ProxyCertInfo** (RFC 3820 §3.8, ``id-pe-proxyCertInfo`` 1.3.6.1.5.5.7.1.14, critical)::

      ProxyCertInfo ::= SEQUENCE {
          pCPathLenConstraint  INTEGER (0..MAX) OPTIONAL,
          proxyPolicy          ProxyPolicy }
      ProxyPolicy ::= SEQUENCE {
          policyLanguage       OBJECT IDENTIFIER,
          policy               OCTET STRING OPTIONAL }

  with our policy language ``PROXY_POLICY_OID`` (RFC 3820 §3.8.2 lets a policy language be any
  OID its verifiers understand) whose ``policy`` octets are the DER of::

      RpcsecDelegationPolicy ::= SEQUENCE {
          delegate  UTF8String,              -- SPIFFE ID of the service holding the proxy key
          targets   SEQUENCE OF UTF8String } -- SPIFFE IDs it may call as the principal

  A verifier that does not know our language must reject the chain (RFC 3820 §4.1.3 step
  (f)); ours rejects any other language.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from rpcsec.sspi._errors import InvalidTokenError

from ._der import (
    INTEGER,
    OBJECT_IDENTIFIER,
    OCTET_STRING,
    SEQUENCE,
    UTF8_STRING,
    DerError,
    decode_integer,
    decode_oid,
    decode_utf8,
    encode_integer,
    encode_oid,
    encode_tlv,
    encode_utf8,
    expect,
    read_all,
)
from ._spiffe import parse_spiffe_id

__all__ = [
    "SERVICE_USAGE",
    "SIGNING_ONLY",
    "USER_USAGE",
    "GROUPS_OID",
    "MAX_GROUPS",
    "MAX_TARGETS",
    "PROXY_CERT_INFO_OID",
    "PROXY_POLICY_OID",
    "ProxyCertInfo",
    "certificate_allows",
    "certificate_groups",
    "decode_groups",
    "decode_proxy_cert_info",
    "encode_groups",
    "encode_proxy_cert_info",
    "groups_extension",
    "proxy_cert_info_extension",
    "validate_group",
]

GROUPS_OID = x509.ObjectIdentifier("2.25.132480594516512715744558039881909595845")
PROXY_POLICY_OID = x509.ObjectIdentifier("2.25.60419790568215671982316443780111443101")
PROXY_CERT_INFO_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")

MAX_GROUPS = 64
MAX_TARGETS = 64
_MAX_GROUP_LENGTH = 128


def validate_group(name: str) -> str:
    """A group name: 1-128 printable characters without whitespace at the ends."""
    if not isinstance(name, str):
        raise TypeError("group names must be strings")
    if not name or len(name) > _MAX_GROUP_LENGTH or name.strip() != name:
        raise ValueError(f"invalid group name {name!r}")
    if any(not ch.isprintable() for ch in name):
        raise ValueError(f"invalid group name {name!r}: control characters")
    return name


def encode_groups(groups: frozenset[str] | list[str] | tuple[str, ...]) -> bytes:
    names = sorted({validate_group(g) for g in groups})
    if len(names) > MAX_GROUPS:
        raise ValueError(f"at most {MAX_GROUPS} groups")
    return encode_tlv(SEQUENCE, b"".join(encode_utf8(name) for name in names))


def decode_groups(data: bytes) -> frozenset[str]:
    outer = read_all(data)
    if len(outer) != 1:
        raise DerError("groups extension is not one SEQUENCE")
    items = read_all(expect(outer, 0, SEQUENCE))
    if len(items) > MAX_GROUPS:
        raise DerError("groups extension lists too many groups")
    groups = set()
    for index in range(len(items)):
        name = decode_utf8(expect(items, index, UTF8_STRING))
        try:
            groups.add(validate_group(name))
        except ValueError as exc:
            raise DerError("groups extension holds an invalid name") from exc
    return frozenset(groups)


def groups_extension(
    groups: frozenset[str] | list[str] | tuple[str, ...],
) -> x509.UnrecognizedExtension:
    """The extension value to add (non-critical)."""
    return x509.UnrecognizedExtension(GROUPS_OID, encode_groups(groups))


def certificate_groups(cert: x509.Certificate) -> frozenset[str]:
    """The groups a (CA-signed) leaf certificate names; none if it has no groups extension."""
    try:
        ext = cert.extensions.get_extension_for_oid(GROUPS_OID)
    except x509.ExtensionNotFound:
        return frozenset()
    except ValueError as exc:
        raise InvalidTokenError("certificate extensions are malformed") from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise InvalidTokenError("groups extension is not understood")
    return decode_groups(value.value)


@dataclass(frozen=True, slots=True)
class ProxyCertInfo:
    """The decoded ProxyCertInfo of one proxy certificate, with our policy.

    ``path_len`` is pCPathLenConstraint: how many further proxies may follow this one (RFC
    3820 §3.8.1); ``None`` means unlimited (we always write one).
    """

    path_len: int | None
    delegate: str
    targets: frozenset[str]


def encode_proxy_cert_info(info: ProxyCertInfo) -> bytes:
    parse_spiffe_id(info.delegate)
    if len(info.targets) > MAX_TARGETS:
        raise ValueError(f"at most {MAX_TARGETS} delegation targets")
    for target in info.targets:
        parse_spiffe_id(target)
    policy = encode_tlv(
        SEQUENCE,
        encode_utf8(info.delegate)
        + encode_tlv(SEQUENCE, b"".join(encode_utf8(t) for t in sorted(info.targets))),
    )
    proxy_policy = encode_tlv(
        SEQUENCE, encode_oid(PROXY_POLICY_OID.dotted_string) + encode_tlv(OCTET_STRING, policy)
    )
    path_len = b"" if info.path_len is None else encode_integer(info.path_len)
    return encode_tlv(SEQUENCE, path_len + proxy_policy)


def decode_proxy_cert_info(data: bytes) -> ProxyCertInfo:
    """Parse ProxyCertInfo with our policy; ``DerError`` for anything else."""
    outer = read_all(data)
    if len(outer) != 1:
        raise DerError("ProxyCertInfo is not one SEQUENCE")
    fields = read_all(expect(outer, 0, SEQUENCE))
    path_len = None
    index = 0
    if fields and fields[0][0] == INTEGER:
        path_len = decode_integer(fields[0][1])
        index = 1
    if len(fields) != index + 1:
        raise DerError("ProxyCertInfo has unexpected fields")
    policy_fields = read_all(expect(fields, index, SEQUENCE))
    if len(policy_fields) != 2:
        raise DerError("ProxyPolicy must name our language and carry a policy")
    language = decode_oid(expect(policy_fields, 0, OBJECT_IDENTIFIER))
    if language != PROXY_POLICY_OID.dotted_string:
        raise DerError("ProxyPolicy language is not understood")
    body = read_all(expect(policy_fields, 1, OCTET_STRING))
    if len(body) != 1:
        raise DerError("delegation policy is not one SEQUENCE")
    policy = read_all(expect(body, 0, SEQUENCE))
    if len(policy) != 2:
        raise DerError("delegation policy has unexpected fields")
    delegate = decode_utf8(expect(policy, 0, UTF8_STRING))
    target_items = read_all(expect(policy, 1, SEQUENCE))
    if len(target_items) > MAX_TARGETS:
        raise DerError("delegation policy lists too many targets")
    targets = [decode_utf8(expect(target_items, i, UTF8_STRING)) for i in range(len(target_items))]
    try:
        parse_spiffe_id(delegate)
        for target in targets:
            parse_spiffe_id(target)
    except ValueError as exc:
        raise DerError("delegation policy names an invalid SPIFFE ID") from exc
    return ProxyCertInfo(path_len=path_len, delegate=delegate, targets=frozenset(targets))


def proxy_cert_info_extension(info: ProxyCertInfo) -> x509.UnrecognizedExtension:
    """The extension value to add (critical, RFC 3820 §3.8)."""
    return x509.UnrecognizedExtension(PROXY_CERT_INFO_OID, encode_proxy_cert_info(info))


SIGNING_ONLY = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
"""KeyUsage of every leaf and proxy certificate: the key only signs (TLS 1.3 CertificateVerify,
proof of possession, a next proxy) -- it never encrypts and never certifies."""

SERVICE_USAGE = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)
"""extendedKeyUsage of a service: it answers as a TLS server and calls onward as a client."""
USER_USAGE = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
"""extendedKeyUsage of a user: TLS client only, so a user's certificate cannot pose as a
service to a client (RFC 5280 §4.2.1.12)."""


def certificate_allows(cert: x509.Certificate, purpose: x509.ObjectIdentifier) -> bool:
    """Whether the certificate's extendedKeyUsage lists ``purpose``.

    Stricter than OpenSSL's own TLS purpose check, which it complements: a certificate
    without the extension is allowed nothing here (fail closed; rpcsec's authority always
    writes it, SPIFFE X509-SVIDs carry serverAuth and clientAuth), and anyExtendedKeyUsage
    is not enough (OpenSSL refuses it for TLS too). Raises ``InvalidTokenError`` when the
    extension does not parse.
    """
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    except ValueError as exc:
        raise InvalidTokenError("certificate has a malformed extendedKeyUsage") from exc
    return purpose in usage
