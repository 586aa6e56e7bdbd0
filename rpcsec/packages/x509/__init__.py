"""The ``x509`` security package, rpcsec's embedded default.

Identities are SPIFFE X509-SVIDs (from ``rpcsec authority`` or any PKI issuing them); a
context is a mutual TLS 1.3 handshake driven through memory BIOs whose records are the SSPI
tokens; per-message keys come from the TLS exporter; delegation uses RFC 3820 proxy
certificates signed for a fresh key the server never lets go of.
"""

from ._authority import Authority, IssuedIdentity
from ._credential import DelegatedChain, TrustBundle, X509Credential, X509Identity
from ._extensions import GROUPS_OID, PROXY_CERT_INFO_OID, PROXY_POLICY_OID, ProxyCertInfo
from ._mechanism import DEFAULT_PROXY_LIFETIME, X509ClientMechanism, X509ServerMechanism
from ._package import X509Package
from ._proxy import MAX_DEPTH, MAX_PROXIES, Delegation, issue_proxy, verify_delegation
from ._spiffe import SpiffeId, certificate_spiffe_id, parse_spiffe_id
from ._tls import DEFAULT_CLOCK_SKEW

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_PROXY_LIFETIME",
    "GROUPS_OID",
    "MAX_DEPTH",
    "MAX_PROXIES",
    "PROXY_CERT_INFO_OID",
    "PROXY_POLICY_OID",
    "Authority",
    "DelegatedChain",
    "Delegation",
    "IssuedIdentity",
    "ProxyCertInfo",
    "SpiffeId",
    "TrustBundle",
    "X509ClientMechanism",
    "X509Credential",
    "X509Identity",
    "X509Package",
    "X509ServerMechanism",
    "certificate_spiffe_id",
    "issue_proxy",
    "parse_spiffe_id",
    "verify_delegation",
]
