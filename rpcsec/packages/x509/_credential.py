"""x509 credential material: what AcquireCredentialsHandle loads and a context proves with.

``X509Credential`` holds this process's own TLS identity (certificate, key, intermediates),
the trust bundle peers are verified against, and, for credentials a server received by
delegation, the verified proxy chain and the proxy key. Keys are never shown by ``repr``.
"""

from __future__ import annotations

import os
import pathlib
import threading
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from OpenSSL import SSL

from rpcsec.sspi._errors import NoCredentialsError, SecurityError

from ._authority import Authority
from ._bundle import bundle_paths
from ._extensions import certificate_groups
from ._keys import PrivateKey, load_private_key, same_public_key
from ._peer import PeerCache
from ._proxy import Delegation
from ._spiffe import certificate_spiffe_id, certificate_trust_domain
from ._tls import build_ssl_context

__all__ = [
    "DelegatedChain",
    "TrustBundle",
    "X509Credential",
    "X509Identity",
    "load_credential",
]

_OPTIONS = frozenset({"cert", "key", "trust", "authority_dir", "name", "bundle"})


@dataclass(frozen=True, slots=True, eq=False)
class X509Identity:
    """A certificate (SVID), its private key and any intermediates, as TLS presents them."""

    spiffe_id: str
    certificate: x509.Certificate = field(repr=False)
    key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...] = field(default=(), repr=False)
    groups: frozenset[str] = frozenset()

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()

    @property
    def not_after(self) -> float:
        return min(c.not_valid_after_utc.timestamp() for c in (self.certificate, *self.chain))


@dataclass(frozen=True, slots=True, eq=False)
class TrustBundle:
    """The trust anchors (root certificates) peers must chain to."""

    anchors: tuple[x509.Certificate, ...] = field(repr=False)

    @property
    def trust_domains(self) -> frozenset[str]:
        return frozenset(
            d for d in (certificate_trust_domain(a) for a in self.anchors) if d is not None
        )

    def __repr__(self) -> str:
        return f"TrustBundle(<{len(self.anchors)} anchors>)"


@dataclass(frozen=True, slots=True, eq=False)
class DelegatedChain:
    """A verified proxy chain and the proxy key that goes with its last certificate."""

    delegation: Delegation
    key: ed25519.Ed25519PrivateKey = field(repr=False)


class X509Credential:
    """The material behind an x509 ``Credentials`` handle.

    ``principal`` is whom contexts made with it speak for: the certificate's SPIFFE ID, or,
    for delegated credentials, the original principal (while TLS still proves ``identity``).
    Per-handle work is done once and kept: the OpenSSL context (own chain, key, trust store)
    and the facts of peer chains already seen (``peers``, see ``_peer``); credentials derived
    from another handle (delegated ones) share its ``peers``.
    """

    __slots__ = ("_context", "_lock", "delegated", "identity", "peers", "trust")

    def __init__(
        self,
        identity: X509Identity,
        trust: TrustBundle,
        delegated: DelegatedChain | None = None,
        *,
        peers: PeerCache | None = None,
    ) -> None:
        self.identity = identity
        self.trust = trust
        self.delegated = delegated
        self.peers = peers if peers is not None else PeerCache()
        self._context: SSL.Context | None = None
        self._lock = threading.Lock()

    @property
    def principal(self) -> str:
        if self.delegated is not None:
            return self.delegated.delegation.principal
        return self.identity.spiffe_id

    def ssl_context(self, verify_time: float | None = None) -> SSL.Context:
        """An OpenSSL context proving ``identity`` and trusting ``trust``.

        Shared by every context made with these credentials when peers are verified at the
        system time; a fresh one when the caller injected a clock (``verify_time``), since
        the verification time lives in the context's certificate store.
        """
        if verify_time is not None:
            return self._build(verify_time)
        with self._lock:
            if self._context is None:
                self._context = self._build(None)
            return self._context

    def _build(self, verify_time: float | None) -> SSL.Context:
        identity = self.identity
        try:
            return build_ssl_context(
                identity.certificate,
                identity.key,
                identity.chain,
                self.trust.anchors,
                verify_time=verify_time,
            )
        except SSL.Error as exc:
            raise NoCredentialsError("OpenSSL refused the certificate or key") from exc

    def __repr__(self) -> str:
        delegated = ""
        if self.delegated is not None:
            chain = "/".join(self.delegated.delegation.delegates)
            delegated = f", delegated_via={chain!r}"
        return (
            f"X509Credential(principal={self.principal!r}, "
            f"identity={self.identity.spiffe_id!r}{delegated})"
        )


def _read(value: Any, what: str) -> bytes:
    """PEM given inline (bytes) or as a path."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str | os.PathLike):
        try:
            return pathlib.Path(value).read_bytes()
        except OSError as exc:
            raise NoCredentialsError(f"cannot read the {what} file {os.fspath(value)!r}") from exc
    raise TypeError(f"{what} must be a path or PEM bytes")


def _certificates(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise NoCredentialsError(f"the {what} holds no valid PEM certificate") from exc
    if not certs:
        raise NoCredentialsError(f"the {what} holds no certificate")
    return certs


def load_credential(principal: str | None, options: dict[str, Any]) -> X509Credential:
    """Load material from ``cert``/``key``/``trust`` (paths or PEM bytes), from a bundle
    directory (``bundle``, see ``_bundle``; ``trust`` may replace its trust bundle), or from an
    authority directory (``authority_dir`` + ``name``, the name defaulting to ``principal``).

    Raises ``ValueError``/``TypeError`` for wrong options and ``NoCredentialsError`` when the
    files are missing, unreadable, mismatched, or not for ``principal``.
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ValueError(f"unknown x509 credential options: {sorted(unknown)}")
    expected = principal
    if "bundle" in options:
        if {"authority_dir", "name", "cert", "key"} & set(options):
            raise ValueError(
                "give bundle alone (or with trust), not with cert, key or authority_dir"
            )
        if not isinstance(options["bundle"], str | os.PathLike):
            raise TypeError("bundle must be a directory path")
        paths = bundle_paths(options["bundle"])
        if not paths.directory.is_dir():
            raise NoCredentialsError(f"no identity bundle at {os.fspath(paths.directory)!r}")
        cert_src: Any = paths.certificate
        key_src: Any = paths.key
        trust_src: Any = options.get("trust", paths.trust)
    elif "authority_dir" in options:
        if {"cert", "key"} & set(options):
            raise ValueError("give either authority_dir (+ name) or cert and key, not both")
        name = options.get("name", principal)
        if not isinstance(name, str):
            raise ValueError("authority_dir needs a name (or a principal)")
        if "name" not in options and not name.startswith("spiffe://"):
            expected = None  # the principal was a short name; the lookup bound it
        try:
            authority = Authority.open(options["authority_dir"])
            issued = authority.locate(name)
        except (OSError, LookupError, ValueError) as exc:
            raise NoCredentialsError(f"no x509 identity {name!r} in that authority") from exc
        cert_src = issued.certificate_path
        key_src = issued.key_path
        trust_src = options.get("trust", authority.trust_bundle_path)
    else:
        missing = [k for k in ("cert", "key", "trust") if k not in options]
        if missing:
            raise ValueError(f"x509 credentials need {', '.join(missing)} (or authority_dir)")
        if "name" in options:
            raise ValueError("name is only used with authority_dir")
        cert_src, key_src, trust_src = options["cert"], options["key"], options["trust"]

    chain = _certificates(_read(cert_src, "certificate"), "certificate")
    anchors = _certificates(_read(trust_src, "trust bundle"), "trust bundle")
    try:
        key = load_private_key(_read(key_src, "key"))
    except (ValueError, TypeError) as exc:
        if isinstance(exc, TypeError) and not isinstance(key_src, bytes | str | os.PathLike):
            raise
        raise NoCredentialsError("the key file holds no usable private key") from exc
    leaf = chain[0]
    if not same_public_key(leaf.public_key(), key.public_key()):
        raise NoCredentialsError("the private key does not belong to the certificate")
    try:
        spiffe_id = str(certificate_spiffe_id(leaf))
        groups = certificate_groups(leaf)
    except SecurityError as exc:
        raise NoCredentialsError("the certificate is not a SPIFFE X509-SVID") from exc
    if expected is not None and expected != spiffe_id:
        raise NoCredentialsError(f"the certificate is for {spiffe_id}, not {expected}")
    identity = X509Identity(
        spiffe_id=spiffe_id, certificate=leaf, key=key, chain=tuple(chain[1:]), groups=groups
    )
    return X509Credential(identity, TrustBundle(tuple(anchors)))
