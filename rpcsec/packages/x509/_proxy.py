"""RFC 3820 proxy certificates: issuing one for a delegate, and verifying a delegation chain.

Delegation as in the Grid Security Infrastructure (RFC 3820, GSI): the delegate makes a fresh
key pair and sends only its public key; the principal (or a delegate further up the chain,
with its proxy key) signs a short-lived *proxy certificate* for that key. The chain
``principal leaf -> proxy 1 -> ... -> proxy N`` speaks for the principal; whoever proves
possession of proxy N's key may act within the chain's policy. Each proxy follows RFC 3820:

* issuer = the signer's subject; subject = the issuer's subject plus one CN RDN (the proxy's
  serial number) (§3.4); no subjectAltName or issuerAltName (§3.5); not a CA (§3.7);
* ProxyCertInfo, critical, with pCPathLenConstraint = how many further proxies may follow,
  and our policy language naming the delegate and the targets it may call (§3.8, see
  ``_extensions``);
* validity within the signer's (§4.1.3 checks every certificate of the path).

Verification is RFC 3820 §4.1 path validation restricted to our policy language: the
principal's own chain is verified by OpenSSL against the trust anchors, every proxy by its
issuer's key, names, criticality, validity, path lengths, and the policy (effective targets
are the intersection of every proxy's targets; each delegate must itself have been an
allowed target of the proxies before it).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from OpenSSL import crypto

from rpcsec.sspi._errors import (
    CertificateExpiredError,
    CertificateWrongUsageError,
    DelegationPolicyError,
    InvalidTokenError,
    UntrustedRootError,
)

from ._extensions import (
    PROXY_CERT_INFO_OID,
    SIGNING_ONLY,
    ProxyCertInfo,
    certificate_allows,
    certificate_groups,
    decode_proxy_cert_info,
    proxy_cert_info_extension,
)
from ._keys import PrivateKey, signature_hash
from ._spiffe import certificate_spiffe_id, certificate_trust_domain
from ._tls import DEFAULT_CLOCK_SKEW

__all__ = [
    "MAX_DEPTH",
    "MAX_PRINCIPAL_CHAIN",
    "MAX_PROXIES",
    "Delegation",
    "issue_proxy",
    "read_proxy_info",
    "verify_delegation",
    "verify_principal",
]

MAX_PROXIES = 8
MAX_DEPTH = MAX_PROXIES - 1
MAX_PRINCIPAL_CHAIN = 5
_BACKDATE = 300.0  # seconds, as grid-proxy-init does, for clock skew between hosts
_VALIDITY_ERRORS = frozenset({9, 10})


def _ts(moment: datetime.datetime) -> float:
    return moment.timestamp()


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)


@dataclass(frozen=True, slots=True)
class Delegation:
    """A verified delegation chain: who it speaks for, through whom, and what it allows.

    ``delegates`` names the services the chain was handed to, in order (the seed's C/S1/S2
    becomes ``("S1", "S2")``); ``targets`` is where the last delegate may call as the
    principal; ``remaining_depth`` how many more times it may be delegated.
    """

    principal: str
    groups: frozenset[str]
    delegates: tuple[str, ...]
    targets: frozenset[str]
    remaining_depth: int
    expires_at: float
    principal_chain: tuple[x509.Certificate, ...] = field(repr=False)
    proxies: tuple[x509.Certificate, ...] = field(repr=False)

    @property
    def delegate(self) -> str:
        """The service that holds the last proxy's key."""
        return self.delegates[-1]

    @property
    def last(self) -> x509.Certificate:
        return self.proxies[-1]


def read_proxy_info(cert: x509.Certificate) -> ProxyCertInfo:
    """The ProxyCertInfo of a proxy certificate, checked for RFC 3820's structural rules."""
    try:
        extensions = cert.extensions
    except ValueError as exc:
        raise InvalidTokenError("proxy certificate extensions are malformed") from exc
    try:
        ext = extensions.get_extension_for_oid(PROXY_CERT_INFO_OID)
    except x509.ExtensionNotFound:
        raise DelegationPolicyError("certificate is not a proxy certificate") from None
    if not ext.critical:
        raise DelegationPolicyError("ProxyCertInfo must be critical (RFC 3820 §3.8)")
    for oid in (ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.ISSUER_ALTERNATIVE_NAME):
        try:
            extensions.get_extension_for_oid(oid)
        except x509.ExtensionNotFound:
            continue
        raise DelegationPolicyError("proxy certificates carry no alternative names (§3.5)")
    try:
        basic = extensions.get_extension_for_class(x509.BasicConstraints).value
        if basic.ca:
            raise DelegationPolicyError("a proxy certificate cannot be a CA (§3.7)")
    except x509.ExtensionNotFound:
        pass
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise InvalidTokenError("ProxyCertInfo is not understood")
    return decode_proxy_cert_info(value.value)


def issue_proxy(
    signer: x509.Certificate,
    signer_key: PrivateKey,
    public_key: ed25519.Ed25519PublicKey,
    info: ProxyCertInfo,
    *,
    now: float,
    lifetime: float,
    not_after_limit: float,
) -> x509.Certificate:
    """Sign a proxy certificate for ``public_key`` (the delegate's fresh key).

    It is valid from a little before ``now`` until ``now + lifetime``, and never after
    ``not_after_limit`` (the end of the signer's own chain). Raises ``DelegationPolicyError``
    if the signer's chain leaves no lifetime to give.
    """
    not_after = min(now + lifetime, not_after_limit, _ts(signer.not_valid_after_utc))
    not_before = max(now - _BACKDATE, _ts(signer.not_valid_before_utc))
    if not_after <= now:
        raise DelegationPolicyError("credentials expire too soon to delegate")
    serial = x509.random_serial_number()
    subject = x509.Name(
        [
            *signer.subject.rdns,
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, str(serial))]),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(_utc(not_before))
        .not_valid_after(_utc(not_after))
        .add_extension(proxy_cert_info_extension(info), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            SIGNING_ONLY,
            critical=True,
        )
        .sign(signer_key, signature_hash(signer_key))
    )


def verify_principal(
    chain: tuple[x509.Certificate, ...],
    anchors: tuple[x509.Certificate, ...],
    now: float,
    *,
    skew: float = DEFAULT_CLOCK_SKEW,
) -> tuple[str, frozenset[str], float]:
    """Verify a principal's leaf (plus intermediates) against the trust anchors with OpenSSL
    at time ``now`` give or take ``skew`` seconds; return its SPIFFE ID, groups and the
    chain's earliest expiry."""
    if not 1 <= len(chain) <= MAX_PRINCIPAL_CHAIN:
        raise InvalidTokenError("principal chain has an invalid length")
    try:
        verified = _openssl_verify(chain, anchors, now)
    except CertificateExpiredError:
        # OpenSSL has no skew: verify again at the instant nearest ``now`` at which every
        # certificate of the chain is valid, if that instant is within the skew.
        start = max(_ts(c.not_valid_before_utc) for c in chain)
        end = min(_ts(c.not_valid_after_utc) for c in chain)
        instant = min(max(now, start), end - 1)
        if not (start <= instant < end and abs(instant - now) <= skew):
            raise
        verified = _openssl_verify(chain, anchors, instant)
    full = [c.to_cryptography() for c in verified]
    if not certificate_allows(chain[0], ExtendedKeyUsageOID.CLIENT_AUTH):
        # The chain speaks for a client: its leaf must be one (as in the TLS handshake).
        raise CertificateWrongUsageError("principal certificate is not for TLS clients")
    principal = certificate_spiffe_id(chain[0])
    domain = certificate_trust_domain(full[-1])
    if domain is not None and principal.trust_domain != domain:
        raise UntrustedRootError("principal belongs to another trust domain")
    expires = min(_ts(c.not_valid_after_utc) for c in full)
    return str(principal), certificate_groups(chain[0]), expires


def _openssl_verify(
    chain: tuple[x509.Certificate, ...], anchors: tuple[x509.Certificate, ...], now: float
) -> list[crypto.X509]:
    store = crypto.X509Store()
    for anchor in anchors:
        store.add_cert(crypto.X509.from_cryptography(anchor))
    store.set_time(_utc(now))
    try:
        # A certificate ``cryptography`` parsed can still be one OpenSSL's d2i refuses.
        leaf = crypto.X509.from_cryptography(chain[0])
        intermediates = [crypto.X509.from_cryptography(c) for c in chain[1:]]
        context = crypto.X509StoreContext(store, leaf, intermediates)
        return context.get_verified_chain()
    except crypto.X509StoreContextError as exc:
        errors = exc.errors if isinstance(exc.errors, list) else []
        if errors and errors[0] in _VALIDITY_ERRORS:
            raise CertificateExpiredError("principal certificate is outside its validity") from exc
        raise UntrustedRootError("principal certificate is not trusted") from exc
    except crypto.Error as exc:
        raise InvalidTokenError("principal certificate is malformed") from exc


def _check_proxy_name(proxy: x509.Certificate, issuer: x509.Certificate) -> None:
    if proxy.issuer != issuer.subject:
        raise DelegationPolicyError("proxy issuer does not name the certificate before it")
    rdns = list(proxy.subject.rdns)
    if rdns[:-1] != list(issuer.subject.rdns) or not rdns:
        raise DelegationPolicyError("proxy subject does not extend its issuer's (§3.4)")
    last = list(rdns[-1])
    if len(last) != 1 or last[0].oid != NameOID.COMMON_NAME:
        raise DelegationPolicyError("proxy subject must end in one CN (§3.4)")


def verify_delegation(
    principal_chain: tuple[x509.Certificate, ...],
    proxies: tuple[x509.Certificate, ...],
    anchors: tuple[x509.Certificate, ...],
    now: float,
    *,
    skew: float = DEFAULT_CLOCK_SKEW,
) -> Delegation:
    """RFC 3820 §4.1 path validation of ``principal leaf -> proxies`` with our policy, at
    ``now`` give or take ``skew`` seconds for every certificate's validity.

    Raises ``UntrustedRootError`` / ``CertificateExpiredError`` /
    ``CertificateWrongUsageError`` (no clientAuth) when the principal's own certificate
    fails, ``DelegationPolicyError`` when a proxy is forged, expired, too deep or outside the
    policy, ``InvalidTokenError`` when something is malformed (a name or an extension that
    does not parse, too).
    """
    if not 1 <= len(proxies) <= MAX_PROXIES:
        raise DelegationPolicyError("delegation chain has an invalid length")
    try:
        return _verify_delegation(principal_chain, proxies, anchors, now, skew)
    except ValueError as exc:  # cryptography parses names and extensions lazily
        raise InvalidTokenError("delegation chain holds a malformed certificate") from exc


def _verify_delegation(
    principal_chain: tuple[x509.Certificate, ...],
    proxies: tuple[x509.Certificate, ...],
    anchors: tuple[x509.Certificate, ...],
    now: float,
    skew: float,
) -> Delegation:
    principal, groups, expires = verify_principal(principal_chain, anchors, now, skew=skew)
    issuer = principal_chain[0]
    allowed = MAX_PROXIES  # how many proxies may still be appended
    targets: frozenset[str] | None = None
    delegates: list[str] = []
    for proxy in proxies:
        if allowed < 1:
            raise DelegationPolicyError("delegation depth exhausted")
        _check_proxy_name(proxy, issuer)
        try:
            proxy.verify_directly_issued_by(issuer)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise DelegationPolicyError("proxy is not signed by the certificate before it") from exc
        if not isinstance(proxy.public_key(), ed25519.Ed25519PublicKey):
            raise DelegationPolicyError("proxy keys must be Ed25519")
        info = read_proxy_info(proxy)
        start, end = _ts(proxy.not_valid_before_utc), _ts(proxy.not_valid_after_utc)
        if not start - skew <= now < end + skew:
            raise DelegationPolicyError("proxy certificate has expired or is not yet valid")
        if end > _ts(issuer.not_valid_after_utc):
            raise DelegationPolicyError("proxy outlives the certificate that signed it")
        if targets is not None and info.delegate not in targets:
            raise DelegationPolicyError("delegated to a service outside the policy")
        targets = info.targets if targets is None else targets & info.targets
        allowed = allowed - 1 if info.path_len is None else min(allowed - 1, info.path_len)
        delegates.append(info.delegate)
        expires = min(expires, end)
        issuer = proxy
    assert targets is not None
    return Delegation(
        principal=principal,
        groups=groups,
        delegates=tuple(delegates),
        targets=targets,
        remaining_depth=allowed,
        expires_at=expires,
        principal_chain=tuple(principal_chain),
        proxies=tuple(proxies),
    )
