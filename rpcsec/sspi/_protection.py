"""Per-message protection once a context is established.

Every package ends its handshake with either two direction secrets (x509 from the TLS 1.3
exporter, ntlm from its exported session key) or a native per-message mechanism (kerberos
GSS wrap/get_mic). ``MessageProtector`` is the interface; ``AeadProtector`` is the standard one.

``AeadProtector`` follows published designs only:

* AES-256-GCM for privacy and AES-GMAC for integrity, as ESP does (RFC 4106, RFC 4543);
* the nonce is the per-direction sequence number XORed into a secret IV, as TLS 1.3 does
  (RFC 8446 §5.3) -- never random, unique because a sequence number is never sent twice;
* keys and IVs derived with HKDF (RFC 5869) labels in the style of RFC 8446 §7.1, and a new
  key every 2**24 messages (RFC 8446 §5.5 limits AES-GCM keys to 2**24.5 records), each
  epoch's secret expanded from the direction secret with the epoch in its label, so both sides
  derive it from the sequence number alone, in constant time;
* datagram contexts, whose sequence numbers the *caller* supplies, use AES-256-GCM-SIV
  (RFC 8452) so that a caller reusing a number cannot break confidentiality or forge.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

from . import _fresh_bytes
from ._errors import ContextExpiredError, MessageAlteredError

__all__ = [
    "EPOCH_BITS",
    "LARGE_MESSAGE",
    "MAX_EPOCH_LEAD",
    "MAX_SEQUENCE",
    "TAG_SIZE",
    "AeadProtector",
    "MessageProtector",
    "hkdf_expand_label",
    "session_key_kdf",
]

TAG_SIZE = 16
# Above this size, integrity tags are computed incrementally over the pieces and sealed tokens
# are written in place, so a large payload is never copied just to be authenticated.
LARGE_MESSAGE = _fresh_bytes.LARGE
EPOCH_BITS = 24  # a fresh key every 2**24 messages per direction
MAX_EPOCH_LEAD = 2
"""How many epochs beyond the last *verified* one a peer's message may name. A peer advances
one sequence number per message, so in practice it leads by at most one epoch; without a bound
a forged sequence number near 2**64 would make the receiver walk ~2**40 KeyUpdate links (one
unauthenticated message pinning a CPU and the direction's lock)."""
MAX_SEQUENCE = (1 << 64) - 1
_KEEP_EPOCHS = 3


def session_key_kdf(session_key: bytes, label: bytes) -> bytes:
    """A 32-byte key from an authentication protocol's session key: the SP 800-108
    counter-mode KDF with HMAC-SHA256, the way SMB 3 derives its signing and encryption keys
    from the NTLM or Kerberos session key (MS-SMB2 §3.1.4.2)."""
    return KBKDFHMAC(
        algorithm=hashes.SHA256(),
        mode=Mode.CounterMode,
        length=32,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=label,
        context=b"",
        fixed=None,
    ).derive(session_key)


def hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label of RFC 8446 §7.1 with the label prefix "rpcsec "."""
    full = b"rpcsec " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


class MessageProtector(ABC):
    """One established context's per-message primitive, both directions.

    ``seq`` is the sender's sequence number; ``aad`` is authenticated, never encrypted. The
    core builds and parses token headers and enforces ordering; a protector only seals and
    opens. Failure to open raises ``MessageAlteredError`` and changes no state.
    """

    signature_size: int = TAG_SIZE
    trailer_size: int = TAG_SIZE
    accepts_views: bool = False
    """True if ``unseal`` takes a memoryview (saves copying large tokens); else it gets bytes."""

    @abstractmethod
    def sign(self, seq: int, aad: bytes, data: bytes) -> bytes:
        """The integrity tag over ``aad`` and ``data`` (MakeSignature)."""

    @abstractmethod
    def verify(self, seq: int, aad: bytes, data: bytes, tag: bytes) -> None:
        """Check a tag made by the peer (VerifySignature)."""

    @abstractmethod
    def seal(self, seq: int, aad: bytes, plaintext: bytes) -> bytes:
        """Ciphertext followed by the tag (EncryptMessage)."""

    @abstractmethod
    def unseal(self, seq: int, aad: bytes, sealed: bytes | memoryview) -> bytes:
        """Plaintext of a peer's sealed message (DecryptMessage)."""

    def seal_token(self, seq: int, header: bytes, aad: bytes, plaintext: bytes) -> bytes:
        """``header + seal(seq, header + aad, plaintext)`` as one ``bytes`` (gRPC and sockets
        take only ``bytes``, so writing in place into a bytearray would only add a copy)."""
        return header + self.seal(seq, header + aad, plaintext)

    def secrets(self) -> tuple[bytes, bytes]:
        """The (outbound, inbound) secrets, for ExportSecurityContext; empty if not exportable."""
        return b"", b""

    def resume(self, highest_inbound: int) -> None:  # noqa: B027 - optional hook
        """ImportSecurityContext: the exporter had verified peer messages up to this number
        (nothing to do for protectors that keep no receive-side state)."""


class _Direction:
    """Keys of one direction: the AEAD of each epoch, derived lazily and cached."""

    __slots__ = ("_cache", "_datagram", "_inbound", "_lock", "_secret", "_verified")

    def __init__(self, secret: bytes, datagram: bool, *, inbound: bool = False) -> None:
        if len(secret) != 32:
            raise ValueError("direction secret must be 32 bytes")
        self._secret = secret
        self._datagram = datagram
        self._inbound = inbound
        self._verified = 0  # highest epoch of a message that verified (inbound only)
        self._cache: dict[int, tuple[AESGCM | AESGCMSIV, int, bytes]] = {}
        self._lock = threading.Lock()

    def key(self, seq: int) -> tuple[AESGCM | AESGCMSIV, bytes]:
        if seq < 0 or seq > MAX_SEQUENCE:
            raise ContextExpiredError("sequence numbers exhausted: the context must be renewed")
        epoch = seq >> EPOCH_BITS
        entry = self._cache.get(epoch)
        if entry is None:
            if self._inbound and not self._datagram and epoch > self._verified + MAX_EPOCH_LEAD:
                raise MessageAlteredError("message sequence number is implausibly far ahead")
            entry = self._derive(epoch)
        return entry[0], (entry[1] ^ seq).to_bytes(12, "big")

    def epoch_key(self, seq: int) -> tuple[int, AESGCM | AESGCMSIV, int]:
        """(epoch, AEAD, IV) of ``seq``'s epoch, with ``key``'s checks (range, lead); the
        nonce of any ``seq`` in that epoch is ``(IV ^ seq).to_bytes(12, "big")``."""
        self.key(seq)
        epoch = seq >> EPOCH_BITS
        entry = self._cache.get(epoch) or self._derive(epoch)
        return epoch, entry[0], entry[1]

    def verified(self, seq: int) -> None:
        """A message numbered ``seq`` verified: later ones may lead from its epoch."""
        epoch = seq >> EPOCH_BITS
        if epoch > self._verified:
            self._verified = epoch

    def _derive(self, epoch: int) -> tuple[AESGCM | AESGCMSIV, int, bytes]:
        # Each epoch's secret comes straight from the base secret (one HKDF-Expand-Label with
        # the epoch in the label), never by walking a chain: the sequence number -- hence the
        # epoch -- arrives before the tag is checked, so a forged far-future number must cost
        # no more than any other.
        secret = hkdf_expand_label(self._secret, b"epoch" + epoch.to_bytes(5, "big"), 32)
        key = hkdf_expand_label(secret, b"key", 32)
        iv = int.from_bytes(hkdf_expand_label(secret, b"iv", 12), "big")
        aead: AESGCM | AESGCMSIV = AESGCMSIV(key) if self._datagram else AESGCM(key)
        entry = (aead, iv, key)
        with self._lock:
            if len(self._cache) >= _KEEP_EPOCHS:
                self._cache.pop(min(self._cache), None)
            self._cache[epoch] = entry
        return entry

    def gmac(self, seq: int, pieces: tuple[bytes, ...], tag: bytes | None = None) -> bytes:
        """GMAC (RFC 4543) over ``pieces`` without joining them; checks ``tag`` if given.

        Only for GCM directions (datagram contexts use GCM-SIV, which has no streaming form).
        """
        _, nonce = self.key(seq)  # checks the sequence number; derives the epoch if needed
        epoch = seq >> EPOCH_BITS
        entry = self._cache.get(epoch) or self._derive(epoch)
        key = entry[2]
        if tag is None:
            encryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
            for piece in pieces:
                encryptor.authenticate_additional_data(piece)
            encryptor.finalize()
            return encryptor.tag
        decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce, bytes(tag))).decryptor()
        for piece in pieces:
            decryptor.authenticate_additional_data(piece)
        decryptor.finalize()
        return b""

    def __repr__(self) -> str:
        return "<direction keys hidden>"


class AeadProtector(MessageProtector):
    """AES-256-GCM / GMAC (or GCM-SIV for datagram contexts) keyed per direction."""

    __slots__ = ("_datagram", "_in", "_out", "_secrets")
    accepts_views = True

    def __init__(self, outbound_secret: bytes, inbound_secret: bytes, *, datagram: bool = False):
        self._datagram = datagram
        self._out = _Direction(outbound_secret, datagram)
        self._in = _Direction(inbound_secret, datagram, inbound=True)
        self._secrets = (outbound_secret, inbound_secret)

    def sign(self, seq: int, aad: bytes, data: bytes) -> bytes:
        if len(data) >= LARGE_MESSAGE and not self._datagram:
            return self._out.gmac(seq, (aad, data))
        aead, nonce = self._out.key(seq)
        return aead.encrypt(nonce, b"", aad + data if data else aad)

    def verify(self, seq: int, aad: bytes, data: bytes, tag: bytes) -> None:
        if len(tag) != TAG_SIZE:
            raise MessageAlteredError("message signature has the wrong length")
        try:
            if len(data) >= LARGE_MESSAGE and not self._datagram:
                self._in.gmac(seq, (aad, data), tag)
            else:
                aead, nonce = self._in.key(seq)
                aead.decrypt(nonce, tag, aad + data if data else aad)
        except InvalidTag:
            raise MessageAlteredError("message signature does not verify") from None
        self._in.verified(seq)

    def seal(self, seq: int, aad: bytes, plaintext: bytes) -> bytes:
        aead, nonce = self._out.key(seq)
        return aead.encrypt(nonce, plaintext, aad)

    def seal_token(self, seq: int, header: bytes, aad: bytes, plaintext: bytes) -> bytes:
        # A large message is encrypted straight into its token (``_fresh_bytes``): one pass
        # over it instead of three (zero-fill, cipher, header concatenation).
        if len(plaintext) < LARGE_MESSAGE:
            return header + self.seal(seq, header + aad, plaintext)
        aead, nonce = self._out.key(seq)
        return _fresh_bytes.sealed(aead, nonce, header, plaintext, header + aad)

    def unseal(self, seq: int, aad: bytes, sealed: bytes | memoryview) -> bytes:
        if len(sealed) < TAG_SIZE:
            raise MessageAlteredError("sealed message is shorter than its tag")
        aead, nonce = self._in.key(seq)
        try:
            if len(sealed) > LARGE_MESSAGE:
                plaintext = _fresh_bytes.opened(aead, nonce, sealed, aad)
            else:
                plaintext = aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise MessageAlteredError("sealed message does not verify") from None
        self._in.verified(seq)
        return plaintext

    def secrets(self) -> tuple[bytes, bytes]:
        return self._secrets

    def receive_key(self, seq: int) -> tuple[int, AESGCM | AESGCMSIV, int]:
        """(epoch, AEAD, IV) opening the peer's messages of ``seq``'s epoch (checked and derived
        as ``unseal`` / ``verify`` do), for a binding that caches the current epoch's key and
        calls the AEAD itself on this module's token layout. Take it only for a ``seq`` that
        verified (its epoch then counts as verified: later ones may lead from it)."""
        key = self._in.epoch_key(seq)
        self._in.verified(seq)
        return key

    def outbound_epochs(
        self,
    ) -> tuple[dict[int, tuple[AESGCM | AESGCMSIV, int, bytes]], Callable[[int], Any]]:
        """The outbound direction's epoch cache (epoch -> (AEAD, IV as an int, key)) and its
        ``key(seq) -> (AEAD, nonce)`` (checks the number, derives a missing epoch), for a
        caller that inlines ``seal``/``sign`` of small messages on its hot path
        (``SecurityContext.wrapper``). Stream contexts only: datagram nonces are the caller's."""
        if self._datagram:
            raise ValueError("datagram contexts take caller-supplied sequence numbers")
        return self._out._cache, self._out.key

    def resume(self, highest_inbound: int) -> None:
        if highest_inbound >= 0:
            self._in.verified(highest_inbound)

    @classmethod
    def from_session_key(
        cls, session_key: bytes, label: bytes, *, client: bool, datagram: bool = False
    ) -> AeadProtector:
        """Per-direction keys from a package's session key (``session_key_kdf`` with
        ``label + b" c2s"`` / ``b" s2c"``), for packages whose native per-message protection
        cannot serve out-of-order calls (NTLM's RC4 keystream is strictly ordered)."""
        c2s = session_key_kdf(session_key, label + b" c2s")
        s2c = session_key_kdf(session_key, label + b" s2c")
        outbound, inbound = (c2s, s2c) if client else (s2c, c2s)
        return cls(outbound, inbound, datagram=datagram)

    def __repr__(self) -> str:
        return "AeadProtector(<keys hidden>)"
