"""Private keys: which signature hash each key type signs with, and 0600 key files.

Our authority makes Ed25519 keys; certificates from an external PKI may carry EC or RSA keys,
which sign with SHA-256 (Ed25519/Ed448 take no separate hash, RFC 8410 §6).
"""

from __future__ import annotations

import os
import pathlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

__all__ = [
    "PrivateKey",
    "PublicKey",
    "load_private_key",
    "same_public_key",
    "signature_hash",
    "write_private_file",
]

PrivateKey = (
    ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
)
PublicKey = (
    ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
)


def signature_hash(key: PrivateKey) -> hashes.SHA256 | None:
    """The hash argument ``CertificateBuilder.sign`` needs for ``key``."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def load_private_key(data: bytes) -> PrivateKey:
    """A PEM private key of a type TLS 1.3 can sign with; ``ValueError`` otherwise."""
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(
        key,
        ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey
        | ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey,
    ):
        raise ValueError("unsupported private key type")
    return key


def same_public_key(a: object, b: object) -> bool:
    """Whether two public keys are the same key (compared by their SubjectPublicKeyInfo)."""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    try:
        return a.public_bytes(der, spki) == b.public_bytes(der, spki)  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return False


def write_private_file(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` so that only the owner can ever read it (mode 0600 from creation).

    The file is created 0600 by ``os.open`` (never wider, even for a moment), written, and
    moved into place atomically; an existing file is replaced, not reused with its old mode.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # umask can only narrow; be explicit anyway
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
