"""What a verified TLS peer chain says about the peer, read once per distinct chain.

After OpenSSL has verified the peer's chain (signatures, validity at this handshake's time,
the TLS purpose), the package reads the facts it acts on from the certificates: the SPIFFE ID
(X509-SVID §4), groups, subject, the earliest notAfter, the trust domain of the anchor and the
key purposes. Reading them means parsing the certificates' extensions, which for a fresh
``cryptography`` certificate costs ~90 µs per side (about half of the Python work of a
handshake; ~16 µs for a chain already seen), and a service sees the same client chains over
and over.

So ``PeerCache`` (one per credentials handle, shared by the credentials derived from it)
keeps the facts of recently seen chains, keyed by the chains' exact DER bytes. Only facts that
are a pure function of those bytes are cached; *trust* never is: every handshake still has
OpenSSL verify the chain against the anchors at that handshake's time, and a chain whose facts
are wrong (not an SVID, another trust domain) raises every time, since only a successful read
is cached.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from rpcsec.sspi._errors import UntrustedRootError

from ._extensions import certificate_allows, certificate_groups
from ._spiffe import certificate_spiffe_id, certificate_trust_domain

__all__ = ["DEFAULT_PEER_CACHE", "PeerCache", "VerifiedPeer"]

DEFAULT_PEER_CACHE = 256
"""Distinct peer chains remembered per credentials handle (least recently used go first)."""


def _expiry(certs: Collection[x509.Certificate]) -> float:
    return min(c.not_valid_after_utc.timestamp() for c in certs)


class VerifiedPeer:
    """What the TLS handshake proved about the peer (immutable once built)."""

    __slots__ = (
        "chain",
        "client_auth",
        "expires_at",
        "groups",
        "server_auth",
        "spiffe_id",
        "subject",
    )

    chain: tuple[x509.Certificate, ...]
    spiffe_id: str
    groups: frozenset[str]
    subject: str
    expires_at: float
    server_auth: bool
    client_auth: bool

    def __init__(self, chain: tuple[x509.Certificate, ...]) -> None:
        leaf = chain[0]
        sid = certificate_spiffe_id(leaf)
        domain = certificate_trust_domain(chain[-1]) if len(chain) > 1 else None
        if domain is not None and sid.trust_domain != domain:
            raise UntrustedRootError("peer belongs to another trust domain than its anchor")
        set_ = object.__setattr__
        set_(self, "chain", chain)
        set_(self, "spiffe_id", str(sid))
        set_(self, "groups", certificate_groups(leaf))
        set_(self, "subject", leaf.subject.rfc4514_string())
        set_(self, "expires_at", _expiry(chain))
        set_(self, "server_auth", certificate_allows(leaf, ExtendedKeyUsageOID.SERVER_AUTH))
        set_(self, "client_auth", certificate_allows(leaf, ExtendedKeyUsageOID.CLIENT_AUTH))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("VerifiedPeer is immutable")

    @property
    def presented(self) -> tuple[x509.Certificate, ...]:
        """The peer's own chain without the trust anchor (leaf and intermediates)."""
        return self.chain[:-1] if len(self.chain) > 1 else self.chain

    def __repr__(self) -> str:
        return f"<VerifiedPeer {self.spiffe_id}>"


class PeerCache:
    """``VerifiedPeer`` of recently seen chains, keyed by their DER (thread-safe, bounded)."""

    __slots__ = ("_entries", "_lock", "_size")

    def __init__(self, size: int = DEFAULT_PEER_CACHE) -> None:
        if size < 0:
            raise ValueError("peer cache size must be 0 or more")
        self._size = size
        self._entries: OrderedDict[tuple[x509.Certificate, ...], VerifiedPeer] = OrderedDict()
        self._lock = threading.Lock()

    def peer(self, chain: list[x509.Certificate] | tuple[x509.Certificate, ...]) -> VerifiedPeer:
        """The facts of ``chain`` (already verified by OpenSSL); raises as ``VerifiedPeer``."""
        key = tuple(chain)  # certificates compare and hash by their DER bytes
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        peer = VerifiedPeer(key)  # outside the lock: parsing is the slow part
        if self._size:
            with self._lock:
                self._entries[key] = peer
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        return peer

    def __len__(self) -> int:
        return len(self._entries)
