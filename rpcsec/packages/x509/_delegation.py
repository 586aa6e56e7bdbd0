"""Delegated x509 credentials as bytes, so a context that was delegated to can be exported.

What a server received by RFC 3820 delegation is the principal's certificate chain, the proxy
chain ending in the proxy certificate the client signed for this context, and the *fresh*
Ed25519 key the server generated for that proxy (``_mechanism``). With those three, any
process holding the service's own identity can run the onward InitializeSecurityContext as
the principal: TLS proves the service's certificate, the ClientFinish presents the chains and
signs the channel's exporter value with the proxy key. This is the delegation half of
ExportSecurityContext (as ``gss_export_cred`` is for a forwarded Kerberos TGT), so a session
layer can seal it into a context ticket and any replica can call onward as the caller.

Blob (version 1), integers big-endian, nothing after the key::

    "X5E" 1 | nprincipal:u8 | nproxy:u8 | (len:u16 | DER) * (nprincipal + nproxy) | key:32

The service's own certificate, key and trust anchors are *not* in the blob: the importer
supplies them (its own credentials), so a ticket never carries a long-term key, and the
chain must name the importer's identity as its last delegate.

On import the structure is checked first (magic, counts within RFC 3820 limits of ours,
lengths, no trailing bytes), every certificate is parsed by ``cryptography`` before OpenSSL
sees it, and the whole chain is verified again against the importer's trust anchors
(``verify_delegation``: signatures, names, ProxyCertInfo, path lengths, targets), then the key
must be the last proxy's. Lifetime is not judged here but where the credentials are used, as
for credentials that never left the handshake's process: the onward context refuses an
expired chain before any token, and the downstream service verifies it at its own time.

WARNING: the blob holds the proxy private key; whoever has it (and the service's identity)
can act as the principal within the chain's policy until the proxy expires. It is only ever
written into the AEAD-sealed context ticket (``rpcsec.session.TicketKeyRing``); never log it.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from rpcsec.sspi._errors import DelegationPolicyError, InvalidTokenError

from ._credential import DelegatedChain, X509Credential
from ._keys import same_public_key
from ._proxy import MAX_PRINCIPAL_CHAIN, MAX_PROXIES, verify_delegation

__all__ = [
    "MAX_DELEGATION_EXPORT",
    "export_x509_delegation",
    "import_x509_delegation",
    "parse_x509_delegation",
]

MAGIC = b"X5E\x01"
KEY_SIZE = 32
MAX_CERTIFICATE = 8 * 1024
MAX_DELEGATION_EXPORT = 8 * 1024
"""Larger chains are not exported (a ticket is at most 16 KiB and rides on every call): the
context is then served with delegation by the replica that made it only."""
_U16 = struct.Struct(">H")


def _malformed(what: str) -> InvalidTokenError:
    return InvalidTokenError(f"exported x509 delegation is malformed: {what}")


class _Reader:
    """Bounded reads over the blob; running out raises InvalidTokenError."""

    __slots__ = ("_data", "_offset")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def take(self, size: int) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise _malformed("truncated")
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def certificate(self) -> x509.Certificate:
        (size,) = _U16.unpack(self.take(_U16.size))
        if not 0 < size <= MAX_CERTIFICATE:
            raise _malformed("certificate length")
        try:
            return x509.load_der_x509_certificate(self.take(size))
        except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
            raise _malformed("certificate") from None

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset


def _der(cert: x509.Certificate) -> bytes:
    der = cert.public_bytes(Encoding.DER)
    return _U16.pack(len(der)) + der


def export_x509_delegation(material: X509Credential) -> bytes:
    """The blob for credentials received by delegation (see the module docstring).

    Raises ``ValueError`` for credentials that hold no delegation, ``OverflowError`` for a
    chain larger than ``MAX_DELEGATION_EXPORT`` (the caller keeps it process-local)."""
    delegated = material.delegated
    if delegated is None:
        raise ValueError("only x509 credentials received by delegation can be exported")
    chain = delegated.delegation
    key = delegated.key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    blob = b"".join(
        (
            MAGIC,
            bytes((len(chain.principal_chain), len(chain.proxies))),
            *(_der(c) for c in (*chain.principal_chain, *chain.proxies)),
            key,
        )
    )
    if len(blob) > MAX_DELEGATION_EXPORT:
        raise OverflowError("delegated x509 chain is too large to export")
    return blob


def parse_x509_delegation(
    blob: bytes,
) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...], ed25519.Ed25519PrivateKey]:
    """(principal chain, proxies, proxy key) from a blob: structure only, no trust decided.

    Raises ``InvalidTokenError`` for anything that is not exactly one blob."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise _malformed("not bytes")
    data = bytes(blob)
    if not len(MAGIC) + 2 + KEY_SIZE <= len(data) <= MAX_DELEGATION_EXPORT:
        raise _malformed("size")
    reader = _Reader(data)
    if reader.take(len(MAGIC)) != MAGIC:
        raise _malformed("unknown format")
    n_principal, n_proxies = reader.take(2)
    if not 1 <= n_principal <= MAX_PRINCIPAL_CHAIN or not 1 <= n_proxies <= MAX_PROXIES:
        raise _malformed("chain length")
    principal = tuple(reader.certificate() for _ in range(n_principal))
    proxies = tuple(reader.certificate() for _ in range(n_proxies))
    if reader.remaining != KEY_SIZE:
        raise _malformed("key")
    key = ed25519.Ed25519PrivateKey.from_private_bytes(reader.take(KEY_SIZE))
    return principal, proxies, key


def import_x509_delegation(
    blob: bytes, owner: X509Credential, *, clock: Callable[[], float] = time.time
) -> X509Credential:
    """Credentials that act as the chain's principal, proven by ``owner``'s identity.

    ``owner`` is the importing service's own credentials (identity and trust anchors). Raises
    ``InvalidTokenError`` for a malformed blob, ``DelegationPolicyError`` (or the principal's
    certificate errors) when the chain does not verify against ``owner``'s anchors, was not
    delegated to ``owner``'s identity, or the key is not the last proxy's."""
    if not isinstance(owner, X509Credential):
        raise TypeError("x509 delegation is imported with the service's x509 credentials")
    principal, proxies, key = parse_x509_delegation(blob)
    # Verified as of now, or -- a chain that has expired since -- as of its last valid
    # instant: trust and policy are decided here, lifetime where the credentials are used.
    certs = (*principal, *proxies)
    start = max(c.not_valid_before_utc.timestamp() for c in certs)
    end = min(c.not_valid_after_utc.timestamp() for c in certs)
    if start >= end:
        raise DelegationPolicyError("exported delegation chain was never valid")
    instant = max(start, min(clock(), end - 1.0))
    chain = verify_delegation(principal, proxies, owner.trust.anchors, instant)
    if chain.delegate != owner.identity.spiffe_id:
        raise DelegationPolicyError("exported delegation was made for another service")
    if not same_public_key(chain.last.public_key(), key.public_key()):
        raise DelegationPolicyError("exported delegation key is not the last proxy's")
    return X509Credential(
        owner.identity, owner.trust, DelegatedChain(chain, key), peers=owner.peers
    )
