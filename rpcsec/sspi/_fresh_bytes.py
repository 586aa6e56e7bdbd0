"""Large sealed and opened messages written exactly once, straight into the ``bytes`` they end as.

gRPC (sync and aio) sends only ``bytes`` (a ``bytearray`` or ``memoryview`` is refused with a
``TypeError``), and ``AESGCM.encrypt`` / ``decrypt`` return a fresh ``bytes`` that pyo3 first
zero-fills. So ``header + aead.encrypt(...)`` touches every byte of a 1 MiB message three times
(zero-fill, cipher, concatenation) where one pass does: the cipher writing into the token.

``sealed`` and ``opened`` do exactly that with ``AESGCM.encrypt_into`` / ``decrypt_into``
(``cryptography`` 50 has them; without them, the fallback) over a ``bytes`` object made
uninitialised by ``PyBytes_FromStringAndSize(NULL, n)`` -- what every C extension does to build
a ``bytes`` in place: the object is new, unshared and unhashed until it is returned. The
writable view over its storage (``PyMemoryView_FromMemory``) has exactly ``n`` bytes and the
cipher refuses a buffer of any other length, so nothing outside the object is ever written; the
view is released before the object escapes, and an object whose decryption failed is dropped
unseen. The mechanism is CPython's; it is checked once at import, and anywhere it does not hold
(another interpreter, a changed object layout) both functions fall back to the plain calls,
with the same results.

Only for messages of at least ``LARGE`` bytes: below that the copies cost less than the calls.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["LARGE", "TAG_SIZE", "in_place", "opened", "sealed"]

LARGE = 64 * 1024
TAG_SIZE = 16
_PYBUF_WRITE = 0x200


def _bind() -> tuple[Any, Any, int] | None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV

    if sys.implementation.name != "cpython" or not all(
        hasattr(aead, "encrypt_into") and hasattr(aead, "decrypt_into")
        for aead in (AESGCM, AESGCMSIV)
    ):
        return None
    try:
        import ctypes

        # Our own prototypes (PYFUNCTYPE: called with the GIL held), never a changed
        # restype on the process-wide ``ctypes.pythonapi`` attributes other code may use.
        api = ctypes.pythonapi
        size, pointer, obj = ctypes.c_ssize_t, ctypes.c_void_p, ctypes.py_object
        new = ctypes.PYFUNCTYPE(obj, pointer, size)(("PyBytes_FromStringAndSize", api))
        view = ctypes.PYFUNCTYPE(obj, pointer, size, ctypes.c_int)(("PyMemoryView_FromMemory", api))
    except (ImportError, AttributeError, ValueError):  # pragma: no cover - no CPython C API
        return None
    offset = bytes.__basicsize__ - 1  # offsetof(PyBytesObject, ob_sval)
    # The layout check: a fresh object written through the view must read back as written.
    probe = new(None, 64)
    window = view(id(probe) + offset, 64, _PYBUF_WRITE)
    try:
        window[:] = bytes(range(64))
    finally:
        window.release()
    if type(probe) is not bytes or probe != bytes(range(64)):  # pragma: no cover
        return None
    return new, view, offset


_BOUND = _bind()
in_place = _BOUND is not None
"""True where ``sealed`` / ``opened`` write in place (CPython); False: they copy like before."""


def _fresh(size: int) -> tuple[bytes, memoryview]:
    """A new uninitialised ``bytes`` of ``size`` (> 1: 0 and 1 are shared singletons) and a
    writable view of exactly its storage."""
    new, view, offset = _BOUND  # type: ignore[misc]
    out = new(None, size)
    return out, view(id(out) + offset, size, _PYBUF_WRITE)


def sealed(aead: Any, nonce: bytes, header: bytes, plaintext: Any, aad: bytes) -> bytes:
    """``header + aead.encrypt(nonce, plaintext, aad)``, written once (EncryptMessage's
    STREAM_HEADER | DATA | TRAILER in one buffer). ``aead``: an ``AESGCM`` or ``AESGCMSIV``."""
    size = len(header) + len(plaintext) + TAG_SIZE
    if _BOUND is None or len(plaintext) < LARGE:
        return header + aead.encrypt(nonce, plaintext, aad)
    out, window = _fresh(size)
    start = len(header)
    body = window[start:]
    try:
        window[:start] = header
        aead.encrypt_into(nonce, plaintext, aad, body)
    finally:
        body.release()
        window.release()
    return out


def opened(aead: Any, nonce: bytes, token: Any, aad: bytes) -> bytes:
    """``aead.decrypt(nonce, token, aad)`` written once into the returned ``bytes``
    (DecryptMessage); raises ``InvalidTag`` like it (the partly written object is dropped
    unseen). ``token``: bytes or a memoryview, ciphertext then tag."""
    size = len(token) - TAG_SIZE
    if _BOUND is None or size < LARGE:
        result: bytes = aead.decrypt(nonce, token, aad)
        return result
    out, window = _fresh(size)
    try:
        aead.decrypt_into(nonce, token, aad, window)
    finally:
        window.release()
    return out
