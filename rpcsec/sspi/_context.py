"""Security contexts: InitializeSecurityContext / AcceptSecurityContext and the message calls.

A context is a sans-IO state machine: ``step(token) -> StepResult`` until ``OK``; then
``make_signature`` / ``verify_signature`` / ``encrypt_message`` / ``decrypt_message`` (buffer
level, as the seed's Sender and Receiver) or the ``sign`` / ``verify`` / ``wrap`` / ``unwrap``
conveniences. Transitions live in one table; an unknown transition raises
``InvalidStateError``; a failed handshake is sticky (every later call raises).

Wire format of the tokens this module produces (all integers big-endian)::

    MIC   : 0x4D | seq:u64 | tag                      (make_signature, sign)
    WRAP  : 0x57 | seq:u64 | ciphertext | tag         (encrypt_message, wrap)
    SIGNED: 0x53 | seq:u64 | tag | plaintext          (wrap with QOP.WRAP_NO_ENCRYPT)
    STREAM: 0x17 | seq:u64 | length:u32 | ciphertext | tag   (stream contexts)

The 9- (or 13-) byte header is authenticated with the message, so the sequence number and
the kind cannot be changed. Ordering (replay window or strict sequence) is checked before the
cryptographic check and recorded only after it passed.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import itertools
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._attributes import (
    ContextAttribute,
    ContextFlags,
    Lifespan,
    MessageInfo,
    Names,
    SessionKey,
    Sizes,
    StreamSizes,
)
from ._buffers import BufferType, SecBuffer
from ._credentials import Credentials
from ._errors import (
    ContextExpiredError,
    IncompleteMessageError,
    InsufficientAttributesError,
    InvalidStateError,
    InvalidTokenError,
    MessageAlteredError,
    QopNotSupportedError,
    SecurityError,
    UnsupportedFunctionError,
)
from ._export import ExportedContext, ExportedPeer
from ._flags import (
    NOT_IMPLEMENTED,
    QOP,
    ContextReq,
    CredentialUse,
    ImpersonationLevel,
    ProtectionLevel,
)
from ._package import Mechanism, MechanismResult
from ._protection import (
    EPOCH_BITS,
    LARGE_MESSAGE,
    MAX_SEQUENCE,
    AeadProtector,
    MessageProtector,
    hkdf_expand_label,
)
from ._replay import DEFAULT_WINDOW, ReceiveOrder, ReplayWindow, SequenceCounter
from ._status import SecStatus
from ._target import check_target_name

__all__ = [
    "ClientContext",
    "ContextState",
    "SecurityContext",
    "ServerContext",
    "StepResult",
    "accept_security_context",
    "import_security_context",
    "initialize_security_context",
]

_KIND_MIC = 0x4D
_KIND_WRAP = 0x57
_KIND_SIGNED = 0x53
_KIND_STREAM = 0x17
HEADER_SIZE = 9
_HEADER = struct.Struct(">BQ")  # kind:u8 | seq:u64
_QOP_DEFAULT = int(QOP.DEFAULT)
_QOP_NO_ENCRYPT = int(QOP.WRAP_NO_ENCRYPT)
STREAM_HEADER_SIZE = 13
MAX_STREAM_RECORD = 1 << 24


class ContextState(enum.Enum):
    NEW = "new"
    IN_PROGRESS = "in-progress"
    ESTABLISHED = "established"
    FAILED = "failed"
    EXPORTED = "exported"
    DELETED = "deleted"


class _Event(enum.Enum):
    STEP_CONTINUE = "step-continue"
    STEP_COMPLETE = "step-complete"
    STEP_FAILED = "step-failed"
    EXPORT = "export"
    DELETE = "delete"


# The whole state machine of a context (h11 style): (state, event) -> next state.
_TRANSITIONS: dict[tuple[ContextState, _Event], ContextState] = {
    (ContextState.NEW, _Event.STEP_CONTINUE): ContextState.IN_PROGRESS,
    (ContextState.NEW, _Event.STEP_COMPLETE): ContextState.ESTABLISHED,
    (ContextState.NEW, _Event.STEP_FAILED): ContextState.FAILED,
    (ContextState.IN_PROGRESS, _Event.STEP_CONTINUE): ContextState.IN_PROGRESS,
    (ContextState.IN_PROGRESS, _Event.STEP_COMPLETE): ContextState.ESTABLISHED,
    (ContextState.IN_PROGRESS, _Event.STEP_FAILED): ContextState.FAILED,
    (ContextState.NEW, _Event.DELETE): ContextState.DELETED,
    (ContextState.IN_PROGRESS, _Event.DELETE): ContextState.DELETED,
    (ContextState.ESTABLISHED, _Event.DELETE): ContextState.DELETED,
    (ContextState.ESTABLISHED, _Event.EXPORT): ContextState.EXPORTED,
    (ContextState.EXPORTED, _Event.DELETE): ContextState.DELETED,
    (ContextState.FAILED, _Event.DELETE): ContextState.DELETED,
    (ContextState.DELETED, _Event.DELETE): ContextState.DELETED,
}


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one InitializeSecurityContext / AcceptSecurityContext call returns."""

    status: SecStatus
    token: bytes | None

    @property
    def complete(self) -> bool:
        return self.status is SecStatus.OK


class SecurityContext:
    """State, flags and message protection common to client and server contexts."""

    is_client: bool = False

    def __init__(
        self,
        credentials: Credentials,
        requested: ContextReq,
        *,
        replay_window: int = DEFAULT_WINDOW,
        lifetime: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(credentials, Credentials):
            raise TypeError("credentials must come from acquire_credentials_handle()")
        if not isinstance(requested, ContextReq):
            raise TypeError("requested must be ContextReq flags")
        unsupported = requested & NOT_IMPLEMENTED
        if unsupported:
            raise ValueError(f"no rpcsec package implements {unsupported!r}")
        if lifetime is not None and lifetime <= 0:
            raise ValueError("lifetime must be positive")
        self.credentials = credentials
        self.package = credentials.package
        self.requested = requested.normalized()
        self._replay_window = replay_window
        self._lifetime = lifetime
        self._clock = clock
        self.state = ContextState.NEW
        self._mechanism: Mechanism | None = None
        self._result: MechanismResult | None = None
        self._protector: MessageProtector | None = None
        self._send_seq: itertools.count[int] = itertools.count(0)
        self._receive: ReceiveOrder | None = None
        self._expires_at: float | None = None
        self._started_at = clock()
        self._datagram = False
        self._stream = False
        self._confidential = False
        self._options: dict[str, Any] = {}

    # -- state machine -------------------------------------------------------------------

    def _transition(self, event: _Event) -> None:
        try:
            self.state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise InvalidStateError(
                f"cannot {event.value} a context in state {self.state.value}"
            ) from None

    def _new_mechanism(self) -> Mechanism:
        raise NotImplementedError

    def step(self, token: bytes | None = None) -> StepResult:
        """One leg of the handshake. Returns CONTINUE_NEEDED with a token to send, or OK (with a
        final token to send when not None). Any failure is sticky."""
        if self.state not in (ContextState.NEW, ContextState.IN_PROGRESS):
            raise InvalidStateError(f"cannot step a context in state {self.state.value}")
        if token is not None and not isinstance(token, bytes | bytearray | memoryview):
            raise TypeError("token must be bytes")
        if self._mechanism is None:
            # A caller's mistake (bad options, a malformed target name) stays a ValueError /
            # TypeError for the caller, not a token error blamed on the peer; a refusal by the
            # package (e.g. a delegation policy) fails the context like any other.
            try:
                self._mechanism = self._new_mechanism()
            except SecurityError:
                self._fail()
                raise
        try:
            out = self._mechanism.step(bytes(token) if token is not None else None)
            complete = self._mechanism.complete
            if complete:
                self._establish()
        except SecurityError:
            self._fail()
            raise
        except Exception as exc:  # a package bug must not look like success or leak natives
            self._fail()
            raise InvalidTokenError("handshake token rejected") from exc
        if complete:
            # Everything an established context needs is in the result; the handshake state
            # (a TLS object, the peer's parsed certificate chain) would only cost memory per
            # context for as long as the context lives.
            self._mechanism = None
            self._transition(_Event.STEP_COMPLETE)
            return StepResult(SecStatus.OK, out)
        self._transition(_Event.STEP_CONTINUE)
        return StepResult(SecStatus.CONTINUE_NEEDED, out)

    def _fail(self) -> None:
        self._transition(_Event.STEP_FAILED)
        self._mechanism = None

    def _establish(self) -> None:
        assert self._mechanism is not None
        result = self._mechanism.result
        if result is None:
            raise InvalidTokenError("package completed without a result")
        result = self._as_seen(result)
        self._result = result
        self._protector = result.protector
        granted = result.granted
        self._datagram = bool(granted & ContextReq.DATAGRAM)
        self._stream = bool(granted & ContextReq.STREAM)
        self._confidential = bool(granted & ContextReq.CONFIDENTIALITY)
        if granted & ContextReq.SEQUENCE_DETECT:
            self._receive = SequenceCounter(0)
        elif granted & ContextReq.REPLAY_DETECT:
            self._receive = ReplayWindow(self._replay_window)
        expiry = result.expires_at
        if self._lifetime is not None:
            own = self._started_at + self._lifetime
            expiry = own if expiry is None else min(expiry, own)
        self._expires_at = expiry

    def _as_seen(self, result: MechanismResult) -> MechanismResult:
        """The result as this side may see it. A server whose client allowed only ANONYMOUS
        gets the anonymous token (no name, groups, chain or delegated credentials) for every
        package: the package authenticated the client, but the client did not let the server
        know who it is (SECURITY_IMPERSONATION_LEVEL SecurityAnonymous)."""
        if self.is_client or result.impersonation_level is not ImpersonationLevel.ANONYMOUS:
            return result
        from rpcsec.security._token import AccessToken

        peer = result.peer
        anonymous = AccessToken.anonymous(self.package.name).replace(
            protection_level=peer.protection_level, expires_at=peer.expires_at
        )
        return dataclasses.replace(result, peer=anonymous, peer_native_name="")

    def delete(self) -> None:
        """DeleteSecurityContext: forget keys; every later call raises."""
        self._transition(_Event.DELETE)
        self._mechanism = None
        self._protector = None
        self._receive = None

    # -- established-context properties ----------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.state is ContextState.ESTABLISHED

    def _established(self) -> MechanismResult:
        if self.state is not ContextState.ESTABLISHED or self._result is None:
            if self.state is ContextState.DELETED:
                raise ContextExpiredError("context was deleted")
            if self.state is ContextState.EXPORTED:
                raise ContextExpiredError("context was exported: only the importer continues it")
            raise InvalidStateError(f"context is {self.state.value}, not established")
        return self._result

    @property
    def attributes(self) -> ContextReq:
        """The granted attributes (pfContextAttr). Compare them with ``requested``."""
        return self._established().granted

    @property
    def impersonation_level(self) -> ImpersonationLevel:
        return self._established().impersonation_level

    @property
    def peer(self) -> Any:
        """The peer's AccessToken: the client on a server, the proven server on a client."""
        return self._established().peer

    @property
    def expires_at(self) -> float | None:
        self._established()
        return self._expires_at

    @property
    def protection_level(self) -> ProtectionLevel:
        granted = self.attributes
        if granted & ContextReq.CONFIDENTIALITY:
            return ProtectionLevel.PRIVACY
        if granted & ContextReq.INTEGRITY:
            return ProtectionLevel.INTEGRITY
        return ProtectionLevel.NONE

    def require(self, required: ContextReq) -> None:
        """Raise ``InsufficientAttributesError`` unless every flag in ``required`` was granted."""
        missing = required.normalized() & ~self.attributes
        if missing:
            raise InsufficientAttributesError(f"context lacks required attributes: {missing!r}")

    def export_keying_material(
        self, label: bytes, length: int = 32, *, server_to_client: bool
    ) -> bytes:
        """Keying material for a protocol layered on this context, tied to one direction
        (the TLS exporter's idea, RFC 8446 §7.5): HKDF-Expand-Label (§7.1) of that direction's
        secret with ``label``. Both ends derive the same bytes. Raises ``InvalidStateError``
        for a package whose message keys are not direction secrets (kerberos GSS wrap).
        """
        self._established()
        protector = self._protector
        assert protector is not None
        outbound, inbound = protector.secrets()
        if not outbound or not inbound:
            raise InvalidStateError(f"package {self.package.name!r} has no direction secrets")
        ours = self.is_client is not server_to_client  # the client sends client-to-server
        secret = outbound if ours else inbound
        return hkdf_expand_label(secret, b"exporter " + bytes(label), length)

    def query_attributes(self, attribute: ContextAttribute) -> Any:
        """QueryContextAttributes."""
        result = self._established()
        protector = self._protector
        assert protector is not None
        if attribute is ContextAttribute.SIZES:
            return Sizes(
                max_token=self.package.max_token,
                max_signature=HEADER_SIZE + protector.signature_size,
                block_size=1,
                security_trailer=HEADER_SIZE + protector.trailer_size,
            )
        if attribute is ContextAttribute.STREAM_SIZES:
            return StreamSizes(
                header=STREAM_HEADER_SIZE,
                trailer=protector.trailer_size,
                max_message=MAX_STREAM_RECORD,
                buffers=4,
                block_size=1,
            )
        if attribute is ContextAttribute.NAMES:
            return Names(local=self.credentials.principal, peer=result.peer.principal)
        if attribute is ContextAttribute.NATIVE_NAMES:
            return Names(local=self.credentials.principal, peer=result.peer_native_name)
        if attribute is ContextAttribute.LIFESPAN:
            return Lifespan(start=self._started_at, expiry=self._expires_at)
        if attribute is ContextAttribute.FLAGS:
            return ContextFlags(requested=self.requested, granted=result.granted)
        if attribute is ContextAttribute.PACKAGE_INFO:
            return self.package.info()
        if attribute is ContextAttribute.SESSION_KEY:
            return SessionKey(result.session_key)
        if attribute is ContextAttribute.ACCESS_TOKEN:
            return result.peer
        raise ValueError(f"unknown context attribute {attribute!r}")

    # -- message protection ------------------------------------------------------------------

    def _ready(self) -> MessageProtector:
        protector = self._protector
        if protector is None:
            self._established()
            raise InvalidStateError("context has no message protection")
        expires = self._expires_at
        if expires is not None and self._clock() >= expires:
            raise ContextExpiredError("security context has expired")
        return protector

    def _next_seq(self, seq: int | None) -> int:
        if seq is None:
            if self._datagram:
                raise ValueError("datagram contexts need a caller-supplied sequence number")
            return next(self._send_seq)
        if not self._datagram:
            raise ValueError("only datagram contexts take a caller-supplied sequence number")
        if not isinstance(seq, int) or not 0 <= seq <= MAX_SEQUENCE:
            raise ValueError("sequence number must be an unsigned 64-bit integer")
        return seq

    def _header(self, kind: int, seq: int) -> bytes:
        try:
            return _HEADER.pack(kind, seq)
        except struct.error:
            raise _exhausted() from None

    def _parse_header(self, token: bytes, kind: int, minimum: int, record: bool = True) -> int:
        if len(token) < minimum:
            raise InvalidTokenError("message token is truncated")
        if token[0] != kind:
            raise InvalidTokenError("message token has the wrong type")
        seq = int.from_bytes(token[1:9], "big")
        receive = self._receive
        if receive is not None and record:
            receive.check(seq)
        return seq

    def _record(self, seq: int) -> None:
        receive = self._receive
        if receive is not None:
            receive.accept(seq)

    # bytes conveniences (the hot path of the bindings: every call runs several of these, so
    # the helpers above are inlined where that saves a Python call per message)

    def sign(self, data: bytes, *, aad: bytes = b"", seq: int | None = None) -> bytes:
        """MakeSignature over ``aad`` and ``data``: returns the signature token."""
        protector = self._protector
        if protector is None:
            protector = self._ready()  # raises: not established
        expires = self._expires_at
        if expires is not None and self._clock() >= expires:
            raise ContextExpiredError("security context has expired")
        seq = next(self._send_seq) if seq is None and not self._datagram else self._next_seq(seq)
        try:
            header = _HEADER.pack(_KIND_MIC, seq)
        except struct.error:
            raise _exhausted() from None
        return header + protector.sign(seq, header + aad, data)

    def verify(
        self, data: bytes, signature: bytes, *, aad: bytes = b"", record: bool = True
    ) -> int:
        """VerifySignature: raises unless ``signature`` is the peer's over ``aad`` and ``data``.
        Returns the sender's sequence number. ``record=False`` skips the replay window, for a
        caller whose ``aad`` already makes the message unique and ordered (a binding's
        in-stream messages, bound to their call and position)."""
        protector = self._protector
        if protector is None:
            protector = self._ready()  # raises: not established
        expires = self._expires_at
        if expires is not None and self._clock() >= expires:
            raise ContextExpiredError("security context has expired")
        seq = self._parse_header(signature, _KIND_MIC, HEADER_SIZE + 1, record)
        protector.verify(seq, bytes(signature[:HEADER_SIZE]) + aad, data, signature[HEADER_SIZE:])
        receive = self._receive
        if receive is not None and record:
            receive.accept(seq)
        return seq

    def wrap(
        self,
        data: bytes,
        *,
        aad: bytes = b"",
        encrypt: bool = True,
        seq: int | None = None,
    ) -> bytes:
        """EncryptMessage (or, with ``encrypt=False``, an integrity-only wrap) of ``data``,
        binding ``aad`` too. Returns one token holding the message."""
        protector = self._protector
        if protector is None:
            protector = self._ready()  # raises: not established
        expires = self._expires_at
        if expires is not None and self._clock() >= expires:
            raise ContextExpiredError("security context has expired")
        if encrypt and not self._confidential:
            raise QopNotSupportedError("context was not established with confidentiality")
        seq = next(self._send_seq) if seq is None and not self._datagram else self._next_seq(seq)
        try:
            header = _HEADER.pack(_KIND_WRAP if encrypt else _KIND_SIGNED, seq)
        except struct.error:
            raise _exhausted() from None
        if encrypt:
            return protector.seal_token(seq, header, aad, data)
        return header + protector.sign(seq, header + aad, data) + data

    def wrapper(self, aad: bytes, *, encrypt: bool) -> Callable[[bytes], bytes]:
        """``wrap`` with ``aad`` and the level fixed: ``wrapper(aad, encrypt=e)(data)`` is
        ``wrap(data, aad=aad, encrypt=e)`` (EncryptMessage / the integrity wrap), in one frame.

        For a binding that opens every call of one method over the same AAD. The same
        sequence counter and epoch keys as ``wrap``, so the two can be used side by side; a
        deleted or exported context, a large message and a package protector other than the
        standard AEAD take ``wrap`` itself, so every refusal is ``wrap``'s. Raises what ``wrap``
        raises for a context that is not established or has no confidentiality."""
        protector = self._protector
        if protector is None:
            protector = self._ready()  # raises: not established
        if encrypt and not self._confidential:
            raise QopNotSupportedError("context was not established with confidentiality")
        slow = functools.partial(self.wrap, aad=aad, encrypt=encrypt)
        if type(protector) is not AeadProtector or self._datagram:
            return slow
        cache, key = protector.outbound_epochs()
        kind = _KIND_WRAP if encrypt else _KIND_SIGNED
        pack = _HEADER.pack
        context = self

        def wrap(data: bytes) -> bytes:
            if context._protector is not protector or len(data) >= LARGE_MESSAGE:
                return slow(data)
            expires = context._expires_at
            if expires is not None and context._clock() >= expires:
                raise ContextExpiredError("security context has expired")
            seq = next(context._send_seq)
            try:
                header = pack(kind, seq)
            except struct.error:
                raise _exhausted() from None
            entry = cache.get(seq >> EPOCH_BITS)
            if entry is None:
                aead, nonce = key(seq)  # a new epoch: derived (and the number checked) once
            else:
                aead, nonce = entry[0], (entry[1] ^ seq).to_bytes(12, "big")
            if encrypt:
                return header + aead.encrypt(nonce, data, header + aad)
            return header + aead.encrypt(nonce, b"", header + aad + data) + data

        return wrap

    def unwrap(
        self,
        token: bytes,
        *,
        aad: bytes = b"",
        encrypted: bool | None = None,
        record: bool = True,
    ) -> bytes:
        """DecryptMessage / integrity unwrap of a token made by the peer's ``wrap``.

        ``encrypted`` True (False) requires a sealed (signed-only) token, for callers that fix
        the protection level: the other kind raises ``MessageAlteredError``, so a peer cannot
        turn a sealed exchange into a readable one. None accepts either. ``record=False``: as
        for ``verify``.
        """
        # One frame (the bindings' hot path): the kind byte is read once, a token of the other
        # kind is refused before any key work, the window is updated after the tag verified.
        protector = self._protector
        if protector is None:
            protector = self._ready()  # raises: not established
        expires = self._expires_at
        if expires is not None and self._clock() >= expires:
            raise ContextExpiredError("security context has expired")
        if not token:
            raise InvalidTokenError("empty message token")
        kind = token[0]
        header = token[:HEADER_SIZE]
        if type(header) is not bytes:
            header = bytes(header)
        if kind == _KIND_WRAP:
            if encrypted is False:
                raise MessageAlteredError("message protection does not match the expected level")
            if len(header) < HEADER_SIZE:
                raise InvalidTokenError("message token is truncated")
            seq = int.from_bytes(header[1:], "big")
            receive = self._receive if record else None
            if receive is not None:
                receive.check(seq)
            body = memoryview(token)[HEADER_SIZE:]
            data = protector.unseal(
                seq, header + aad, body if protector.accepts_views else bytes(body)
            )
        elif kind == _KIND_SIGNED:
            if encrypted:
                raise MessageAlteredError("message protection does not match the expected level")
            size = protector.signature_size
            if len(token) < HEADER_SIZE + size:
                raise InvalidTokenError("message token is truncated")
            seq = int.from_bytes(header[1:], "big")
            receive = self._receive if record else None
            if receive is not None:
                receive.check(seq)
            end = HEADER_SIZE + size
            data = bytes(token[end:])
            protector.verify(seq, header + aad, data, token[HEADER_SIZE:end])
        else:
            raise InvalidTokenError("message token has the wrong type")
        if receive is not None:
            receive.accept(seq)
        return data

    def receive_key(self, seq: int) -> tuple[int, Any, int] | None:
        """(epoch, AEAD, IV) of the peer's messages in ``seq``'s epoch, for a binding's hot path
        that opens ``wrap`` tokens itself with the AEAD (layout: ``kind:u8 | seq:u64`` header,
        then ciphertext+tag, or tag then data signed over header + aad + data; nonce =
        ``(IV ^ seq).to_bytes(12, "big")``). Such a caller does what ``unwrap`` does besides --
        expiry, the replay window -- itself. None when the context's messages are not the
        standard AEAD's (a native GSS protector) or it is not established; ``seq`` must be the
        number of a message that verified."""
        protector = self._protector
        if not isinstance(protector, AeadProtector):
            return None
        return protector.receive_key(seq)

    def unwrap_message(self, token: bytes, *, aad: bytes = b"") -> tuple[bytes, MessageInfo]:
        """``unwrap`` that also reports the QOP and the sender's sequence number."""
        data, qop, seq = self._unwrap(token, aad)
        return data, MessageInfo(qop=qop, seq=seq)

    def _unwrap(self, token: bytes, aad: bytes, record: bool = True) -> tuple[bytes, int, int]:
        protector = self._ready()
        if not token:
            raise InvalidTokenError("empty message token")
        kind = token[0]
        if kind == _KIND_WRAP:
            seq = self._parse_header(token, _KIND_WRAP, HEADER_SIZE, record)
            view = memoryview(token)
            body = view[HEADER_SIZE:] if protector.accepts_views else bytes(view[HEADER_SIZE:])
            data = protector.unseal(seq, bytes(view[:HEADER_SIZE]) + aad, body)
            qop = _QOP_DEFAULT
        elif kind == _KIND_SIGNED:
            size = protector.signature_size
            seq = self._parse_header(token, _KIND_SIGNED, HEADER_SIZE + size, record)
            header = bytes(token[:HEADER_SIZE])
            data = bytes(token[HEADER_SIZE + size :])
            protector.verify(seq, header + aad, data, token[HEADER_SIZE : HEADER_SIZE + size])
            qop = _QOP_NO_ENCRYPT
        else:
            raise InvalidTokenError("message token has the wrong type")
        receive = self._receive
        if receive is not None and record:
            receive.accept(seq)
        return data, qop, seq

    # buffer-level API (SecBufferDesc), as the seed's Sender / Receiver use it

    def make_signature(
        self, buffers: Sequence[SecBuffer], qop: int = 0, seq: int | None = None
    ) -> int:
        """MakeSignature: sign every DATA buffer (in order); the first TOKEN or EMPTY buffer
        receives the signature and becomes TOKEN. Returns the sequence number used."""
        if qop not in (0, QOP.DEFAULT):
            raise QopNotSupportedError("make_signature supports only the default QOP")
        data = _join(buffers, lambda t: t.base is BufferType.DATA)
        slot = _slot(buffers, (BufferType.TOKEN, BufferType.EMPTY))
        protector = self._ready()
        seq = self._next_seq(seq)
        header = self._header(_KIND_MIC, seq)
        slot.data = header + protector.sign(seq, header, data)
        slot.type = BufferType.TOKEN
        return seq

    def verify_signature(self, buffers: Sequence[SecBuffer]) -> MessageInfo:
        """VerifySignature: check the TOKEN buffer against the DATA buffers."""
        data = _join(buffers, lambda t: t.base is BufferType.DATA)
        token = bytes(_slot(buffers, (BufferType.TOKEN,)).data)
        protector = self._ready()
        seq = self._parse_header(token, _KIND_MIC, HEADER_SIZE + 1)
        protector.verify(seq, token[:HEADER_SIZE], data, token[HEADER_SIZE:])
        self._record(seq)
        return MessageInfo(qop=int(QOP.DEFAULT), seq=seq)

    def encrypt_message(
        self, buffers: Sequence[SecBuffer], qop: int = 0, seq: int | None = None
    ) -> int:
        """EncryptMessage. Connection contexts: writable DATA buffers are encrypted in place,
        READONLY DATA buffers are authenticated only, and the first TOKEN/EMPTY buffer receives
        the header and tag. Stream contexts: STREAM_HEADER, DATA, STREAM_TRAILER are filled as
        one record. ``QOP.WRAP_NO_ENCRYPT`` leaves the data readable but authenticated."""
        protector = self._ready()
        if qop == QOP.WRAP_NO_ENCRYPT:
            return self._sign_into(buffers, protector, seq)
        if qop not in (0, QOP.DEFAULT):
            raise QopNotSupportedError("unknown QOP")
        if not self._result or not (self._result.granted & ContextReq.CONFIDENTIALITY):
            raise QopNotSupportedError("context was not established with confidentiality")
        if self._stream and any(b.type.base is BufferType.STREAM_HEADER for b in buffers):
            return self._encrypt_stream(buffers, protector, seq)
        writable = [b for b in buffers if b.type.base is BufferType.DATA and not b.type.readonly]
        readonly = _join(buffers, lambda t: t.base is BufferType.DATA and t.readonly)
        slot = _slot(buffers, (BufferType.TOKEN, BufferType.EMPTY))
        seq = self._next_seq(seq)
        header = self._header(_KIND_WRAP, seq)
        plaintext = b"".join(bytes(b.data) for b in writable)
        sealed = protector.seal(seq, header + readonly, plaintext)
        offset = 0
        for buffer in writable:
            size = len(buffer.data)
            buffer.data = sealed[offset : offset + size]
            offset += size
        slot.data = header + sealed[offset:]
        slot.type = BufferType.TOKEN
        return seq

    def _sign_into(
        self, buffers: Sequence[SecBuffer], protector: MessageProtector, seq: int | None
    ) -> int:
        data = _join(buffers, lambda t: t.base is BufferType.DATA)
        slot = _slot(buffers, (BufferType.TOKEN, BufferType.EMPTY))
        seq = self._next_seq(seq)
        header = self._header(_KIND_SIGNED, seq)
        slot.data = header + protector.sign(seq, header, data)
        slot.type = BufferType.TOKEN
        return seq

    def decrypt_message(self, buffers: list[SecBuffer]) -> MessageInfo:
        """DecryptMessage, the inverse of ``encrypt_message`` for each context kind.

        Stream contexts take ``[DATA(received bytes), EMPTY, EMPTY, EMPTY]``; on success the
        list becomes ``[STREAM_HEADER, DATA, STREAM_TRAILER, EXTRA or EMPTY]``; with too few
        bytes it raises ``IncompleteMessageError`` after setting a MISSING buffer, and no state
        changes (seed, "Stream Contexts")."""
        protector = self._ready()
        if (
            self._stream
            and len(buffers) >= 2
            and buffers[0].type.base is BufferType.DATA
            and all(b.type.base is BufferType.EMPTY for b in buffers[1:])
        ):
            return self._decrypt_stream(buffers, protector)
        slot = _slot(buffers, (BufferType.TOKEN,))
        token = bytes(slot.data)
        if not token:
            raise InvalidTokenError("empty message token")
        if token[0] == _KIND_SIGNED:
            data = _join(buffers, lambda t: t.base is BufferType.DATA)
            seq = self._parse_header(token, _KIND_SIGNED, HEADER_SIZE + 1)
            protector.verify(seq, token[:HEADER_SIZE], data, token[HEADER_SIZE:])
            self._record(seq)
            return MessageInfo(qop=int(QOP.WRAP_NO_ENCRYPT), seq=seq)
        seq = self._parse_header(token, _KIND_WRAP, HEADER_SIZE)
        writable = [b for b in buffers if b.type.base is BufferType.DATA and not b.type.readonly]
        readonly = _join(buffers, lambda t: t.base is BufferType.DATA and t.readonly)
        sealed = b"".join(bytes(b.data) for b in writable) + token[HEADER_SIZE:]
        plaintext = protector.unseal(seq, token[:HEADER_SIZE] + readonly, sealed)
        self._record(seq)
        offset = 0
        for buffer in writable:
            size = len(buffer.data)
            buffer.data = plaintext[offset : offset + size]
            offset += size
        return MessageInfo(qop=int(QOP.DEFAULT), seq=seq)

    def _encrypt_stream(
        self, buffers: Sequence[SecBuffer], protector: MessageProtector, seq: int | None
    ) -> int:
        header_buf = _slot(buffers, (BufferType.STREAM_HEADER,))
        trailer_buf = _slot(buffers, (BufferType.STREAM_TRAILER,))
        data_buf = _slot(buffers, (BufferType.DATA,))
        plaintext = bytes(data_buf.data)
        if len(plaintext) > MAX_STREAM_RECORD:
            raise ValueError(f"stream records carry at most {MAX_STREAM_RECORD} bytes")
        seq = self._next_seq(seq)
        header = self._stream_header(seq, len(plaintext) + protector.trailer_size)
        sealed = protector.seal(seq, header, plaintext)
        header_buf.data = header
        data_buf.data = sealed[: len(plaintext)]
        trailer_buf.data = sealed[len(plaintext) :]
        return seq

    def _stream_header(self, seq: int, length: int) -> bytes:
        if seq > MAX_SEQUENCE:
            raise _exhausted()
        return bytes((_KIND_STREAM,)) + seq.to_bytes(8, "big") + length.to_bytes(4, "big")

    def _decrypt_stream(self, buffers: list[SecBuffer], protector: MessageProtector) -> MessageInfo:
        received = bytes(buffers[0].data)
        if len(received) < STREAM_HEADER_SIZE:
            missing = STREAM_HEADER_SIZE - len(received)
            buffers[1].type, buffers[1].data = BufferType.MISSING, bytes(missing)
            raise IncompleteMessageError("stream record header incomplete", missing=missing)
        if received[0] != _KIND_STREAM:
            raise InvalidTokenError("stream record has the wrong type")
        length = int.from_bytes(received[9:13], "big")
        if length < protector.trailer_size or length > MAX_STREAM_RECORD + protector.trailer_size:
            raise InvalidTokenError("stream record length is out of range")
        end = STREAM_HEADER_SIZE + length
        if len(received) < end:
            missing = end - len(received)
            buffers[1].type, buffers[1].data = BufferType.MISSING, bytes(missing)
            raise IncompleteMessageError("stream record incomplete", missing=missing)
        seq = self._parse_header(received, _KIND_STREAM, STREAM_HEADER_SIZE)
        header = received[:STREAM_HEADER_SIZE]
        plaintext = protector.unseal(seq, header, received[STREAM_HEADER_SIZE:end])
        self._record(seq)
        buffers[0].type, buffers[0].data = BufferType.STREAM_HEADER, header
        buffers[1].type, buffers[1].data = BufferType.DATA, plaintext
        buffers[2].type = BufferType.STREAM_TRAILER
        buffers[2].data = received[end - protector.trailer_size : end]
        if len(buffers) > 3:
            extra = received[end:]
            buffers[3].type = BufferType.EXTRA if extra else BufferType.EMPTY
            buffers[3].data = extra
        return MessageInfo(qop=int(QOP.DEFAULT), seq=seq)

    # -- export / import -------------------------------------------------------------------

    def export(self) -> bytes:
        """ExportSecurityContext: a blob another process imports to continue this context.

        The exporter is retired (SECPKG_CONTEXT_EXPORT_DELETE_OLD): afterwards every message
        call on it raises ``ContextExpiredError``, because the importer seals under the same
        keys and sequence numbers and two live copies would reuse AES-GCM nonces.

        WARNING: the blob holds the context's message keys and, for a server context with
        delegation, the delegated credentials when the package can export them (kerberos,
        negotiate: the client's forwarded TGT). Protect it like a private key.
        Export a context no other thread is still sending on: a message sealed concurrently
        could take the sequence number the importer resumes at.

        Raises ``InvalidStateError`` for a package that cannot export, ``InvalidTokenError``
        when the peer's names do not fit a blob (the context is retired all the same).
        """
        return _encoded(self._export_state())

    def export_and_continue(self) -> tuple[bytes, SecurityContext]:
        """ExportSecurityContext for a caller that also serves the context itself: the blob,
        and the context continued in this process, as ``import_security_context(blob,
        self.credentials, once=False)`` would rebuild it -- but made from the live state
        instead of parsing the blob back (no second token, protector or delegation check).

        The exporter is retired exactly as by ``export()``; the continued context takes over
        its keys, receive window and the caller's token (delegated credentials included) and
        sends from the counter the blob records. The same rule as for ``once=False`` applies:
        a caller that also lets other processes import the blob keeps the outbound sequence
        spaces apart itself (the gRPC tickets seal responses with per-call keys). Unlike an
        import, the continued context keeps what the blob does not carry (the session key, the
        peer's native name).
        """
        result = self._established()
        protector, receive = self._protector, self._receive
        state = self._export_state()  # retires self
        assert protector is not None
        cls = type(self)
        continued = cls.__new__(cls)
        SecurityContext.__init__(
            continued,
            self.credentials,
            self.requested,
            replay_window=self._replay_window,
            lifetime=self._lifetime,
            clock=self._clock,
        )
        if isinstance(self, ClientContext) and isinstance(continued, ClientContext):
            continued.target_name = self.target_name
            continued.max_impersonation = self.max_impersonation
        continued._options = self._options
        continued._started_at = self._started_at
        continued._result = result
        continued._protector = protector
        continued._receive = receive
        continued._send_seq = itertools.count(state.send_seq)
        continued._expires_at = self._expires_at
        continued._datagram = self._datagram
        continued._stream = self._stream
        continued._confidential = self._confidential
        continued.state = ContextState.ESTABLISHED
        return _encoded(state), continued

    def _export_state(self) -> ExportedContext:
        """Retire this context and return what its export blob holds."""
        result = self._established()
        protector = self._protector
        assert protector is not None
        outbound, inbound = protector.secrets()
        if not outbound:
            raise InvalidStateError(f"package {self.package.name!r} cannot export contexts")
        receive = self._receive
        highest = -1
        if isinstance(receive, ReplayWindow):
            highest = receive.highest
        elif isinstance(receive, SequenceCounter):
            highest = receive.expected - 1
        peer = result.peer
        # Retire first, then read the send counter: nothing sent after this can share it.
        self._transition(_Event.EXPORT)
        self._protector = None
        self._receive = None
        return ExportedContext(
            blob_id=ExportedContext.new_id(),
            package=self.package.name,
            client=self.is_client,
            granted=int(result.granted),
            requested=int(self.requested),
            level=int(result.impersonation_level),
            outbound=outbound,
            inbound=inbound,
            send_seq=next(self._send_seq),
            highest=highest,
            window=self._replay_window,
            expires=self._expires_at,
            peer=ExportedPeer(
                principal=peer.principal,
                package=peer.package,
                level=int(peer.impersonation_level),
                groups=tuple(sorted(peer.groups)),
                chain=tuple(peer.delegation_chain),
                expires=peer.expires_at,
            ),
            delegation=_export_delegation(self.package, peer.delegated_credentials),
        )

    def _establish_from_import(self, send_seq: int, highest: int) -> None:
        """Finish ImportSecurityContext: counters and window resume where the exporter was."""
        result = self._result
        assert result is not None
        granted = result.granted
        self._datagram = bool(granted & ContextReq.DATAGRAM)
        self._stream = bool(granted & ContextReq.STREAM)
        self._confidential = bool(granted & ContextReq.CONFIDENTIALITY)
        self._send_seq = itertools.count(send_seq)
        if granted & ContextReq.SEQUENCE_DETECT:
            self._receive = SequenceCounter(highest + 1)
        elif granted & ContextReq.REPLAY_DETECT:
            window = ReplayWindow(self._replay_window)
            if highest >= 0:
                window.resume(highest)  # everything up to the exporter's highest counts as seen
            self._receive = window
        result.protector.resume(highest)
        self._expires_at = result.expires_at
        self.state = ContextState.ESTABLISHED

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} package={self.package.name!r} state={self.state.value}"
            f" requested={self.requested!r}>"
        )


class ClientContext(SecurityContext):
    """InitializeSecurityContext: the client half of a context."""

    is_client = True

    def __init__(
        self,
        credentials: Credentials,
        target_name: str | None,
        requested: ContextReq | None = None,
        *,
        impersonation: ImpersonationLevel = ImpersonationLevel.IMPERSONATE,
        options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # None asks for the default; an explicit ContextReq.NONE asks for nothing beyond
        # authentication (it is falsy, so ``requested or default`` would lose it).
        if requested is None:
            requested = ContextReq.default()
        super().__init__(credentials, requested, **kwargs)
        if not credentials.use & CredentialUse.OUTBOUND:
            raise ValueError("client contexts need OUTBOUND credentials")
        if not isinstance(impersonation, ImpersonationLevel):
            raise TypeError("impersonation must be an ImpersonationLevel")
        check_target_name(credentials, target_name)
        if self.requested & ContextReq.ANONYMOUS:
            # GSS_C_ANON_FLAG: "do not reveal the initiator's identity" is the ANONYMOUS level.
            impersonation = ImpersonationLevel.ANONYMOUS
        self.target_name = target_name
        self.max_impersonation = impersonation
        self._options = dict(options or {})

    def _new_mechanism(self) -> Mechanism:
        return self.package.client_mechanism(
            self.credentials.material,
            target_name=self.target_name,
            requested=self.requested,
            impersonation=self.max_impersonation,
            options=self._options,
            clock=self._clock,
        )


class ServerContext(SecurityContext):
    """AcceptSecurityContext: the server half of a context."""

    def __init__(
        self,
        credentials: Credentials,
        requested: ContextReq | None = None,
        *,
        options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(credentials, ContextReq.NONE if requested is None else requested, **kwargs)
        if not credentials.use & CredentialUse.INBOUND:
            raise ValueError("server contexts need INBOUND credentials")
        self._options = dict(options or {})

    def _new_mechanism(self) -> Mechanism:
        return self.package.server_mechanism(
            self.credentials.material,
            requested=self.requested,
            options=self._options,
            clock=self._clock,
        )

    def step(self, token: bytes | None = None) -> StepResult:
        if token is None and self.state is ContextState.NEW:
            raise ValueError("the server's first step needs the client's token")
        return super().step(token)


def initialize_security_context(
    credentials: Credentials,
    target_name: str | None,
    requested: ContextReq | None = None,
    **kwargs: Any,
) -> ClientContext:
    """A new client context; call ``step()`` (no token) for the first token to send."""
    return ClientContext(credentials, target_name, requested, **kwargs)


def accept_security_context(
    credentials: Credentials, requested: ContextReq | None = None, **kwargs: Any
) -> ServerContext:
    """A new server context; call ``step(client_token)`` with each token the client sends."""
    return ServerContext(credentials, requested, **kwargs)


def import_security_context(
    blob: bytes,
    credentials: Credentials,
    *,
    clock: Callable[[], float] = time.time,
    once: bool = True,
) -> SecurityContext:
    """ImportSecurityContext: continue a context another process exported.

    Messages the exporter had already received are rejected as replays; the import starts its
    window just above the highest one the exporter saw, and its send counter where the
    exporter stopped.

    A blob opens once per credentials handle: importing it again with the same ``credentials``
    raises ``ReplayError``. Importing it into several processes (several handles) is allowed,
    but then each copy sends under the same keys from the same sequence number: only a
    caller that keeps their outbound sequence spaces apart itself (as a session layer that
    numbers responses per call does) may do that; anyone else imports a blob exactly once.
    Such a caller passes ``once=False``: the blob may then be imported again with the same
    handle (a replica re-opening a ticket after its cache dropped it). It must never send
    with the imported context's own counter (the gRPC binding's tickets seal responses with
    per-call keys, ``rpcsec.grpc._responses``, and claim requests in a shared replay store).

    Raises ``InvalidTokenError`` for a blob that is not one (never a bare ``ValueError``),
    ``UnsupportedFunctionError`` for a package that cannot import, ``ReplayError`` as above.
    """
    from rpcsec.security._token import AccessToken

    if not isinstance(credentials, Credentials):
        raise TypeError("credentials must come from acquire_credentials_handle()")
    state = ExportedContext.decode(blob)
    package = credentials.package
    if state.package != package.name:  # never look up a package a blob names
        raise InvalidTokenError("exported context belongs to another package's credentials")
    granted = ContextReq(state.granted)
    level = ImpersonationLevel(state.level)
    peer_state = state.peer
    try:
        window_size = state.window
        protector = package.import_protector(
            state.outbound, state.inbound, bool(granted & ContextReq.DATAGRAM)
        )
        peer = AccessToken(
            principal=peer_state.principal,
            package=peer_state.package,
            impersonation_level=ImpersonationLevel(peer_state.level),
            groups=frozenset(peer_state.groups),
            delegation_chain=peer_state.chain,
            expires_at=peer_state.expires,
            delegated_credentials=(
                package.import_delegation(state.delegation, credentials)
                if state.delegation
                else None
            ),
        )
        result = MechanismResult(
            granted=granted,
            impersonation_level=level,
            protector=protector,
            peer=peer,
            expires_at=state.expires,
        )
        cls: type[SecurityContext] = ClientContext if state.client else ServerContext
        context = cls.__new__(cls)
        SecurityContext.__init__(
            context,
            credentials,
            ContextReq(state.requested),
            replay_window=window_size,
            clock=clock,
        )
        if isinstance(context, ClientContext):
            context.target_name = peer.principal
            context.max_impersonation = result.impersonation_level
            context._options = {}
        elif isinstance(context, ServerContext):
            context._options = {}
        context._result = result = context._as_seen(result)
        context._protector = protector
        context._establish_from_import(state.send_seq, state.highest)
    except SecurityError:
        raise
    except (ValueError, TypeError) as exc:  # e.g. a secret of the wrong size, a bad window
        raise InvalidTokenError("exported context is malformed") from exc
    # Claimed last: a blob that failed to import can be retried; one that imported cannot.
    if once:
        credentials.import_ledger.claim(state.blob_id, state.expires)
    return context


def _export_delegation(package: Any, delegated: Credentials | None) -> bytes | None:
    """A server context's delegated credentials for its export blob, when the package can
    write them (``SecurityPackage.export_delegation``); else None, and the imported context
    has no delegation."""
    if delegated is None:
        return None
    try:
        return package.export_delegation(delegated)
    except UnsupportedFunctionError:
        return None


def _encoded(state: ExportedContext) -> bytes:
    """The blob; a peer whose names do not fit one (e.g. a principal over 1 KiB) makes the
    context unexportable, which is the peer's doing: ``InvalidTokenError``, as the import of
    such a blob would have said."""
    try:
        return state.encode()
    except ValueError as exc:
        raise InvalidTokenError("context cannot be exported: a name is too long") from exc


def _exhausted() -> ContextExpiredError:
    """The send counter passed 2**64 - 1: a nonce would repeat, so the context is over."""
    return ContextExpiredError("sequence numbers exhausted: the context must be renewed")


def _join(buffers: Sequence[SecBuffer], select: Callable[[BufferType], bool]) -> bytes:
    return b"".join(bytes(b.data) for b in buffers if select(b.type))


def _slot(buffers: Sequence[SecBuffer], types: tuple[BufferType, ...]) -> SecBuffer:
    for buffer in buffers:
        if buffer.type.base in types:
            return buffer
    names = " or ".join(t.name or str(t) for t in types)
    raise ValueError(f"buffer list needs a {names} buffer")
