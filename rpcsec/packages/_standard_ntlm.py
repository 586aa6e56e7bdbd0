"""Standard mode for the ntlm package: bare NTLM messages (MS-NLMP §2.2.1), as curl --ntlm,
browsers and Windows speak them over HTTP (MS-NTHT) and elsewhere.

The ntlm package's own handshake frames the three NTLM messages and adds an HMAC-sealed offer
and grant (``ntlm.py``). A standard peer sends NEGOTIATE, gets CHALLENGE, sends AUTHENTICATE,
and that is all: no grant, and nothing proves the server (NTLM never authenticates it). This
module is that exchange over pyspnego's NTLM (NTLMv2 only, as in the extended mode):

* each peer message is checked before pyspnego parses it: the ``NTLMSSP\\0`` signature, the
  message type expected at this leg, a size bound;
* granted attributes are pyspnego's negotiated ``context_attr`` (integrity, confidentiality,
  replay and sequence detection of NTLM's own signing), never MUTUAL_AUTH or DELEGATE; the
  impersonation level is IDENTIFY when the client set NTLMSSP_NEGOTIATE_IDENTIFY, else
  IMPERSONATE (a network logon);
* per-message calls are NTLM's own sealing and signing (MS-NLMP §3.4), through
  ``standard_messages``; the core's AEAD format is not available on these contexts.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import spnego
import spnego.exceptions

from rpcsec.packages._standard import AutoServer, StandardMessages
from rpcsec.packages.ntlm import (
    NtlmClientCredentials,
    NtlmServerCredentials,
    _acceptor_environment,
    accept_authenticate,
)
from rpcsec.security._token import AccessToken
from rpcsec.sspi._errors import (
    InvalidTokenError,
    LogonDeniedError,
    MessageAlteredError,
    NoCredentialsError,
    SecurityError,
    UnsupportedFunctionError,
)
from rpcsec.sspi._flags import ContextReq, ImpersonationLevel, ProtectionLevel
from rpcsec.sspi._package import Mechanism, MechanismResult
from rpcsec.sspi._protection import MessageProtector, session_key_kdf

__all__ = [
    "NTLM_SIGNATURE",
    "StandardNtlmClient",
    "StandardNtlmServer",
    "check_ntlm_message",
    "standard_client",
    "standard_server",
]

NTLM_SIGNATURE = b"NTLMSSP\x00"
NEGOTIATE, CHALLENGE, AUTHENTICATE = 1, 2, 3
MAX_NTLM_MESSAGE = 64 * 1024
_MAGIC = b"RN"  # the ntlm package's frame (ntlm._MAGIC)
_DEFAULT_LIFETIME = 10 * 3600.0

# The one table between pyspnego's negotiated flags and the core's attributes.
_FLAGS = (
    (spnego.ContextReq.integrity, ContextReq.INTEGRITY),
    (spnego.ContextReq.confidentiality, ContextReq.CONFIDENTIALITY),
    (spnego.ContextReq.replay_detect, ContextReq.REPLAY_DETECT),
    (spnego.ContextReq.sequence_detect, ContextReq.SEQUENCE_DETECT),
    (spnego.ContextReq.identify, ContextReq.IDENTIFY),
)


def check_ntlm_message(token: bytes, expected: int) -> None:
    """``InvalidTokenError`` unless ``token`` looks like NTLM message ``expected`` (type 1-3):
    signature, MessageType, and the fixed header sizes of MS-NLMP §2.2.1.1-2.2.1.3."""
    minimum = {NEGOTIATE: 16, CHALLENGE: 32, AUTHENTICATE: 64}[expected]
    if not isinstance(token, bytes | bytearray) or len(token) < minimum:
        raise InvalidTokenError("NTLM message is truncated")
    if len(token) > MAX_NTLM_MESSAGE:
        raise InvalidTokenError("NTLM message is too large")
    if not token.startswith(NTLM_SIGNATURE):
        raise InvalidTokenError("not an NTLM message")
    (kind,) = struct.unpack_from("<I", token, 8)
    if kind != expected:
        raise InvalidTokenError("not the NTLM message expected at this step")


def _granted(attributes: Any) -> ContextReq:
    granted = ContextReq.CONNECTION
    for theirs, ours in _FLAGS:
        if attributes & theirs:
            granted |= ours
    return granted


def _protection(granted: ContextReq) -> ProtectionLevel:
    if granted & ContextReq.CONFIDENTIALITY:
        return ProtectionLevel.PRIVACY
    if granted & ContextReq.INTEGRITY:
        return ProtectionLevel.INTEGRITY
    return ProtectionLevel.NONE


def _native(call: Callable[[], Any], error: type[SecurityError], what: str) -> Any:
    try:
        return call()
    except SecurityError:
        raise
    except spnego.exceptions.SpnegoError as exc:
        raise error(what) from exc
    except Exception as exc:  # pyspnego's parsers raise assorted errors on garbage
        raise InvalidTokenError(what) from exc


class StandardNtlmMessages(MessageProtector, StandardMessages):
    """NTLM's own sealing and signing (MS-NLMP §3.4.3-3.4.4) on a standard context."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._lock = threading.Lock()

    def _unsupported(self) -> UnsupportedFunctionError:
        return UnsupportedFunctionError(
            "standard-mode NTLM contexts protect messages with NTLM's own tokens: "
            "use rpcsec.packages._standard.standard_messages(context)"
        )

    def sign(self, seq: int, aad: bytes, data: bytes) -> bytes:
        raise self._unsupported()

    def verify(self, seq: int, aad: bytes, data: bytes, tag: bytes) -> None:
        raise self._unsupported()

    def seal(self, seq: int, aad: bytes, plaintext: bytes) -> bytes:
        raise self._unsupported()

    def unseal(self, seq: int, aad: bytes, sealed: bytes | memoryview) -> bytes:
        raise self._unsupported()

    def gss_wrap(self, data: bytes, *, encrypt: bool) -> bytes:
        with self._lock:
            result = _native(
                lambda: self._context.wrap(bytes(data), encrypt=encrypt),
                InvalidTokenError,
                "NTLM wrap failed",
            )
        return bytes(result.data)

    def gss_unwrap(self, token: bytes) -> tuple[bytes, bool]:
        if len(token) < 16:
            raise MessageAlteredError("NTLM wrapped message is truncated")
        with self._lock:
            result = _native(
                lambda: self._context.unwrap(bytes(token)),
                MessageAlteredError,
                "NTLM wrapped message does not verify",
            )
        return bytes(result.data), bool(result.encrypted)

    def gss_get_mic(self, data: bytes) -> bytes:
        with self._lock:
            return bytes(
                _native(lambda: self._context.sign(bytes(data)), InvalidTokenError, "NTLM sign")
            )

    def gss_verify_mic(self, data: bytes, mic: bytes) -> None:
        if len(mic) != 16:
            raise MessageAlteredError("NTLM signature has the wrong size")
        with self._lock:
            _native(
                lambda: self._context.verify(bytes(data), bytes(mic)),
                MessageAlteredError,
                "NTLM signature does not verify",
            )


def _result(ntlm: Any, principal: str, lifetime: float, clock: Callable[[], float]) -> Any:
    granted = _granted(ntlm.context_attr)
    level = (
        ImpersonationLevel.IDENTIFY
        if granted & ContextReq.IDENTIFY
        else ImpersonationLevel.IMPERSONATE
    )
    expires = clock() + lifetime
    return MechanismResult(
        granted=granted,
        impersonation_level=level,
        protector=StandardNtlmMessages(ntlm),
        peer=AccessToken(
            principal=principal,
            package="ntlm",
            impersonation_level=level,
            protection_level=_protection(granted),
            expires_at=expires,
        ),
        expires_at=expires,
        peer_native_name=principal,
        session_key=session_key_kdf(bytes(ntlm.session_key), b"rpcsec ntlm standard exported"),
    )


class StandardNtlmServer(Mechanism):
    """AcceptSecurityContext for a standard NTLM client: NEGOTIATE in, CHALLENGE out,
    AUTHENTICATE in (complete, no final token)."""

    def __init__(
        self, credentials: NtlmServerCredentials, lifetime: float, clock: Callable[[], float]
    ) -> None:
        self._credentials = credentials
        self._lifetime = lifetime
        self._clock = clock
        with _acceptor_environment(credentials.store.placeholder):
            self._ntlm = spnego.server(
                protocol="ntlm",
                context_req=spnego.ContextReq.integrity | spnego.ContextReq.confidentiality,
            )
        self._leg = 0

    def step(self, token: bytes | None) -> bytes | None:
        if token is None:
            raise InvalidTokenError("ntlm server needs the client's token")
        leg, self._leg = self._leg, self._leg + 1
        if leg == 0:
            check_ntlm_message(token, NEGOTIATE)
            return bytes(self._step(token, InvalidTokenError, "NTLM negotiate rejected") or b"")
        if leg == 1:
            check_ntlm_message(token, AUTHENTICATE)
            accept_authenticate(self._ntlm, self._credentials.store, token)
            principal = str(self._ntlm.client_principal or "")
            if not self._ntlm.complete or not principal or principal.endswith("\\"):
                raise LogonDeniedError("ntlm authentication named no user")
            self.result = _result(self._ntlm, principal, self._lifetime, self._clock)
            self.complete = True
            return None
        raise InvalidTokenError("ntlm handshake has no more steps")

    def _step(self, token: bytes, error: type[SecurityError], what: str) -> Any:
        with _acceptor_environment(self._credentials.store.placeholder):
            return _native(lambda: self._ntlm.step(token), error, what)


class StandardNtlmClient(Mechanism):
    """InitializeSecurityContext toward a standard NTLM server (the server is never proven:
    its AccessToken is the target name, prefixed ``(unverified)``, at IDENTIFY)."""

    def __init__(
        self,
        credentials: NtlmClientCredentials,
        target_name: str | None,
        requested: ContextReq,
        lifetime: float,
        clock: Callable[[], float],
    ) -> None:
        if requested & (ContextReq.MUTUAL_AUTH | ContextReq.DELEGATE):
            raise UnsupportedFunctionError("NTLM cannot authenticate the server or delegate")
        req = spnego.ContextReq.integrity | spnego.ContextReq.confidentiality
        if requested & ContextReq.IDENTIFY:
            req |= spnego.ContextReq.identify
        self._ntlm = spnego.client(
            credentials.spnego_credential(), protocol="ntlm", context_req=req
        )
        self._target = target_name or ""
        self._lifetime = lifetime
        self._clock = clock
        self._leg = 0

    def step(self, token: bytes | None) -> bytes | None:
        leg, self._leg = self._leg, self._leg + 1
        if leg == 0:
            if token is not None:
                raise InvalidTokenError("ntlm client expects no token on its first step")
            return bytes(_native(lambda: self._ntlm.step(), InvalidTokenError, "NTLM negotiate"))
        if leg == 1:
            if token is None:
                raise InvalidTokenError("ntlm client expected the server's challenge")
            check_ntlm_message(token, CHALLENGE)
            out = _native(
                lambda: self._ntlm.step(token), InvalidTokenError, "NTLM challenge rejected"
            )
            peer = "(unverified) " + self._target
            result = _result(self._ntlm, peer, self._lifetime, self._clock)
            self.result = MechanismResult(
                granted=result.granted,
                impersonation_level=result.impersonation_level,
                protector=result.protector,
                peer=result.peer.replace(impersonation_level=ImpersonationLevel.IDENTIFY),
                expires_at=result.expires_at,
                peer_native_name=peer,
                session_key=result.session_key,
            )
            self.complete = True
            return bytes(out)
        raise InvalidTokenError("ntlm handshake has no more steps")


def standard_server(
    credentials: Any,
    options: dict[str, Any],
    clock: Callable[[], float],
    extended: Callable[[], Mechanism],
) -> Mechanism:
    """The ntlm package's hook for ``options["standard"]`` on AcceptSecurityContext."""
    if not isinstance(credentials, NtlmServerCredentials):
        raise NoCredentialsError("ntlm server contexts need INBOUND ntlm credentials")
    lifetime = float(options.get("lifetime", _DEFAULT_LIFETIME))
    standard = lambda: StandardNtlmServer(credentials, lifetime, clock)  # noqa: E731
    if options["standard"] == "only":
        return standard()
    return AutoServer(extended, standard, _MAGIC)


def standard_client(
    credentials: Any,
    target_name: str | None,
    requested: ContextReq,
    options: dict[str, Any],
    clock: Callable[[], float] = time.time,
) -> Mechanism:
    """The ntlm package's hook for ``options["standard"]`` on InitializeSecurityContext."""
    if not isinstance(credentials, NtlmClientCredentials):
        raise NoCredentialsError("ntlm client contexts need OUTBOUND ntlm credentials")
    lifetime = float(options.get("lifetime", _DEFAULT_LIFETIME))
    return StandardNtlmClient(credentials, target_name, requested, lifetime, clock)
