"""The ``ntlm`` security package: NTLMv2 challenge/response through pyspnego.

Like the seed's NT 4.0 provider it authenticates the client only (no MUTUAL_AUTH) and never
delegates: asking for DELEGATE leaves it out of the granted attributes, and onward calls made
while impersonating an ntlm caller fail with DELEGATION_REQUIRED.

Handshake (4 tokens, the last one ours)::

    C -> S  NEGOTIATE
    S -> C  CHALLENGE
    C -> S  AUTHENTICATE | ContextOffer | HMAC(K_offer, offer)
    S -> C  ContextGrant | HMAC(K_grant, grant)

NTLM's own sign/seal (RC4 + HMAC-MD5 with one running keystream) is strictly ordered, so it
cannot serve calls multiplexed out of order on one HTTP/2 connection. As SMB 3 does with the
same session key (MS-SMB2 §3.1.4.2), we derive per-direction keys from the NTLM exported
session key with the SP 800-108 counter-mode KDF (HMAC-SHA256) and protect messages with the
core's AES-256-GCM protector. The offer and grant MACs use keys from the same KDF, so both
sides know the flags were not changed in transit.

Server credentials come from a user file in the formats pyspnego (and gss-ntlmssp) read:
``DOMAIN:USER:PASSWORD`` or smbpasswd lines, parsed once per credentials handle
(``_ntlm_users``: an unknown user costs a dict lookup, pyspnego hashes nothing). Only NTLMv2
responses are accepted (LM_COMPAT_LEVEL 5). Client credentials hash the password once, when
acquired: pyspnego gets the NT hash (``spnego.NTLMHash``), not the password it would hash
(MD4, and DES for an LM hash NTLMv2 never uses) on every handshake.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

import spnego
import spnego.exceptions
from spnego._ntlm_raw.crypto import ntowfv1  # pyspnego's MD4 (OpenSSL 3 has none by default)

from rpcsec.packages._ntlm_users import NtlmUserStore, authenticate_user, with_names
from rpcsec.security._token import AccessToken
from rpcsec.sspi._errors import (
    InvalidTokenError,
    LogonDeniedError,
    MessageAlteredError,
    NoCredentialsError,
)
from rpcsec.sspi._flags import ContextReq, CredentialUse, ImpersonationLevel, PackageCapability
from rpcsec.sspi._negotiation import OFFER_SIZE, ContextGrant, ContextOffer, decide_grant
from rpcsec.sspi._package import Mechanism, MechanismResult, SecurityPackage
from rpcsec.sspi._protection import AeadProtector, MessageProtector, session_key_kdf

__all__ = ["NtlmClientCredentials", "NtlmPackage", "NtlmServerCredentials", "accept_authenticate"]

_CAPABILITIES = (
    PackageCapability.INTEGRITY
    | PackageCapability.PRIVACY
    | PackageCapability.CONNECTION
    | PackageCapability.DATAGRAM
    | PackageCapability.STREAM
    | PackageCapability.IMPERSONATION
)
_FRAME = struct.Struct(">2sBI")
_MAGIC = b"RN"
_MAC_SIZE = 32
_DEFAULT_LIFETIME = 10 * 3600.0
# pyspnego's acceptor reads NTLM_USER_FILE and LM_COMPAT_LEVEL from the environment; guard the
# swap so two servers with different user files in one process cannot see each other's.
_environ_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class NtlmClientCredentials:
    """OUTBOUND material: a user name (``DOMAIN\\user`` or ``user``) and its password, whose
    NT hash (MD4, MS-NLMP §3.3.1 NTOWFv1) is computed once, here, not per handshake."""

    principal: str
    password: str = field(repr=False)
    nt_hash: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.nt_hash:
            object.__setattr__(self, "nt_hash", ntowfv1(self.password).hex().upper())

    def spnego_credential(self) -> spnego.NTLMHash | spnego.Password:
        """What pyspnego's initiator gets: the NT hash, unless LM_COMPAT_LEVEL < 2 asks for LM
        responses (whose LM hash pyspnego then computes from the password, as before)."""
        if _lm_compat_level() < 2:
            return spnego.Password(self.principal, self.password)
        return spnego.NTLMHash(self.principal, nt_hash=self.nt_hash)


@dataclass(frozen=True, slots=True)
class NtlmServerCredentials:
    """INBOUND material: the user file the acceptor checks responses against, and its store
    (parsed once; re-read when the file changes)."""

    principal: str | None
    user_file: str
    store: NtlmUserStore = field(repr=False, compare=False)


def _lm_compat_level() -> int:
    try:
        return int(os.environ.get("LM_COMPAT_LEVEL", 3))
    except ValueError:
        return 3  # pyspnego refuses the value itself when it makes the context


@contextmanager
def _acceptor_environment(user_file: str) -> Iterator[None]:
    """NTLM_USER_FILE and LM_COMPAT_LEVEL as pyspnego's acceptor reads them, for one step."""
    with _environ_lock:
        saved = {name: os.environ.get(name) for name in ("NTLM_USER_FILE", "LM_COMPAT_LEVEL")}
        os.environ["NTLM_USER_FILE"] = user_file
        os.environ["LM_COMPAT_LEVEL"] = "5"  # NTLMv2 responses only
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _kdf(session_key: bytes, label: bytes) -> bytes:
    return session_key_kdf(session_key, b"rpcsec ntlm" + b" " + label)


def _frame(kind: int, ntlm: bytes, extra: bytes = b"") -> bytes:
    return _FRAME.pack(_MAGIC, kind, len(ntlm)) + ntlm + extra


def _unframe(token: bytes, kind: int) -> tuple[bytes, bytes]:
    if len(token) < _FRAME.size:
        raise InvalidTokenError("ntlm token is truncated")
    magic, got_kind, length = _FRAME.unpack_from(token)
    if magic != _MAGIC or got_kind != kind:
        raise InvalidTokenError("not the ntlm token expected at this step")
    end = _FRAME.size + length
    if len(token) < end:
        raise InvalidTokenError("ntlm token is truncated")
    return token[_FRAME.size : end], token[end:]


def _sealed_record(key: bytes, record: bytes) -> bytes:
    return record + hmac.new(key, record, sha256).digest()


def _open_record(key: bytes, data: bytes) -> bytes:
    if len(data) != OFFER_SIZE + _MAC_SIZE:
        raise InvalidTokenError("ntlm negotiation record has the wrong length")
    record, mac = data[:OFFER_SIZE], data[OFFER_SIZE:]
    if not hmac.compare_digest(hmac.new(key, record, sha256).digest(), mac):
        raise MessageAlteredError("ntlm negotiation record does not verify")
    return record


def _spnego_context_req() -> spnego.ContextReq:
    # Ask NTLM for sign + seal so KEY_EXCH gives a fresh random exported session key.
    return spnego.ContextReq.integrity | spnego.ContextReq.confidentiality


class _NtlmClient(Mechanism):
    def __init__(
        self,
        credentials: NtlmClientCredentials,
        target_name: str | None,
        requested: ContextReq,
        impersonation: ImpersonationLevel,
        lifetime: float,
        clock: Callable[[], float],
    ) -> None:
        self._credentials = credentials
        self._target = target_name
        self._offer = ContextOffer(requested, impersonation)
        self._lifetime = lifetime
        self._clock = clock
        self._ntlm: Any = None
        self._session_key = b""
        self._leg = 0

    def step(self, token: bytes | None) -> bytes | None:
        leg = self._leg
        self._leg += 1
        if leg == 0:
            if token is not None:
                raise InvalidTokenError("ntlm client expects no token on its first step")
            host, _, service = (self._target or "").partition("@")[::-1]
            self._ntlm = spnego.client(
                self._credentials.spnego_credential(),
                hostname=host or "unspecified",
                service=service or "host",
                protocol="ntlm",
                context_req=_spnego_context_req(),
            )
            return _frame(1, self._native_step(None))
        if token is None:
            raise InvalidTokenError("ntlm client expected a token from the server")
        if leg == 1:
            challenge, _ = _unframe(token, 2)
            authenticate = self._native_step(challenge)
            self._session_key = self._ntlm.session_key
            offer_key = _kdf(self._session_key, b"offer")
            return _frame(3, authenticate, _sealed_record(offer_key, self._offer.encode()))
        if leg == 2:
            _, sealed_grant = _unframe(token, 4)
            grant = ContextGrant.decode(
                _open_record(_kdf(self._session_key, b"grant"), sealed_grant)
            )
            if grant.granted & ~self._offer.requested.normalized():
                raise InvalidTokenError("server granted attributes that were not requested")
            if grant.impersonation > self._offer.impersonation:
                raise InvalidTokenError("server claimed a higher impersonation level than allowed")
            key = self._session_key
            self.result = MechanismResult(
                granted=grant.granted,
                impersonation_level=grant.impersonation,
                protector=_protector(key, client=True, granted=grant.granted),
                # NTLM never proves the server's identity: this is only the name we asked for.
                peer=AccessToken(
                    principal=self._target or "",
                    package="ntlm",
                    impersonation_level=ImpersonationLevel.IDENTIFY,
                ),
                expires_at=self._clock() + self._lifetime,
                peer_native_name=self._target or "",
                session_key=_kdf(key, b"exported"),
            )
            self.complete = True
            return None
        raise InvalidTokenError("ntlm handshake has no more steps")

    def _native_step(self, token: bytes | None) -> bytes:
        try:
            out = self._ntlm.step(token)
        except spnego.exceptions.SpnegoError as exc:
            raise InvalidTokenError("ntlm token rejected") from exc
        except (ValueError, struct.error, IndexError, KeyError) as exc:
            raise InvalidTokenError("ntlm token is malformed") from exc
        if not out:
            raise InvalidTokenError("ntlm produced no token")
        return bytes(out)


class _NtlmServer(Mechanism):
    def __init__(
        self,
        credentials: NtlmServerCredentials,
        requested: ContextReq,
        lifetime: float,
        clock: Callable[[], float],
    ) -> None:
        self._credentials = credentials
        self._requires = requested
        self._lifetime = lifetime
        self._clock = clock
        with _acceptor_environment(credentials.store.placeholder):
            self._ntlm = spnego.server(protocol="ntlm", context_req=_spnego_context_req())
        self._leg = 0

    def step(self, token: bytes | None) -> bytes | None:
        if token is None:
            raise InvalidTokenError("ntlm server needs the client's token")
        leg = self._leg
        self._leg += 1
        if leg == 0:
            negotiate, _ = _unframe(token, 1)
            return _frame(2, self._native_negotiate(negotiate))
        if leg == 1:
            authenticate, sealed_offer = _unframe(token, 3)
            accept_authenticate(self._ntlm, self._credentials.store, authenticate)
            if not self._ntlm.complete:
                raise InvalidTokenError("ntlm authentication did not complete")
            session_key = bytes(self._ntlm.session_key)
            offer = ContextOffer.decode(_open_record(_kdf(session_key, b"offer"), sealed_offer))
            grant = decide_grant(offer, _CAPABILITIES, self._requires, mutual_proven=False)
            principal = str(self._ntlm.client_principal or "")
            if not principal:
                raise LogonDeniedError("ntlm authentication named no user")
            now = self._clock()
            self.result = MechanismResult(
                granted=grant.granted,
                impersonation_level=grant.impersonation,
                protector=_protector(session_key, client=False, granted=grant.granted),
                peer=AccessToken(
                    principal=principal,
                    package="ntlm",
                    impersonation_level=grant.impersonation,
                    expires_at=now + self._lifetime,
                ),
                expires_at=now + self._lifetime,
                peer_native_name=principal,
                session_key=_kdf(session_key, b"exported"),
            )
            self.complete = True
            return _frame(4, b"", _sealed_record(_kdf(session_key, b"grant"), grant.encode()))
        raise InvalidTokenError("ntlm handshake has no more steps")

    def _native_negotiate(self, token: bytes) -> bytes:
        try:
            with _acceptor_environment(self._credentials.store.placeholder):
                out = self._ntlm.step(token)
        except spnego.exceptions.SpnegoError as exc:
            raise InvalidTokenError("ntlm token rejected") from exc
        except Exception as exc:  # pyspnego's parsers raise assorted errors on garbage
            raise InvalidTokenError("ntlm token is malformed") from exc
        return bytes(out or b"")


def accept_authenticate(ntlm: Any, store: NtlmUserStore, message: bytes) -> None:
    """pyspnego's acceptor steps on an AUTHENTICATE message against the one user the message
    names, from ``store`` (no scan of the user file, no hash of a password). An unknown user's
    message is checked, renamed, against the store's decoy account, and refused: the same work
    as a wrong password, so the time taken does not say which users exist.

    Raises:
        LogonDeniedError: unknown user, or the response does not verify.
        InvalidTokenError: the message is malformed.
    """
    user_file = store.entry_file(*authenticate_user(message))
    if user_file is None:
        # Whatever pyspnego makes of it (it cannot verify: nobody knows the decoy's hash),
        # the answer is no.
        with contextlib.suppress(Exception), _acceptor_environment(store.decoy_file):
            ntlm.step(with_names(message, *store.decoy))
        raise LogonDeniedError("ntlm logon failed")
    try:
        with _acceptor_environment(user_file):
            ntlm.step(message)
    except spnego.exceptions.SpnegoError as exc:
        raise LogonDeniedError("ntlm logon failed") from exc
    except Exception as exc:  # pyspnego's parsers raise assorted errors on garbage
        raise InvalidTokenError("ntlm token is malformed") from exc


def _protector(session_key: bytes, *, client: bool, granted: ContextReq) -> MessageProtector:
    return AeadProtector.from_session_key(
        session_key, b"rpcsec ntlm", client=client, datagram=bool(granted & ContextReq.DATAGRAM)
    )


class NtlmPackage(SecurityPackage):
    """NTLMv2 through pyspnego: client authentication only, no delegation (NT 4.0 semantics)."""

    name = "ntlm"
    comment = "NTLMv2 challenge/response (pyspnego); no mutual auth, no delegation"
    capabilities = _CAPABILITIES
    max_token = 2888

    def acquire_credentials(
        self, principal: str | None, use: CredentialUse, options: dict[str, Any]
    ) -> Any:
        if use & CredentialUse.INBOUND:
            user_file = options.get("user_file") or os.environ.get("NTLM_USER_FILE")
            if not user_file or not os.path.isfile(user_file):
                raise NoCredentialsError("ntlm server credentials need a readable user_file")
            user_file = os.fspath(user_file)
            return NtlmServerCredentials(principal, user_file, NtlmUserStore(user_file))
        password = options.get("password")
        if not principal or not isinstance(password, str):
            raise NoCredentialsError("ntlm client credentials need a principal and a password")
        return NtlmClientCredentials(principal=principal, password=password)

    def client_mechanism(
        self,
        credentials: Any,
        *,
        target_name: str | None,
        requested: ContextReq,
        impersonation: ImpersonationLevel,
        options: dict[str, Any],
        clock: Callable[[], float] = time.time,
    ) -> Mechanism:
        if not isinstance(credentials, NtlmClientCredentials):
            raise NoCredentialsError("ntlm client contexts need OUTBOUND ntlm credentials")
        if options.get("standard"):  # bare NTLM messages for a standard peer
            from rpcsec.packages import _standard_ntlm

            return _standard_ntlm.standard_client(credentials, target_name, requested, options)
        lifetime = float(options.get("lifetime", _DEFAULT_LIFETIME))
        return _NtlmClient(credentials, target_name, requested, impersonation, lifetime, clock)

    def server_mechanism(
        self,
        credentials: Any,
        *,
        requested: ContextReq,
        options: dict[str, Any],
        clock: Callable[[], float] = time.time,
    ) -> Mechanism:
        if not isinstance(credentials, NtlmServerCredentials):
            raise NoCredentialsError("ntlm server contexts need INBOUND ntlm credentials")
        lifetime = float(options.get("lifetime", _DEFAULT_LIFETIME))
        if options.get("standard"):  # also standard NTLM clients (curl --ntlm)
            from rpcsec.packages import _standard_ntlm

            extended = lambda: _NtlmServer(credentials, requested, lifetime, clock)  # noqa: E731
            return _standard_ntlm.standard_server(credentials, options, clock, extended)
        return _NtlmServer(credentials, requested, lifetime, clock)

    def import_protector(self, outbound: bytes, inbound: bytes, datagram: bool) -> MessageProtector:
        return AeadProtector(outbound, inbound, datagram=datagram)
