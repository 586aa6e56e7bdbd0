"""The kerberos handshake: one round trip carrying AP-REQ/AP-REP and the offer and grant.

::

    C -> S  frame(1, AP-REQ, offer record)        the record is bound into the AP-REQ
                                                  authenticator by GSS channel bindings
    S -> C  frame(2, AP-REP or empty, grant | HMAC-SHA256(grant | offer record))

The server decides the grant with the core's ``decide_grant`` once the AP-REQ verified, and
returns it with a MAC under a key derived from the context's session key; the client accepts
the context only when the AP-REP (if it asked for mutual authentication) and the grant's MAC
verify. The GSS context is established without replay or sequence flags (see ``_flags``),
with the TGT forwarded only for DELEGATE at the DELEGATE level.

Per-message protection (rpcsec's extended mode, both ends rpcsec): as SMB 3 does for Kerberos
sessions (MS-SMB2 §3.1.4.2), per-direction AES-256-GCM keys are derived from the GSS session
key -- MIT's GSS_C_INQ_SSPI_SESSION_KEY, the acceptor's subkey when the AP-REP carried one,
else the initiator's authenticator subkey, fresh for every context -- with the SP 800-108 KDF,
and the core's ``AeadProtector`` protects messages. MIT's wrap/get_mic are off the hot path,
the GSS context is released when the handshake ends, and a context exports like any other
(``KerberosPackage.import_protector``). Every peer handshake token is structure-checked
(``_tokens``) before MIT's init/accept sees it.

Delegation: with a forwarded TGT and DELEGATE granted, the server's AccessToken carries
``delegated_credentials``, OUTBOUND kerberos credentials for the client principal. Kerberos
tickets cannot record which services a request came through, so the chain is *claimed* by the
party holding the delegated TGT, in its offer record, and bound into its authenticator: it is
authenticated as coming from a holder of the client's TGT, which is as much as Kerberos can
say. The KDC does mark every ticket got with a forwarded TGT FORWARDED (RFC 4120 §2.6, which
lets servers treat such tickets differently), so a delegate cannot pass for the client
itself: a FORWARDED ticket that comes with an empty chain is recorded as coming through
``UNNAMED_DELEGATE``.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from rpcsec.security._token import AccessToken
from rpcsec.sspi._credentials import Credentials
from rpcsec.sspi._errors import (
    BadBindingsError,
    InvalidTokenError,
    MessageAlteredError,
    NoCredentialsError,
    QopNotSupportedError,
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
from rpcsec.sspi._package import Mechanism, MechanismResult
from rpcsec.sspi._protection import (
    AeadProtector,
    MessageProtector,
    hkdf_expand_label,
    session_key_kdf,
)

from ._credentials import KerberosCredentials
from ._errors import Phase, native_call
from ._flags import from_gss, to_gss
from ._names import display, service_name
from ._native import KRB5_MECH, gss
from ._protector import CFX_ENCTYPES, session_key
from ._records import MAX_CHAIN, OfferRecord, bindings_data, decode_frame, encode_frame
from ._tokens import AP_REP, AP_REQ, KRB_ERROR, check_initial_token

if TYPE_CHECKING:
    from rpcsec.sspi._package import SecurityPackage

__all__ = [
    "CAPABILITIES",
    "require_channel_bound",
    "UNNAMED_DELEGATE",
    "KerberosClient",
    "KerberosServer",
    "forwarded_ticket",
]

MAGIC = b"RK"
BINDINGS_LABEL = b"rpcsec kerberos offer v2\x00"  # v2: session-key AEAD, MAC'd grant
KEY_LABEL = b"rpcsec kerberos"
_MAC_SIZE = 32
LEG_INITIATE = 1
LEG_REPLY = 2
UNNAMED_DELEGATE = "(unnamed delegate)"
_TKT_FLG_FORWARDED = 0x20000000  # krb5.h TKT_FLG_FORWARDED (RFC 4120 §5.3 flag 2)

CAPABILITIES = (
    PackageCapability.INTEGRITY
    | PackageCapability.PRIVACY
    | PackageCapability.CONNECTION
    | PackageCapability.DATAGRAM
    | PackageCapability.STREAM
    | PackageCapability.MUTUAL_AUTH
    | PackageCapability.IMPERSONATION
    | PackageCapability.DELEGATION
)


class _Leg(enum.Enum):
    START = "start"
    AWAIT_REPLY = "await-reply"
    DONE = "done"


def protection_level(granted: ContextReq) -> ProtectionLevel:
    if granted & ContextReq.CONFIDENTIALITY:
        return ProtectionLevel.PRIVACY
    if granted & ContextReq.INTEGRITY:
        return ProtectionLevel.INTEGRITY
    return ProtectionLevel.NONE


def exported_key(key: bytes) -> bytes:
    """SECPKG_ATTR_SESSION_KEY: derived from, never equal to, the GSS session key."""
    return hkdf_expand_label(key, b"kerberos exported", 32)


def require_channel_bound(flags: int) -> None:
    """Refuse an AP-REQ whose authenticator did not carry our channel bindings.

    MIT accepts an AP-REQ with no bindings checksum even when the acceptor supplies bindings
    and only says whether they matched in GSS_C_CHANNEL_BOUND_FLAG (krb5 1.20+). Ours always
    carry security -- the offer record, and any TLS exporter value the caller adds -- so an
    unbound AP-REQ (a genuine one made for another protocol, replayed) is BAD_BINDINGS."""
    if not int(flags) & int(gss.RequirementFlag.channel_bound):
        raise BadBindingsError("the Kerberos AP-REQ carries no channel bindings")


def context_key(context: Any) -> bytes:
    """The GSS session key of an established context, refused unless its enctype is one of
    the RFC 4121 ones (AES, Camellia): DES3 and RC4 session keys are not keyed from."""
    key, enctype = session_key(context)
    if enctype not in CFX_ENCTYPES:
        raise QopNotSupportedError(
            f"session enctype {enctype} is an RFC 1964 one; rpcsec needs aes or camellia"
        )
    return key


def message_protector(key: bytes, *, client: bool, granted: ContextReq) -> MessageProtector:
    """Per-direction AES-256-GCM (GCM-SIV for datagram contexts) from the GSS session key."""
    return AeadProtector.from_session_key(
        key, KEY_LABEL, client=client, datagram=bool(granted & ContextReq.DATAGRAM)
    )


def grant_mac(key: bytes, grant: bytes, record: bytes) -> bytes:
    """The server's grant authenticated under the session key and bound to the offer record."""
    return hmac.new(session_key_kdf(key, KEY_LABEL + b" grant"), grant + record, sha256).digest()


def _bindings(record: bytes, external: object) -> Any:
    if not isinstance(external, bytes | bytearray | memoryview):
        raise TypeError("channel_bindings must be bytes")
    data = bindings_data(BINDINGS_LABEL, record, bytes(external))
    return gss.ChannelBindings(application_data=data)


def forwarded_ticket(context: Any) -> bool:
    """Whether the acceptor's ticket was got with a forwarded TGT (gss_krb5_get_tkt_flags)."""
    if not hasattr(gss, "krb5_get_tkt_flags"):  # pragma: no cover - all MIT builds have it
        return False
    with native_call(Phase.ACCEPT, "cannot read the ticket flags"):
        return bool(int(gss.krb5_get_tkt_flags(context)) & _TKT_FLG_FORWARDED)


def claimed_chain(chain: tuple[str, ...], forwarded: bool) -> tuple[str, ...]:
    """The chain to record: the delegate's claim, or the fact that there was a delegate."""
    return chain if chain or not forwarded else (UNNAMED_DELEGATE,)


class KerberosClient(Mechanism):
    """InitializeSecurityContext for Kerberos."""

    def __init__(
        self,
        credentials: KerberosCredentials,
        *,
        target_name: str | None,
        requested: ContextReq,
        impersonation: ImpersonationLevel,
        options: dict[str, Any],
        clock: Callable[[], float],
    ) -> None:
        if credentials.initiator is None:
            raise NoCredentialsError("kerberos client contexts need OUTBOUND credentials")
        if target_name is None:
            raise TargetUnknownError("kerberos needs a target service principal")
        self._creds = credentials.initiator
        self._target = service_name(target_name)
        self._offer = ContextOffer(requested, impersonation)
        self._record = OfferRecord(self._offer, credentials.delegation_chain).encode()
        self._flags = to_gss(requested, impersonation)
        self._bindings = _bindings(self._record, options.get("channel_bindings", b""))
        self._clock = clock
        self._context: Any = None
        self._leg = _Leg.START

    def step(self, token: bytes | None) -> bytes | None:
        if self._leg is _Leg.START:
            if token is not None:
                raise InvalidTokenError("kerberos client expects no token on its first step")
            with native_call(Phase.INITIATE, "cannot make the Kerberos AP-REQ"):
                result = gss.init_sec_context(
                    self._target,
                    creds=self._creds,
                    mech=KRB5_MECH,
                    flags=self._flags,
                    channel_bindings=self._bindings,
                )
            self._context = result.context
            self._leg = _Leg.AWAIT_REPLY
            return encode_frame(MAGIC, LEG_INITIATE, bytes(result.token or b""), self._record)
        if self._leg is _Leg.AWAIT_REPLY:
            if token is None:
                raise InvalidTokenError("kerberos client expected the server's reply")
            self._leg = _Leg.DONE
            self._finish(token)
            return None
        raise InvalidTokenError("kerberos handshake has no more steps")

    def _finish(self, token: bytes) -> None:
        frame = decode_frame(MAGIC, token, LEG_REPLY)
        if frame.first:
            check_initial_token(frame.first, AP_REP, KRB_ERROR)
        with native_call(Phase.INITIATE, "the server's Kerberos AP-REP was rejected"):
            status = gss.inquire_context(
                self._context,
                complete=True,
                initiator_name=False,
                target_name=False,
                lifetime=False,
                mech=False,
                flags=False,
                locally_init=False,
            )
            if not status.complete:
                if not frame.first:
                    raise InvalidTokenError("the server's reply lacks the Kerberos AP-REP")
                result = gss.init_sec_context(
                    self._target,
                    creds=self._creds,
                    context=self._context,
                    mech=KRB5_MECH,
                    flags=self._flags,
                    channel_bindings=self._bindings,
                    input_token=frame.first,
                )
                if result.more_steps:
                    raise InvalidTokenError("Kerberos handshake did not complete")
            elif frame.first:
                raise InvalidTokenError("unexpected AP-REP for a context without mutual auth")
            info = gss.inquire_context(self._context)
        key = context_key(self._context)
        self._context = None  # the handshake is over: MIT's context is not needed any more
        if len(frame.second) != OFFER_SIZE + _MAC_SIZE:
            raise InvalidTokenError("kerberos grant has the wrong length")
        record, mac = frame.second[:OFFER_SIZE], frame.second[OFFER_SIZE:]
        if not hmac.compare_digest(grant_mac(key, record, self._record), mac):
            raise MessageAlteredError("kerberos grant does not verify")
        grant = ContextGrant.decode(record)
        actual = from_gss(info.flags)  # what GSS really did: AP-REP verified, TGT forwarded
        offered = self._offer
        if grant.granted & ~offered.requested.normalized():
            raise InvalidTokenError("server granted attributes that were not requested")
        if grant.impersonation > offered.impersonation:
            raise InvalidTokenError("server claimed a higher impersonation level than allowed")
        if grant.granted & ContextReq.DELEGATE and not actual & ContextReq.DELEGATE:
            raise InvalidTokenError("server claimed delegation that was not given")
        if grant.granted & ContextReq.MUTUAL_AUTH and not actual & ContextReq.MUTUAL_AUTH:
            raise InvalidTokenError("server claimed mutual authentication it did not perform")
        expires_at = self._clock() + max(0, int(info.lifetime))
        server = display(info.target_name)
        self.result = MechanismResult(
            granted=grant.granted,
            impersonation_level=grant.impersonation,
            protector=message_protector(key, client=True, granted=grant.granted),
            peer=AccessToken(
                principal=server,
                package="kerberos",
                impersonation_level=ImpersonationLevel.IDENTIFY,
                protection_level=protection_level(grant.granted),
                expires_at=expires_at,
            ),
            expires_at=expires_at,
            peer_native_name=server,
            session_key=exported_key(key),
        )
        self.complete = True


class KerberosServer(Mechanism):
    """AcceptSecurityContext for Kerberos."""

    def __init__(
        self,
        package: SecurityPackage,
        credentials: KerberosCredentials,
        *,
        requested: ContextReq,
        options: dict[str, Any],
        clock: Callable[[], float],
    ) -> None:
        if credentials.acceptor is None:
            raise NoCredentialsError("kerberos server contexts need INBOUND credentials")
        self._package = package
        self._creds = credentials.acceptor
        self._requires = requested
        self._external = options.get("channel_bindings", b"")
        self._clock = clock
        self._done = False

    def step(self, token: bytes | None) -> bytes | None:
        if self._done:
            raise InvalidTokenError("kerberos handshake has no more steps")
        if token is None:
            raise InvalidTokenError("kerberos server needs the client's token")
        self._done = True
        frame = decode_frame(MAGIC, token, LEG_INITIATE)
        record = OfferRecord.decode(frame.second)
        check_initial_token(frame.first, AP_REQ)
        with native_call(Phase.ACCEPT, "the client's Kerberos AP-REQ was rejected"):
            result = gss.accept_sec_context(
                frame.first,
                acceptor_creds=self._creds,
                channel_bindings=_bindings(frame.second, self._external),
            )
            if result.more_steps:
                raise InvalidTokenError("Kerberos handshake did not complete in one step")
            require_channel_bound(result.flags)
            own = gss.inquire_context(
                result.context,
                target_name=True,
                initiator_name=False,
                lifetime=False,
                mech=False,
                flags=False,
                locally_init=False,
                complete=False,
            ).target_name
        context = result.context
        actual = from_gss(result.flags)
        client = display(result.initiator_name)
        service = display(own)
        chain = claimed_chain(record.chain, forwarded_ticket(context))
        delegated = result.delegated_creds if actual & ContextReq.DELEGATE else None
        if len(chain) >= MAX_CHAIN:
            delegated = None  # the chain could not be carried one hop further
        capabilities = (
            CAPABILITIES
            if delegated is not None
            else CAPABILITIES & ~(PackageCapability.DELEGATION)
        )
        grant = decide_grant(
            record.offer,
            capabilities,
            self._requires,
            # MIT acceptors send an AP-REP exactly when the client asked for mutual auth.
            mutual_proven=bool(actual & ContextReq.MUTUAL_AUTH),
        )
        key = context_key(context)
        answer = grant.encode()
        reply = encode_frame(
            MAGIC,
            LEG_REPLY,
            bytes(result.token or b""),
            answer + grant_mac(key, answer, frame.second),
        )
        expires_at = self._clock() + max(0, int(result.lifetime or 0))
        onward = None
        if grant.granted & ContextReq.DELEGATE and delegated is not None:
            onward = Credentials(
                package=self._package,
                principal=client,
                use=CredentialUse.OUTBOUND,
                material=KerberosCredentials(
                    principal=client,
                    initiator=delegated,
                    delegation_chain=(*chain, service),
                ),
            )
        self.result = MechanismResult(
            granted=grant.granted,
            impersonation_level=grant.impersonation,
            protector=message_protector(key, client=False, granted=grant.granted),
            peer=AccessToken(
                principal=client,
                package="kerberos",
                impersonation_level=grant.impersonation,
                delegation_chain=chain,
                protection_level=protection_level(grant.granted),
                expires_at=expires_at,
                delegated_credentials=onward,
            ),
            expires_at=expires_at,
            peer_native_name=client,
            session_key=exported_key(key),
        )
        self.complete = True
        return reply
