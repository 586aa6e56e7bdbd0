"""Response protection any replica can apply without ever repeating a nonce.

When a context is a sealed ticket, every replica that opens the ticket holds the same server
keys. Sealing responses with the context's own send counter (``ctx.wrap``) would then make two
replicas seal under one (key, nonce). Instead a response is sealed under a key and nonce that
depend only on *the call it answers*:

* The record number of a response message is ``call_seq:u64 || index:u32`` (96 bits): the
  call's sequence number -- the client's own, accepted once cluster-wide because every replica
  claims it in the shared replay store before running the call -- and the message's position
  in the response stream. No two responses of any replica share it.
* The nonce is that record number XORed into a secret IV, and keys change every 2**24 calls:
  TLS 1.3's per-record nonce (RFC 8446 §5.3) and key update limit (§5.5), with the keys and
  IV of each epoch from HKDF-Expand-Label (RFC 8446 §7.1) over the context's server-to-client
  direction secret (``SecurityContext.export_keying_material``, label ``rpcsec resp``).

Tokens (``_wire``): ``kind:u8 | AES-256-GCM(payload)`` for PRIVACY, ``kind:u8 | GMAC tag[16] |
payload`` for INTEGRITY (RFC 4543), ``END_MARKER_KIND | tag`` for a stream's end and a
refusal's signed "did not run" (index 0xFFFFFFFF, never a message's), and the signed outcome
of a call (``_call_status``, index 0xFFFFFFFE). The AAD is the kind byte
and the message's ``_wire`` AAD, so a token cannot change kind, call, method or position.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rpcsec.sspi import (
    InvalidTokenError,
    MessageAlteredError,
    SecurityContext,
    SecurityError,
    _fresh_bytes,
    hkdf_expand_label,
)
from rpcsec.sspi._protection import EPOCH_BITS, LARGE_MESSAGE

from ._call_status import STATUS_INDEX
from ._calls import CallProtection, ClientCallProtection
from ._client_errors import as_rpc_error
from ._wire import END, END_MARKER_KIND, SEALED_KIND, SIGNED_KIND, position

__all__ = ["RESPONSE_LABEL", "ResponseKeys", "TicketClientProtection", "TicketServerProtection"]

RESPONSE_LABEL = b"rpcsec resp"
_NOT_RUN_INDEX = b"\xff\xff\xff\xff"
_TAG = 16
_KEEP_EPOCHS = 4
_SEALED = bytes((SEALED_KIND,))
_SIGNED = bytes((SIGNED_KIND,))
_END = bytes((END_MARKER_KIND,))
_MIN_TOKEN = 9 + _TAG  # a core wrap token's header (kind:u8 | seq:u64) and tag
_LARGE = _fresh_bytes.LARGE


class ResponseKeys:
    """The response keys of one context: AES-256-GCM per epoch of 2**24 calls."""

    __slots__ = ("_cache", "_lock", "_secret")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError("response secret must be 32 bytes")
        self._secret = secret
        self._cache: dict[bytes, tuple[AESGCM, int, bytes]] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, context: SecurityContext) -> ResponseKeys:
        """From an established context (both ends derive the same keys)."""
        return cls(context.export_keying_material(RESPONSE_LABEL, 32, server_to_client=True))

    def key(self, call_seq: bytes, index: bytes) -> tuple[AESGCM, bytes]:
        """The AEAD and nonce of the record (call_seq, index)."""
        epoch = call_seq[:5]  # call_seq >> 24
        entry = self._cache.get(epoch)
        if entry is None:
            entry = self._derive(epoch)
        return entry[0], (entry[1] ^ int.from_bytes(call_seq + index, "big")).to_bytes(12, "big")

    def _gmac(
        self, call_seq: bytes, nonce: bytes, pieces: tuple[Any, ...], tag: bytes | None = None
    ) -> bytes:
        """GMAC (RFC 4543) over ``pieces`` as if joined, without joining a large payload into
        them -- the tag ``AESGCM.encrypt(nonce, b"", b"".join(pieces))`` gives; checks ``tag``
        (``InvalidTag``) if given."""
        epoch = call_seq[:5]
        entry = self._cache.get(epoch) or self._derive(epoch)
        if tag is None:
            encryptor = Cipher(algorithms.AES(entry[2]), modes.GCM(nonce)).encryptor()
            for piece in pieces:
                encryptor.authenticate_additional_data(piece)
            encryptor.finalize()
            return encryptor.tag
        decryptor = Cipher(algorithms.AES(entry[2]), modes.GCM(nonce, tag)).decryptor()
        for piece in pieces:
            decryptor.authenticate_additional_data(piece)
        decryptor.finalize()
        return tag

    def _derive(self, epoch: bytes) -> tuple[AESGCM, int, bytes]:
        secret = hkdf_expand_label(self._secret, b"resp epoch" + epoch, 32)
        key = hkdf_expand_label(secret, b"key", 32)
        iv = int.from_bytes(hkdf_expand_label(secret, b"iv", 12), "big")
        entry = (AESGCM(key), iv, key)
        with self._lock:
            if len(self._cache) >= _KEEP_EPOCHS:
                self._cache.pop(min(self._cache), None)
            self._cache[epoch] = entry
        return entry

    def __repr__(self) -> str:
        return "<response keys hidden>"

    # -- tokens ------------------------------------------------------------------------------

    def seal(self, aad: bytes, call_seq: bytes, pos: bytes, payload: bytes, encrypt: bool):
        return self.seal_record(
            call_seq, int.from_bytes(call_seq + pos[1:5], "big"), aad, payload, encrypt
        )

    def seal_record(
        self, call_seq: bytes, record: int, aad: bytes, payload: bytes, encrypt: bool
    ) -> bytes:
        """``seal`` for a caller that has the record number (``call_seq << 32 | index``) as an
        int already (the server's per-call path: one frame, no key object)."""
        try:
            aead, iv, _ = self._cache[call_seq[:5]]
        except KeyError:
            aead, iv, _ = self._derive(call_seq[:5])
        nonce = (iv ^ record).to_bytes(12, "big")
        if len(payload) >= _LARGE:
            # A large message is encrypted straight into its token (one pass over it, not
            # three), or authenticated without being joined to its AAD.
            if encrypt:
                return _fresh_bytes.sealed(aead, nonce, _SEALED, payload, _SEALED + aad)
            tag = self._gmac(call_seq, nonce, (_SIGNED, aad, payload))
            return b"".join((_SIGNED, tag, payload))
        if encrypt:
            return _SEALED + aead.encrypt(nonce, payload, _SEALED + aad)
        return _SIGNED + aead.encrypt(nonce, b"", _SIGNED + aad + payload) + payload

    def open(self, aad: bytes, call_seq: bytes, pos: bytes, token: bytes, encrypt: bool) -> bytes:
        if not token:
            raise InvalidTokenError("message is not a protected token")
        kind = token[:1]
        if kind != (_SEALED if encrypt else _SIGNED):
            if kind in (_SEALED, _SIGNED):
                raise MessageAlteredError("message protection does not match the expected level")
            raise InvalidTokenError("message token has the wrong type")
        if len(token) < 1 + _TAG:
            raise InvalidTokenError("message token is truncated")
        aead, nonce = self.key(call_seq, pos[1:5])
        large = len(token) >= _LARGE
        try:
            if encrypt:
                if large:  # from a view (slicing would copy it) straight into the plaintext
                    return _fresh_bytes.opened(aead, nonce, memoryview(token)[1:], _SEALED + aad)
                return aead.decrypt(nonce, token[1:], _SEALED + aad)
            payload = token[1 + _TAG :]
            if large:
                self._gmac(call_seq, nonce, (_SIGNED, aad, payload), bytes(token[1 : 1 + _TAG]))
            else:
                aead.decrypt(nonce, token[1 : 1 + _TAG], _SIGNED + aad + payload)
            return payload
        except InvalidTag:
            raise MessageAlteredError("message failed its integrity check") from None

    def opener(
        self, prefix: bytes, pos: bytes, suffix: bytes, encrypt: bool
    ) -> Callable[[bytes, bytes], bytes | None]:
        """``open`` of the message at ``pos`` of every call of one method (``prefix``: its
        MSG_AAD prefix; ``suffix``: ``OUTCOME_OK`` or b""), in one frame: ``opened(call_seq,
        token)`` is the payload, or None for any token that does not open -- the caller then
        takes the full path, whose ``open`` raises the typed error. Nothing changes either way
        (responses keep no state), so trying a token twice is harmless."""
        kind = _SEALED if encrypt else _SIGNED
        head = kind + prefix
        tail = pos + suffix
        index = int.from_bytes(pos[1:5], "big")
        cache, derive = self._cache, self._derive

        def opened(call_seq: bytes, token: bytes) -> bytes | None:
            if token[:1] != kind or len(token) < 1 + _TAG:
                return None
            epoch = call_seq[:5]
            entry = cache.get(epoch)
            if entry is None:
                entry = derive(epoch)
            nonce = (entry[1] ^ (int.from_bytes(call_seq, "big") << 32 | index)).to_bytes(12, "big")
            try:
                if encrypt:
                    return entry[0].decrypt(nonce, token[1:], head + call_seq + tail)
                payload = token[1 + _TAG :]
                entry[0].decrypt(nonce, token[1 : 1 + _TAG], head + call_seq + tail + payload)
                return payload
            except InvalidTag:
                return None

        return opened

    def mark(self, aad: bytes, call_seq: bytes, index: bytes) -> bytes:
        aead, nonce = self.key(call_seq, index)
        return _END + aead.encrypt(nonce, b"", _END + aad)

    def check_mark(self, aad: bytes, call_seq: bytes, index: bytes, token: bytes) -> None:
        if not isinstance(token, bytes) or len(token) != 1 + _TAG or token[:1] != _END:
            raise InvalidTokenError("signature token is malformed")
        aead, nonce = self.key(call_seq, index)
        try:
            aead.decrypt(nonce, token[1:], _END + aad)
        except InvalidTag:
            raise MessageAlteredError("signature does not verify") from None


class TicketServerProtection(CallProtection):
    """The server's ``CallProtection`` of a ticket context: requests are opened with the
    context's keys (the client is their only sender); responses are sealed with
    ``ResponseKeys``.

    ``receive`` caches the epoch key of the client's messages (``SecurityContext.receive_key``:
    epoch, AEAD, IV), so a request in that epoch is opened with one AEAD call on the core's
    token layout (``rpcsec.sspi._context``: ``kind:u8 | seq:u64``, then ciphertext+tag, or tag
    then data authenticated with header + aad + data). Anything else -- another epoch, a
    malformed or very large token, a native GSS context (``receive`` None) -- goes through
    ``SecurityContext.unwrap``, which also re-caches the key once a new epoch verified. The
    server core opens a call's first request the same way, inline (``_server_core``). A ticket
    context needs no receive window here: its requests are claimed in the replay store."""

    __slots__ = ("receive", "responses")

    def __init__(self, context: SecurityContext, handle: bytes, responses: ResponseKeys) -> None:
        super().__init__(context, handle)
        self.responses = responses
        self.receive: tuple[int, Any, int] | None = None

    def prime(self) -> None:
        """Cache the first epoch's key (every context starts there; a later one re-caches)."""
        self.receive = self.context.receive_key(0)

    def verified(self, seq: int) -> None:
        """A request numbered ``seq`` verified through ``unwrap``: cache its epoch's key if
        it is newer than the cached one (a late request of the last epoch does not evict it)."""
        receive = self.receive
        if receive is None or receive[0] < seq >> EPOCH_BITS:
            self.receive = self.context.receive_key(seq)

    def open(
        self,
        prefix: bytes,
        call_seq: bytes,
        pos: bytes,
        token: bytes,
        encrypt: bool,
        suffix: bytes = b"",
    ) -> bytes:
        receive = self.receive
        if (
            receive is not None
            and _MIN_TOKEN <= len(token) < LARGE_MESSAGE
            and token[0] == (SEALED_KIND if encrypt else SIGNED_KIND)
        ):
            seq = int.from_bytes(token[1:9], "big")
            epoch, aead, iv = receive
            if seq >> EPOCH_BITS == epoch:
                nonce = (iv ^ seq).to_bytes(12, "big")
                aad = token[:9] + prefix + call_seq + pos + suffix
                try:
                    if encrypt:
                        return aead.decrypt(nonce, token[9:], aad)  # type: ignore[no-any-return]
                    data = token[_MIN_TOKEN:]
                    aead.decrypt(nonce, token[9:_MIN_TOKEN], aad + data)
                    return data
                except InvalidTag:
                    raise MessageAlteredError("message failed its integrity check") from None
        data = CallProtection.open(self, prefix, call_seq, pos, token, encrypt, suffix)
        self.verified(int.from_bytes(token[1:9], "big"))
        return data

    def seal(
        self,
        prefix: bytes,
        call_seq: bytes,
        pos: bytes,
        payload: bytes,
        encrypt: bool,
        suffix: bytes = b"",
    ) -> bytes:
        return self.responses.seal_record(
            call_seq,
            int.from_bytes(call_seq + pos[1:5], "big"),
            prefix + call_seq + pos + suffix,
            payload,
            encrypt,
        )

    def end_marker(
        self, prefix: bytes, call_seq: bytes, direction: int, count: int, suffix: bytes = b""
    ) -> bytes:
        pos = position(direction | END, count)
        return self.responses.mark(prefix + call_seq + pos + suffix, call_seq, pos[1:5])

    def not_run(self, prefix: bytes, call_seq: bytes) -> bytes:
        return self.responses.mark(prefix + call_seq, call_seq, _NOT_RUN_INDEX)

    def sign_status(self, aad: bytes, call_seq: bytes) -> bytes:
        return self.responses.mark(aad, call_seq, STATUS_INDEX)


class TicketClientProtection(ClientCallProtection):
    """The client's ``CallProtection`` of a ticket context: requests sealed with the context,
    responses opened with ``ResponseKeys``."""

    __slots__ = ("responses",)

    def __init__(self, context: SecurityContext, handle: bytes, responses: ResponseKeys) -> None:
        super().__init__(context, handle)
        self.responses = responses

    def open(
        self,
        prefix: bytes,
        call_seq: bytes,
        pos: bytes,
        token: bytes,
        encrypt: bool,
        suffix: bytes = b"",
    ) -> bytes:
        try:
            return self.responses.open(
                prefix + call_seq + pos + suffix, call_seq, pos, token, encrypt
            )
        except SecurityError as exc:
            raise as_rpc_error(exc) from None

    def check_end(
        self,
        prefix: bytes,
        call_seq: bytes,
        direction: int,
        count: int,
        token: bytes,
        suffix: bytes = b"",
    ) -> None:
        pos = position(direction | END, count)
        try:
            self.responses.check_mark(prefix + call_seq + pos + suffix, call_seq, pos[1:5], token)
        except SecurityError as exc:
            raise as_rpc_error(exc) from None

    def check_not_run(self, prefix: bytes, call_seq: bytes, token: bytes) -> None:
        self.responses.check_mark(prefix + call_seq, call_seq, _NOT_RUN_INDEX, token)

    def check_status(self, aad: bytes, call_seq: bytes, token: bytes) -> None:
        self.responses.check_mark(aad, call_seq, STATUS_INDEX, token)
