"""The ``negotiate`` security package: SPNEGO (RFC 4178) choosing Kerberos, else NTLM.

Like Windows' Negotiate provider, a context offers Kerberos when this side has Kerberos
credentials and a ticket for the target can be had, and NTLM when it has an NTLM password;
the server picks the first mechanism in the client's list that it can accept. The SPNEGO
exchange is pyspnego's (``protocol="negotiate"``), with Kerberos through python-gssapi and the
pure-Python NTLM; the mechanism really used is reported as ``peer.package`` ("kerberos" or
"ntlm") and shows in the granted attributes (MUTUAL_AUTH and DELEGATE only with Kerberos).

Handshake, in frames of ``rpcsec.packages.kerberos._records``::

    C -> S  frame(1, NegTokenInit, offer record)     bound into the mechanism's authenticator
    S -> C  frame(2, NegTokenResp, grant + MAC)      grant only on the server's last leg
    C -> S  frame(3, NegTokenResp)                   more legs as the mechanism needs (NTLM)

The offer record rides in the first leg and is bound by GSS channel bindings -- into the
Kerberos AP-REQ checksum or the NTLMv2 MsvAvChannelBindings -- so it costs no extra leg; the
grant rides in the server's last leg with an HMAC-SHA256 over grant and offer record.

Per-message protection: SPNEGO's mechanisms differ (NTLM's sealing is one ordered RC4 stream),
so, as SMB 3 does for sessions authenticated by either (MS-SMB2 §3.1.4.2), per-direction
AES-256-GCM keys are derived from the mechanism's session key with the SP 800-108 counter-mode
KDF (HMAC-SHA256), and the core's ``AeadProtector`` protects messages.

pyspnego's public API takes neither a GSS credential from a credential store nor an acceptor
keytab other than the environment's, and its acceptor does not discard an optimistic token
for a mechanism it cannot accept. So this module hands pyspnego prepared mechanism contexts
(the ``_gssapi_credential`` / ``_negotiate_contexts`` keyword arguments), restricts the server's
to the mechanisms the client offered, and drops an optimistic token the server cannot use, as
RFC 4178 §3.2 prescribes. Those private hooks are all in ``_SpnegoHooks``. A handle's GSS
credentials are adopted once, when acquired or delegated, into the python-gssapi ``Credentials``
that all its contexts then share: wrapping them per context would move the GSS handle out of
the stored one (``_SpnegoHooks.adopt``), and later contexts would use the default ccache.
"""

from __future__ import annotations

import enum
import hmac
import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field, replace
from hashlib import sha256
from typing import Any

import spnego
import spnego.exceptions
from spnego._context import GSSMech
from spnego.channel_bindings import GssChannelBindings

from rpcsec.packages import _standard_negotiate as _standard
from rpcsec.packages._ntlm_users import authenticate_user, with_names
from rpcsec.packages.kerberos._credentials import KerberosCredentials
from rpcsec.packages.kerberos._credentials import acquire as acquire_kerberos
from rpcsec.packages.kerberos._delegation import (
    export_kerberos_credentials,
    import_kerberos_credentials,
)
from rpcsec.packages.kerberos._errors import Phase, translate
from rpcsec.packages.kerberos._handshake import (
    claimed_chain,
    forwarded_ticket,
    require_channel_bound,
)
from rpcsec.packages.kerberos._native import gss, gssapi_unavailable_reason
from rpcsec.packages.kerberos._records import (
    MAX_CHAIN,
    OfferRecord,
    bindings_data,
    decode_frame,
    encode_frame,
)
from rpcsec.packages.kerberos._tokens import (
    AP_REP,
    AP_REQ,
    KRB_ERROR,
    check_any_mic_token,
    check_initial_token,
)

# The ntlm package owns the NTLM user file (its store) and the guarded NTLM_USER_FILE swap
# pyspnego's acceptor needs; negotiate reuses both rather than keeping a second copy.
from rpcsec.packages.ntlm import (
    NtlmClientCredentials,
    NtlmPackage,
    NtlmServerCredentials,
    _acceptor_environment,
)
from rpcsec.security._token import AccessToken
from rpcsec.sspi._credentials import Credentials
from rpcsec.sspi._errors import (
    BadBindingsError,
    InvalidTokenError,
    LogonDeniedError,
    MessageAlteredError,
    NoCredentialsError,
    SecurityError,
    TargetUnknownError,
)
from rpcsec.sspi._flags import (
    ContextReq,
    CredentialUse,
    ImpersonationLevel,
    PackageCapability,
    ProtectionLevel,
)
from rpcsec.sspi._negotiation import OFFER_SIZE, ContextGrant, ContextOffer, decide_grant
from rpcsec.sspi._package import Mechanism, MechanismResult, SecurityPackage
from rpcsec.sspi._protection import AeadProtector, MessageProtector, session_key_kdf

__all__ = ["NegotiateCredentials", "NegotiatePackage"]

log = logging.getLogger("rpcsec.packages.negotiate")

MAGIC = b"RG"
BINDINGS_LABEL = b"rpcsec negotiate offer v1\x00"
LEG_CLIENT_FIRST = 1
LEG_SERVER = 2
LEG_CLIENT = 3
MAX_LEGS = 8
_MAC_SIZE = 32
_DEFAULT_NTLM_LIFETIME = 10 * 3600.0
_KERBEROS = GSSMech.kerberos
_NTLM = GSSMech.ntlm

_BASE = (
    PackageCapability.INTEGRITY
    | PackageCapability.PRIVACY
    | PackageCapability.CONNECTION
    | PackageCapability.DATAGRAM
    | PackageCapability.STREAM
    | PackageCapability.IMPERSONATION
)
_CAPABILITIES = {
    "kerberos": _BASE | PackageCapability.MUTUAL_AUTH | PackageCapability.DELEGATION,
    "ntlm": _BASE,
}
_CREDENTIAL_OPTIONS = frozenset(
    {"ccache", "keytab", "rcache", "password", "ntlm_principal", "user_file"}
)


@dataclass(frozen=True, slots=True, eq=False)
class NegotiateCredentials:
    """The halves a negotiate handle holds; either may be missing, not both."""

    principal: str | None
    kerberos: KerberosCredentials | None = field(default=None, repr=False)
    ntlm_client: NtlmClientCredentials | None = field(default=None, repr=False)
    ntlm_server: NtlmServerCredentials | None = field(default=None, repr=False)

    @property
    def mechanisms(self) -> tuple[str, ...]:
        kinds = []
        if self.kerberos is not None:
            kinds.append("kerberos")
        if self.ntlm_client is not None or self.ntlm_server is not None:
            kinds.append("ntlm")
        return tuple(kinds)


# -- shared pieces ---------------------------------------------------------------------


def _derive(session_key: bytes, label: bytes) -> bytes:
    return session_key_kdf(session_key, b"rpcsec negotiate" + b" " + label)


def _grant_mac(session_key: bytes, grant: bytes, record: bytes) -> bytes:
    return hmac.new(_derive(session_key, b"grant"), grant + record, sha256).digest()


def _protector(session_key: bytes, *, client: bool, granted: ContextReq) -> MessageProtector:
    return AeadProtector.from_session_key(
        session_key,
        b"rpcsec negotiate",
        client=client,
        datagram=bool(granted & ContextReq.DATAGRAM),
    )


def _protection_level(granted: ContextReq) -> ProtectionLevel:
    if granted & ContextReq.CONFIDENTIALITY:
        return ProtectionLevel.PRIVACY
    if granted & ContextReq.INTEGRITY:
        return ProtectionLevel.INTEGRITY
    return ProtectionLevel.NONE


# The one table between the core's ContextReq and pyspnego's (which maps on to GSS / SSPI).
_SPNEGO_FLAGS = (
    (ContextReq.MUTUAL_AUTH, spnego.ContextReq.mutual_auth),
    (ContextReq.DELEGATE, spnego.ContextReq.delegate),
    (ContextReq.IDENTIFY, spnego.ContextReq.identify),
)


def _spnego_req(requested: ContextReq, impersonation: ImpersonationLevel) -> Any:
    """pyspnego's context flags. Integrity and confidentiality always (NTLM's KEY_EXCH gives a
    fresh session key only then); the TGT leaves only for DELEGATE at the DELEGATE level. No
    replay/sequence flags: the core's window decides ordering."""
    wanted = requested.normalized()
    if impersonation < ImpersonationLevel.DELEGATE:
        wanted &= ~ContextReq.DELEGATE
    if impersonation <= ImpersonationLevel.IDENTIFY:
        wanted |= ContextReq.IDENTIFY
    req = spnego.ContextReq.integrity | spnego.ContextReq.confidentiality
    for ours, theirs in _SPNEGO_FLAGS:
        if wanted & ours:
            req |= theirs
    return req


def _from_spnego(attributes: Any) -> ContextReq:
    result = ContextReq.NONE
    for ours, theirs in _SPNEGO_FLAGS:
        if attributes & theirs:
            result |= ours
    return result


def _target(target_name: str | None) -> tuple[str, str]:
    """(service, host) from ``svc@host`` or ``svc/host[@REALM]`` (the realm comes from the
    client's domain_realm mapping, as for any hostbased name)."""
    if not isinstance(target_name, str) or not target_name:
        raise TargetUnknownError("negotiate needs a target such as 'service@host'")
    if "/" in target_name:
        service, _, rest = target_name.partition("/")
        host = rest.split("@", 1)[0]
    else:
        service, _, host = target_name.partition("@")
    if not service or not host or any(ord(ch) < 0x21 for ch in service + host):
        raise TargetUnknownError("negotiate targets are 'service@host' or 'service/host@REALM'")
    return service, host


def _translate(exc: BaseException, phase: Phase, what: str) -> SecurityError:
    """pyspnego / gssapi / parser failures -> the core's typed errors. pyspnego nests errors
    (``base_error``); the innermost GSS error, when there is one, says what happened."""
    if isinstance(exc, SecurityError):
        return exc
    inner: BaseException | None = exc
    for _ in range(4):
        if inner is None:
            break
        if gss is not None and isinstance(inner, gss.GSSError):
            return translate(inner, phase, what)
        inner = getattr(inner, "base_error", None)
    if isinstance(exc, spnego.exceptions.BadBindingsError):
        return BadBindingsError(f"{what}: {exc}")
    if isinstance(exc, spnego.exceptions.BadMICError):
        return MessageAlteredError(f"{what}: {exc}")
    if isinstance(
        exc, spnego.exceptions.NoCredentialError | spnego.exceptions.InvalidCredentialError
    ):
        return NoCredentialsError(f"{what}: {exc}")
    return InvalidTokenError(f"{what}: {exc}")


class _SpnegoHooks:
    """Every use of pyspnego internals, in one place (see the module docstring).

    They are tested against one pyspnego minor series (``TESTED_SERIES``; pyproject bounds the
    dependency to it) and tests/test_negotiate_contract.py checks each hook by name, so an
    upgrade that changes one fails loudly instead of, say, silently using the default ccache.
    """

    TESTED_SERIES = (0, 12)

    @staticmethod
    def version_problem() -> str | None:
        """Why the installed pyspnego is not the series these hooks were tested with, or None."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("pyspnego")
        except PackageNotFoundError:  # pragma: no cover - imported above, so installed
            return "pyspnego's version cannot be read"
        parts = tuple(int(p) if p.isdigit() else -1 for p in installed.split(".")[:2])
        if parts != _SpnegoHooks.TESTED_SERIES:
            tested = ".".join(map(str, _SpnegoHooks.TESTED_SERIES))
            return (
                f"pyspnego {installed} is installed but rpcsec's negotiate hooks into its "
                f"internals (_gssapi_credential, _negotiate_contexts, spnego._spnego) were "
                f"tested with {tested}.x only: pip install 'pyspnego>={tested},<0.13'"
            )
        return None

    @staticmethod
    def parse(token: bytes, *, initial: bool) -> Any:
        """The peer's SPNEGO token through pyspnego's pure-Python ASN.1 parser: a NegTokenInit
        (``initial``) or a NegTokenResp, else ``InvalidTokenError``. Nothing native runs."""
        from spnego._spnego import NegTokenInit, NegTokenResp, unpack_token

        try:
            parsed = unpack_token(bytes(token))
        except Exception as exc:
            raise InvalidTokenError("negotiate token is not well-formed SPNEGO") from exc
        if initial and not (isinstance(parsed, NegTokenInit) and parsed.mech_types):
            raise InvalidTokenError("the first negotiate token is not a SPNEGO NegTokenInit")
        if not initial and not isinstance(parsed, NegTokenResp):
            raise InvalidTokenError("negotiate token is not a SPNEGO NegTokenResp")
        return parsed

    @staticmethod
    def without_optimistic_token(token: bytes) -> bytes:
        """The NegTokenInit with its optimistic mechToken removed (RFC 4178 §3.2)."""
        from spnego._spnego import NegTokenInit, unpack_token

        parsed = unpack_token(token)
        return bytes(
            NegTokenInit(parsed.mech_types, req_flags=parsed.req_flags, mech_list_mic=None).pack()
        )

    @staticmethod
    def ntlm_authenticate(token: bytes) -> bytes | None:
        """The NTLM AUTHENTICATE message (MS-NLMP §2.2.1.3) a SPNEGO token carries, or None."""
        from spnego._spnego import NegTokenInit, NegTokenResp, unpack_token

        try:
            parsed = unpack_token(token)
        except Exception:
            return None
        if isinstance(parsed, NegTokenInit):
            inner = parsed.mech_token
        elif isinstance(parsed, NegTokenResp):
            inner = parsed.response_token
        else:
            return None
        inner = bytes(inner or b"")
        return inner if inner.startswith(b"NTLMSSP\x00\x03\x00\x00\x00") else None

    @staticmethod
    def with_response_token(token: bytes, inner: bytes) -> bytes:
        """A SPNEGO NegTokenResp (or NegTokenInit) as received, carrying ``inner`` as its
        mechanism token instead (RFC 4178 §4.2)."""
        from spnego._spnego import NegTokenInit, NegTokenResp, unpack_token

        parsed = unpack_token(token)
        if isinstance(parsed, NegTokenResp):
            return bytes(
                NegTokenResp(
                    parsed.neg_state, parsed.supported_mech, inner, parsed.mech_list_mic
                ).pack()
            )
        return bytes(
            NegTokenInit(
                parsed.mech_types,
                req_flags=parsed.req_flags,
                mech_token=inner,
                mech_list_mic=parsed.mech_list_mic,
            ).pack()
        )

    @staticmethod
    def is_ntlm_authenticate(token: bytes) -> bool:
        """Whether a SPNEGO token carries an NTLM AUTHENTICATE message."""
        return _SpnegoHooks.ntlm_authenticate(token) is not None

    @staticmethod
    def kerberos_supported() -> bool:
        """pyspnego's Kerberos needs python-gssapi *and* pykrb5 (its 'kerberos' extra)."""
        try:
            from spnego._gss import GSSAPIProxy
        except ImportError:  # pragma: no cover
            return False
        return "kerberos" in GSSAPIProxy.available_protocols()

    @staticmethod
    def deferred_error(mech_context: Any) -> BaseException | None:
        """The GSS error python-gssapi deferred in pyspnego's Kerberos context, if any.

        python-gssapi's high-level contexts defer step errors to the next attribute access
        (``__DEFER_STEP_ERRORS__``); pyspnego's next access then fails with an AttributeError
        that hides the real cause, which is kept in ``_last_err``."""
        context = _SpnegoHooks.gss_context(mech_context)
        error = getattr(context, "_last_err", None)
        return error if isinstance(error, BaseException) else None

    @staticmethod
    def gss_context(mech_context: Any) -> Any:
        """The python-gssapi SecurityContext inside pyspnego's Kerberos proxy, or None."""
        return getattr(mech_context, "_context", None)

    @staticmethod
    def adopt(creds: Any) -> Any:
        """A python-gssapi ``Credentials`` (the type ``_gssapi_credential`` takes) for a raw
        ``gssapi.raw.Creds`` handle, made once where the handle is acquired or delegated.

        ``gssapi.Credentials(base=raw)`` *moves* the GSS handle -- python-gssapi's
        ``Creds(cpy)`` takes ``cpy.raw_creds`` and sets it to ``GSS_C_NO_CREDENTIAL`` -- so
        wrapping per context would leave the stored handle empty after the first context and
        every later one would silently fall back to the default ccache / keytab. Only call
        this on a handle nothing else holds; credentials already high-level are returned as
        they are (the same object), so calling it twice is harmless."""
        import gssapi

        if creds is None or isinstance(creds, gssapi.Credentials):
            return creds
        return gssapi.Credentials(base=creds)

    @staticmethod
    def kerberos(hostname: str, service: str, usage: str, creds: Any, **kwargs: Any) -> Any:
        """pyspnego's Kerberos proxy on ``creds``, shared, never wrapped: every context of a
        credentials handle, in any thread, uses the same GSS credential (MIT krb5 locks it),
        as the kerberos package does with its raw handle."""
        make = spnego.client if usage == "initiate" else spnego.server
        return make(
            hostname=hostname,
            service=service,
            protocol="kerberos",
            _gssapi_credential=creds,
            **kwargs,
        )

    @staticmethod
    def negotiate(usage: str, contexts: dict[Any, Any], **kwargs: Any) -> Any:
        make = spnego.client if usage == "initiate" else spnego.server
        return make(protocol="negotiate", _negotiate_contexts=contexts, **kwargs)


def _is_kerberos_oid(oid: str) -> bool:
    return oid in (_KERBEROS.value, "1.2.840.48018.1.2.2")


def _check_kerberos_parts(parsed: Any, inner: bytes | None, *ids: bytes) -> None:
    """Before pyspnego hands them to MIT: the Kerberos token inside a SPNEGO token (``inner``,
    an AP-REQ or AP-REP / KRB-ERROR by ``ids``) and its mechListMIC (RFC 4121 MIC)."""
    if inner:
        check_initial_token(inner, *ids)
    mic = getattr(parsed, "mech_list_mic", None)
    if mic:
        try:
            check_any_mic_token(mic)
        except MessageAlteredError as exc:
            raise InvalidTokenError(f"negotiate mechListMIC: {exc}") from None


# -- client ---------------------------------------------------------------------


class _Leg(enum.Enum):
    START = "start"
    RUNNING = "running"
    DONE = "done"


class _NegotiateClient(Mechanism):
    def __init__(
        self,
        credentials: NegotiateCredentials,
        *,
        target_name: str | None,
        requested: ContextReq,
        impersonation: ImpersonationLevel,
        options: dict[str, Any],
        clock: Callable[[], float],
        chain: tuple[str, ...],
    ) -> None:
        if credentials.kerberos is None and credentials.ntlm_client is None:
            raise NoCredentialsError("negotiate client contexts need OUTBOUND credentials")
        if credentials.kerberos is not None and credentials.kerberos.initiator is None:
            raise NoCredentialsError("negotiate client contexts need OUTBOUND credentials")
        self._credentials = credentials
        self._service, self._host = _target(target_name)
        self._target = target_name or ""
        self._offer = ContextOffer(requested, impersonation)
        self._record = OfferRecord(self._offer, chain).encode()
        external = options.get("channel_bindings", b"")
        if not isinstance(external, bytes | bytearray | memoryview):
            raise TypeError("channel_bindings must be bytes")
        self._bindings = GssChannelBindings(
            application_data=bindings_data(BINDINGS_LABEL, self._record, bytes(external))
        )
        self._req = _spnego_req(requested, impersonation)
        self._lifetime = float(options.get("lifetime", _DEFAULT_NTLM_LIFETIME))
        self._clock = clock
        self._spnego: Any = None
        self._kerberos: Any = None
        self._leg = _Leg.START
        self._legs = 0
        self._mech = ""  # the mechanism the server chose (NegTokenResp supportedMech)

    def step(self, token: bytes | None) -> bytes | None:
        self._legs += 1
        if self._legs > MAX_LEGS:
            raise InvalidTokenError("negotiate handshake is taking too many legs")
        if self._leg is _Leg.START:
            if token is not None:
                raise InvalidTokenError("negotiate client expects no token on its first step")
            self._leg = _Leg.RUNNING
            out = self._native(self._start)
            return encode_frame(MAGIC, LEG_CLIENT_FIRST, out, self._record)
        if self._leg is not _Leg.RUNNING:
            raise InvalidTokenError("negotiate handshake has no more steps")
        if token is None:
            raise InvalidTokenError("negotiate client expected the server's token")
        frame = decode_frame(MAGIC, token, LEG_SERVER)
        out = b""
        if frame.first:
            parsed = _SpnegoHooks.parse(frame.first, initial=False)
            if parsed.supported_mech:
                self._mech = str(parsed.supported_mech)
            if _is_kerberos_oid(self._mech):
                _check_kerberos_parts(parsed, parsed.response_token, AP_REP, KRB_ERROR)
            if self._spnego.complete:
                raise InvalidTokenError("negotiate server sent a token after completion")
            out = self._native(lambda: self._spnego.step(frame.first)) or b""
        if not frame.second:
            if not out:
                raise InvalidTokenError("negotiate handshake stalled")
            return encode_frame(MAGIC, LEG_CLIENT, out)
        if out or not self._spnego.complete:
            raise InvalidTokenError("negotiate server granted before SPNEGO completed")
        self._leg = _Leg.DONE
        self._finish(frame.second)
        return None

    def _native(self, call: Callable[[], Any]) -> bytes:
        try:
            return bytes(call() or b"")
        except SecurityError:
            raise
        except Exception as exc:
            cause = _SpnegoHooks.deferred_error(self._kerberos) or exc
            raise _translate(cause, Phase.INITIATE, "negotiate handshake failed") from exc

    def _start(self) -> bytes:
        contexts: dict[Any, Any] = {}
        common = {"channel_bindings": self._bindings, "context_req": self._req}
        kerberos = self._credentials.kerberos
        if kerberos is not None:
            self._kerberos = _SpnegoHooks.kerberos(
                self._host, self._service, "initiate", kerberos.initiator, **common
            )
            contexts[_KERBEROS] = self._kerberos
        ntlm = self._credentials.ntlm_client
        if ntlm is not None:
            contexts[_NTLM] = spnego.client(
                ntlm.spnego_credential(),  # the NT hash made once per handle: no DES/MD4 here
                hostname=self._host,
                service=self._service,
                protocol="ntlm",
                **common,
            )
        self._spnego = _SpnegoHooks.negotiate(
            "initiate", contexts, hostname=self._host, service=self._service, **common
        )
        return bytes(self._spnego.step() or b"")

    def _finish(self, sealed_grant: bytes) -> None:
        protocol = self._spnego.negotiated_protocol
        if protocol not in _CAPABILITIES:
            raise InvalidTokenError("negotiate settled on an unknown mechanism")
        session_key = bytes(self._native(lambda: self._spnego.session_key))
        if len(sealed_grant) != OFFER_SIZE + _MAC_SIZE:
            raise InvalidTokenError("negotiate grant has the wrong length")
        record, mac = sealed_grant[:OFFER_SIZE], sealed_grant[OFFER_SIZE:]
        if not hmac.compare_digest(_grant_mac(session_key, record, self._record), mac):
            raise MessageAlteredError("negotiate grant does not verify")
        grant = ContextGrant.decode(record)
        actual = _from_spnego(self._spnego.context_attr)
        offered = self._offer
        if grant.granted & ~offered.requested.normalized():
            raise InvalidTokenError("server granted attributes that were not requested")
        if grant.impersonation > offered.impersonation:
            raise InvalidTokenError("server claimed a higher impersonation level than allowed")
        if grant.granted & ContextReq.DELEGATE and not (
            protocol == "kerberos" and actual & ContextReq.DELEGATE
        ):
            raise InvalidTokenError("server claimed delegation that was not given")
        if grant.granted & ContextReq.MUTUAL_AUTH and not (
            protocol == "kerberos" and actual & ContextReq.MUTUAL_AUTH
        ):
            raise InvalidTokenError("server claimed mutual authentication it did not perform")
        peer_name = self._target
        lifetime = self._lifetime
        if protocol == "kerberos":
            context = _SpnegoHooks.gss_context(self._kerberos)
            if context is not None:
                peer_name = str(context.target_name)
                lifetime = float(context.lifetime)
        expires_at = self._clock() + lifetime
        self.result = MechanismResult(
            granted=grant.granted,
            impersonation_level=grant.impersonation,
            protector=_protector(session_key, client=True, granted=grant.granted),
            peer=AccessToken(
                principal=peer_name,
                package=protocol,
                impersonation_level=ImpersonationLevel.IDENTIFY,
                protection_level=_protection_level(grant.granted),
                expires_at=expires_at,
            ),
            expires_at=expires_at,
            peer_native_name=peer_name,
            session_key=_derive(session_key, b"exported"),
        )
        self.complete = True


# -- server ---------------------------------------------------------------------


class _NegotiateServer(Mechanism):
    def __init__(
        self,
        package: SecurityPackage,
        credentials: NegotiateCredentials,
        *,
        requested: ContextReq,
        options: dict[str, Any],
        clock: Callable[[], float],
    ) -> None:
        acceptor = credentials.kerberos.acceptor if credentials.kerberos else None
        if acceptor is None and credentials.ntlm_server is None:
            raise NoCredentialsError("negotiate server contexts need INBOUND credentials")
        self._package = package
        self._credentials = credentials
        self._acceptor = acceptor
        self._requires = requested
        external = options.get("channel_bindings", b"")
        if not isinstance(external, bytes | bytearray | memoryview):
            raise TypeError("channel_bindings must be bytes")
        self._external = bytes(external)
        self._lifetime = float(options.get("lifetime", _DEFAULT_NTLM_LIFETIME))
        self._clock = clock
        self._spnego: Any = None
        self._kerberos: Any = None
        self._record = b""
        self._offer: OfferRecord | None = None
        self._legs = 0
        self._done = False
        self._kerberos_chosen = False

    def _environment(self, user_file: str | None = None) -> Any:
        """NTLM_USER_FILE for one pyspnego step (``_ntlm_route`` picks it for an AUTHENTICATE;
        any other step gets an empty file)."""
        ntlm = self._credentials.ntlm_server
        if ntlm is None:
            return nullcontext()
        return _acceptor_environment(user_file or ntlm.store.placeholder)

    def _ntlm_route(self, token: bytes) -> tuple[bytes, str | None, bool]:
        """(token to step, user file, known) as the ntlm package's acceptor does it
        (``ntlm.accept_authenticate``): for an NTLM AUTHENTICATE, a one-entry file holding only
        the user it names, from the handle's store -- pyspnego never scans the real file. A user
        the store does not know (or a name with no user part, which pyspnego resolves to the
        file's first entry) is renamed, inside the SPNEGO token, to the store's decoy account,
        so its refusal costs what a wrong password costs (the time does not say which users
        exist); ``known`` False: refuse whatever pyspnego says."""
        ntlm = self._credentials.ntlm_server
        inner = _SpnegoHooks.ntlm_authenticate(token) if ntlm is not None else None
        if ntlm is None or inner is None:
            return token, None, True
        user_file = ntlm.store.entry_file(*authenticate_user(inner))
        if user_file is not None:
            return token, user_file, True
        decoy = _SpnegoHooks.with_response_token(token, with_names(inner, *ntlm.store.decoy))
        return decoy, ntlm.store.decoy_file, False

    def step(self, token: bytes | None) -> bytes | None:
        if self._done:
            raise InvalidTokenError("negotiate handshake has no more steps")
        if token is None:
            raise InvalidTokenError("negotiate server needs the client's token")
        self._legs += 1
        if self._legs > MAX_LEGS:
            raise InvalidTokenError("negotiate handshake is taking too many legs")
        if self._spnego is None:
            frame = decode_frame(MAGIC, token, LEG_CLIENT_FIRST)
            self._offer = OfferRecord.decode(frame.second)
            self._record = frame.second
            first = self._start(frame.first)
        else:
            frame = decode_frame(MAGIC, token, LEG_CLIENT)
            first = frame.first
            parsed = _SpnegoHooks.parse(first, initial=False)
            if self._kerberos_chosen:
                _check_kerberos_parts(parsed, parsed.response_token, AP_REQ)
        first, user_file, known = self._ntlm_route(first)
        if not known:
            with suppress(Exception), self._environment(user_file):
                self._spnego.step(first)  # nobody knows the decoy's hash: it cannot verify
            raise LogonDeniedError("ntlm logon failed")
        out = self._native(lambda: self._spnego.step(first), first, user_file)
        if not self._spnego.complete:
            if not out:
                raise InvalidTokenError("negotiate handshake stalled")
            return encode_frame(MAGIC, LEG_SERVER, out)
        self._done = True
        return encode_frame(MAGIC, LEG_SERVER, out, self._finish())

    def _native(
        self, call: Callable[[], Any], token: bytes = b"", user_file: str | None = None
    ) -> bytes:
        try:
            with self._environment(user_file):
                return bytes(call() or b"")
        except SecurityError:
            raise
        except Exception as exc:
            if (
                isinstance(exc, spnego.exceptions.SpnegoError)
                and not isinstance(exc, spnego.exceptions.BadBindingsError)
                and _SpnegoHooks.is_ntlm_authenticate(token)
            ):
                # The NTLMv2 response did not verify: wrong password or unknown user.
                raise LogonDeniedError("ntlm logon failed") from exc
            cause = _SpnegoHooks.deferred_error(self._kerberos) or exc
            raise _translate(cause, Phase.ACCEPT, "negotiate handshake failed") from exc

    def _start(self, token: bytes) -> bytes:
        """Prepare the acceptor for the mechanisms the client offered, best first."""
        parsed = _SpnegoHooks.parse(token, initial=True)
        offered = [str(oid) for oid in parsed.mech_types]
        assert self._offer is not None
        bindings = GssChannelBindings(
            application_data=bindings_data(BINDINGS_LABEL, self._record, self._external)
        )
        common = {
            "channel_bindings": bindings,
            "context_req": _spnego_req(
                self._offer.offer.requested, self._offer.offer.impersonation
            ),
        }
        contexts: dict[Any, Any] = {}
        for oid in offered:
            if _is_kerberos_oid(oid) and self._acceptor is not None and _KERBEROS not in contexts:
                self._kerberos = _SpnegoHooks.kerberos(
                    "unspecified", "host", "accept", self._acceptor, **common
                )
                contexts[_KERBEROS] = self._kerberos
            elif oid == _NTLM.value and self._credentials.ntlm_server and _NTLM not in contexts:
                with self._environment():
                    contexts[_NTLM] = spnego.server(protocol="ntlm", **common)
        if not contexts:
            raise NoCredentialsError("negotiate: no mechanism the client offers can be accepted")
        self._kerberos_chosen = next(iter(contexts)) == _KERBEROS
        if next(iter(contexts)).value != offered[0] and not (
            _is_kerberos_oid(offered[0]) and _KERBEROS in contexts
        ):
            # The client's optimistic token is for a mechanism we cannot accept: drop it and
            # let SPNEGO tell the client which one we chose (RFC 4178 §3.2).
            token = _SpnegoHooks.without_optimistic_token(token)
        elif _is_kerberos_oid(offered[0]) and _KERBEROS in contexts:
            # The optimistic token goes to MIT's acceptor: it must be a well-formed AP-REQ.
            _check_kerberos_parts(parsed, parsed.mech_token, AP_REQ)
        with self._environment():
            self._spnego = _SpnegoHooks.negotiate("accept", contexts, **common)
        return token

    def _finish(self) -> bytes:
        assert self._offer is not None
        spnego_ctx = self._spnego
        protocol = spnego_ctx.negotiated_protocol
        if protocol not in _CAPABILITIES:
            raise InvalidTokenError("negotiate settled on an unknown mechanism")
        principal = str(spnego_ctx.client_principal or "")
        if not principal:
            raise LogonDeniedError("negotiate authentication named no user")
        session_key = bytes(self._native(lambda: spnego_ctx.session_key))
        actual = _from_spnego(spnego_ctx.context_attr)
        lifetime = self._lifetime
        delegated = None
        service = ""
        context_for_flags = None
        if protocol == "kerberos":
            context = _SpnegoHooks.gss_context(self._kerberos)
            if context is None:
                raise InvalidTokenError("negotiate chose Kerberos without a Kerberos context")
            require_channel_bound(context.actual_flags)
            context_for_flags = context
            lifetime = float(context.lifetime)
            service = str(context.target_name)
            if actual & ContextReq.DELEGATE:
                delegated = _SpnegoHooks.adopt(context.delegated_creds)
        chain = self._offer.chain
        if protocol == "kerberos" and context_for_flags is not None:
            chain = claimed_chain(chain, forwarded_ticket(context_for_flags))
        if len(chain) >= MAX_CHAIN:
            delegated = None  # the chain could not be carried one hop further
        capabilities = _CAPABILITIES[protocol]
        if delegated is None:
            capabilities &= ~PackageCapability.DELEGATION
        grant = decide_grant(
            self._offer.offer,
            capabilities,
            self._requires,
            mutual_proven=protocol == "kerberos" and bool(actual & ContextReq.MUTUAL_AUTH),
        )
        expires_at = self._clock() + lifetime
        onward = None
        if grant.granted & ContextReq.DELEGATE and delegated is not None:
            material = NegotiateCredentials(
                principal=principal,
                kerberos=KerberosCredentials(
                    principal=principal,
                    initiator=delegated,
                    delegation_chain=(*chain, service),
                ),
            )
            onward = Credentials(
                package=self._package,
                principal=principal,
                use=CredentialUse.OUTBOUND,
                material=material,
            )
        self.result = MechanismResult(
            granted=grant.granted,
            impersonation_level=grant.impersonation,
            protector=_protector(session_key, client=False, granted=grant.granted),
            peer=AccessToken(
                principal=principal,
                package=protocol,
                impersonation_level=grant.impersonation,
                delegation_chain=chain,
                protection_level=_protection_level(grant.granted),
                expires_at=expires_at,
                delegated_credentials=onward,
            ),
            expires_at=expires_at,
            peer_native_name=principal,
            session_key=_derive(session_key, b"exported"),
        )
        self.complete = True
        record = grant.encode()
        return record + _grant_mac(session_key, record, self._record)


# -- the package ---------------------------------------------------------------------


def _kerberos_form(principal: str | None) -> bool:
    return principal is None or ("\\" not in principal)


def _acquire(
    principal: str | None, use: CredentialUse, options: dict[str, Any]
) -> NegotiateCredentials:
    unknown = set(options) - _CREDENTIAL_OPTIONS
    if unknown:
        raise TypeError(f"unknown negotiate credential options: {', '.join(sorted(unknown))}")
    kerberos_available = gssapi_unavailable_reason() is None and _SpnegoHooks.kerberos_supported()
    kerberos: KerberosCredentials | None = None
    ntlm_client = ntlm_server = None
    if use & CredentialUse.OUTBOUND:
        explicit = bool(options.get("ccache") or options.get("keytab"))
        if kerberos_available and (explicit or _kerberos_form(principal)):
            krb_options = {k: options[k] for k in ("ccache", "keytab") if options.get(k)}
            try:
                kerberos = acquire_kerberos(
                    principal if _kerberos_form(principal) else None,
                    CredentialUse.OUTBOUND,
                    krb_options,
                )
            except SecurityError:
                if explicit:
                    raise
                log.debug("negotiate: no Kerberos client credentials; offering NTLM only")
        if options.get("password") is not None:
            ntlm_principal = options.get("ntlm_principal") or principal
            ntlm_client = NtlmPackage().acquire_credentials(
                ntlm_principal, CredentialUse.OUTBOUND, {"password": options["password"]}
            )
        if kerberos is None and ntlm_client is None:
            raise NoCredentialsError(
                "negotiate client credentials need a Kerberos ccache/keytab or an NTLM password"
            )
    if use & CredentialUse.INBOUND:
        explicit = bool(options.get("keytab"))
        if kerberos_available and (explicit or os.environ.get("KRB5_KTNAME")):
            krb_options = {k: options[k] for k in ("keytab", "rcache") if options.get(k)}
            try:
                inbound = acquire_kerberos(
                    principal if _kerberos_form(principal) else None,
                    CredentialUse.INBOUND,
                    krb_options,
                )
            except SecurityError:
                if explicit:
                    raise
                log.debug("negotiate: no Kerberos keytab; accepting NTLM only")
            else:
                kerberos = KerberosCredentials(
                    principal=inbound.principal,
                    initiator=kerberos.initiator if kerberos else None,
                    acceptor=inbound.acceptor,
                )
        if options.get("user_file") or os.environ.get("NTLM_USER_FILE"):
            ntlm_server = NtlmPackage().acquire_credentials(
                None, CredentialUse.INBOUND, {"user_file": options.get("user_file")}
            )
        if (kerberos is None or kerberos.acceptor is None) and ntlm_server is None:
            raise NoCredentialsError(
                "negotiate server credentials need a Kerberos keytab or an NTLM user file"
            )
    if kerberos is not None:
        # The handles were just acquired and nothing else holds them: adopt them once into the
        # python-gssapi Credentials that every context of this handle then shares.
        kerberos = replace(
            kerberos,
            initiator=_SpnegoHooks.adopt(kerberos.initiator),
            acceptor=_SpnegoHooks.adopt(kerberos.acceptor),
        )
    name = kerberos.principal if kerberos is not None and kerberos.principal else principal
    return NegotiateCredentials(
        principal=name, kerberos=kerberos, ntlm_client=ntlm_client, ntlm_server=ntlm_server
    )


class NegotiatePackage(SecurityPackage):
    """SPNEGO through pyspnego: Kerberos when both sides can, NTLM otherwise."""

    name = "negotiate"
    comment = "SPNEGO (RFC 4178): Kerberos when possible, else NTLM (pyspnego)"
    capabilities = _CAPABILITIES["kerberos"]
    max_token = 48000

    def availability(self) -> tuple[bool, str]:
        """Unavailable (fail closed) on a pyspnego whose internals the hooks were not tested on."""
        problem = _SpnegoHooks.version_problem()
        return (problem is None, problem or "")

    def acquire_credentials(
        self, principal: str | None, use: CredentialUse, options: dict[str, Any]
    ) -> NegotiateCredentials:
        """Options: ``ccache`` / ``keytab`` / ``rcache`` (Kerberos, as the kerberos package),
        ``password`` with ``ntlm_principal`` (``DOMAIN\\user``; defaults to ``principal``) for
        the NTLM half of a client, ``user_file`` (or ``NTLM_USER_FILE``) for an NTLM server."""
        return _acquire(principal, use, options)

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
        if not isinstance(credentials, NegotiateCredentials):
            raise NoCredentialsError("these are not negotiate credentials")
        if options.get("standard"):  # bare SPNEGO for a standard peer
            return _standard.standard_client(credentials, target_name, requested, options, clock)
        chain = credentials.kerberos.delegation_chain if credentials.kerberos else ()
        return _NegotiateClient(
            credentials,
            target_name=target_name,
            requested=requested,
            impersonation=impersonation,
            options=options,
            clock=clock,
            chain=chain,
        )

    def server_mechanism(
        self,
        credentials: Any,
        *,
        requested: ContextReq,
        options: dict[str, Any],
        clock: Callable[[], float] = time.time,
    ) -> Mechanism:
        if not isinstance(credentials, NegotiateCredentials):
            raise NoCredentialsError("these are not negotiate credentials")
        if options.get("standard"):  # also standard SPNEGO peers
            return _standard.standard_server(
                credentials, requested, options, clock,
                lambda rest: _NegotiateServer(
                    self, credentials, requested=requested, options=rest, clock=clock
                ),
            )  # fmt: skip
        return _NegotiateServer(
            self, credentials, requested=requested, options=options, clock=clock
        )

    def import_protector(self, outbound: bytes, inbound: bytes, datagram: bool) -> MessageProtector:
        return AeadProtector(outbound, inbound, datagram=datagram)

    def export_delegation(self, credentials: Credentials) -> bytes:
        """The Kerberos half of delegated credentials (NTLM never delegates)."""
        material = credentials.material
        if credentials.package is not self or not isinstance(material, NegotiateCredentials):
            raise ValueError("these are not negotiate credentials")
        if material.kerberos is None:
            raise ValueError("only Kerberos credentials received by delegation can be exported")
        return export_kerberos_credentials(material.kerberos)

    def import_delegation(self, blob: bytes, owner: Credentials | None = None) -> Credentials:
        kerberos, raw = import_kerberos_credentials(blob)
        kerberos = replace(kerberos, initiator=_SpnegoHooks.adopt(raw))
        material = NegotiateCredentials(principal=kerberos.principal, kerberos=kerberos)
        return Credentials(
            package=self,
            principal=kerberos.principal,
            use=CredentialUse.OUTBOUND,
            material=material,
        )
