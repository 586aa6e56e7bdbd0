"""The decomposition's "crypto at zero cost" step: rpcsec with its AEAD calls replaced by a no-op.

Benchmark-only, applied in the benchmark's own child processes (the no-op server, the no-op
client), never in rpcsec/ and never in the suite's process. The seam is public:
``cryptography``'s ``AESGCM`` (and ``AESGCMSIV``) class as rpcsec imports it
(``from cryptography.hazmat.primitives.ciphers.aead import AESGCM`` in
``rpcsec/sspi/_protection.py``, ``rpcsec/grpc/_responses.py``, ``rpcsec/session/_ticket.py``);
GCM through ``Cipher(AES, modes.GCM)`` (the streaming GMAC over pieces, ``_protection``)
gets the same treatment. ``install()`` replaces the classes in ``cryptography``'s modules
*before* rpcsec is imported, so every ``from ... import`` binds the no-op; ``verify()`` then
fails loudly (an error in the results, never a wrong number) if an rpcsec module still holds a
real AEAD class -- a seam moved or a new primitive -- or if no AEAD call went through the no-op.

The no-op keeps the wire format: ``encrypt`` returns the plaintext and a 16-byte zero tag,
``decrypt`` checks the length and strips the tag (``encrypt_into`` / ``decrypt_into`` the same
into the caller's buffer). Sizes, copies and the Python calls around
the AEAD stay; the AES-GCM/GMAC arithmetic (and its cache footprint) goes. Both ends run it,
so they agree. Key derivation (HKDF/KBKDF) stays real.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["CALLS", "NoopAead", "NoopGcmCipher", "install", "verify"]

TAG = 16
CALLS = [0]
"""AEAD calls that went through the no-op in this process (``verify`` needs at least one)."""
_REAL: dict[str, Any] = {}


class NoopAead:
    """Stands in for ``AESGCM`` / ``AESGCMSIV``: same constructor and call signatures."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) not in (16, 24, 32):
            raise ValueError("AESGCM key must be 128, 192, or 256 bits.")
        self._key = key

    @classmethod
    def generate_key(cls, bit_length: int) -> bytes:
        return bytes(bit_length // 8)

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        CALLS[0] += 1
        return bytes(data) + bytes(TAG) if data else bytes(TAG)

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        CALLS[0] += 1
        if len(data) < TAG:
            from cryptography.exceptions import InvalidTag

            raise InvalidTag
        return bytes(data[:-TAG])

    # The in-place forms rpcsec uses for large messages (``rpcsec.sspi._fresh_bytes``): the
    # same copies into the caller's buffer, with cryptography's length check.

    def encrypt_into(self, nonce: bytes, data: Any, associated_data: bytes | None, buf: Any) -> int:
        CALLS[0] += 1
        size = len(data)
        if len(buf) != size + TAG:
            raise ValueError("buffer must be of length len(data) + 16")
        buf[:size] = data
        buf[size:] = bytes(TAG)
        return size + TAG

    def decrypt_into(self, nonce: bytes, data: Any, associated_data: bytes | None, buf: Any) -> int:
        CALLS[0] += 1
        if len(data) < TAG:
            from cryptography.exceptions import InvalidTag

            raise InvalidTag
        size = len(data) - TAG
        if len(buf) != size:
            raise ValueError("buffer must be of length len(data) - 16")
        buf[:] = data[:size]
        return size


class _NoopGcmContext:
    """An encryptor/decryptor of ``NoopGcmCipher``: data passes through, the tag is zeros."""

    __slots__ = ()
    tag = bytes(TAG)

    def authenticate_additional_data(self, data: bytes) -> None:
        CALLS[0] += 1

    def update(self, data: bytes) -> bytes:
        return bytes(data)

    def finalize(self) -> bytes:
        return b""

    def finalize_with_tag(self, tag: bytes) -> bytes:
        return b""


class NoopGcmCipher:
    """Stands in for ``Cipher``: GCM modes get ``_NoopGcmContext``, anything else the real
    ``Cipher`` (so nothing else changes behaviour)."""

    __slots__ = ()

    def __new__(cls, algorithm: Any, mode: Any, backend: Any = None) -> Any:
        from cryptography.hazmat.primitives.ciphers import modes

        if not isinstance(mode, modes.GCM):
            return _REAL["Cipher"](algorithm, mode)
        return super().__new__(cls)

    def encryptor(self) -> _NoopGcmContext:
        return _NoopGcmContext()

    def decryptor(self) -> _NoopGcmContext:
        return _NoopGcmContext()


def install() -> None:
    """Replace ``cryptography``'s AEAD classes with the no-op; call before importing rpcsec."""
    if any(name == "rpcsec" or name.startswith("rpcsec.") for name in sys.modules):
        raise RuntimeError("no-op AEAD: rpcsec was imported before the patch (it would not bind)")
    from cryptography.hazmat.primitives import ciphers
    from cryptography.hazmat.primitives.ciphers import aead

    for name in ("AESGCM", "AESGCMSIV"):
        _REAL[name] = getattr(aead, name)
        setattr(aead, name, NoopAead)
    _REAL["Cipher"] = ciphers.Cipher
    ciphers.Cipher = NoopGcmCipher  # type: ignore[assignment,misc]


def verify() -> None:
    """Raise unless every AEAD class any loaded rpcsec module holds is the no-op and the
    no-op has been called (run after the first protected call)."""
    if not _REAL:
        raise RuntimeError("no-op AEAD: install() was not called")
    from cryptography.hazmat.primitives.ciphers import aead

    real = {id(value) for value in vars(aead).values() if isinstance(value, type)}
    real |= {id(value) for value in _REAL.values()}
    real.discard(id(NoopAead))
    real.discard(id(NoopGcmCipher))
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "rpcsec" or name.startswith("rpcsec.")):
            continue
        for attribute, value in vars(module).items():
            if id(value) in real:
                raise RuntimeError(
                    f"no-op AEAD: {name}.{attribute} is still cryptography's real "
                    f"{getattr(value, '__name__', value)} (the seam moved: update _noop_aead)"
                )
    if CALLS[0] == 0:
        raise RuntimeError("no-op AEAD: no AEAD call went through the no-op (the seam moved)")
