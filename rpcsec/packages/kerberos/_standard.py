"""Standard mode for Kerberos and SPNEGO: the GSS-API exchange exactly as MIT, curl, Apache and
python-gssapi speak it, without rpcsec's frame, offer record or grant.

Between two rpcsec ends the kerberos package wraps the AP-REQ in a frame with an authenticated
offer and answers with a wrapped grant (``_handshake``). A standard peer (``gss-client``,
``curl --negotiate``, mod_auth_gssapi) sends and expects bare RFC 2743 §3.1 tokens: an
InitialContextToken (``0x60``, the mechanism OID: Kerberos V5, RFC 4121 §4.1, or SPNEGO,
RFC 4178 §4.2) and continuation tokens. This module is that exchange, as rpcsec
``Mechanism`` objects, so that the result is still a ``MechanismResult`` with an
``AccessToken`` for the caller:

* granted attributes come from the context's own GSS flags (ret_flags, RFC 2744 §5.1), with
  REPLAY_DETECT / SEQUENCE_DETECT when GSS itself enforces them (``STANDARD_TABLE``);
* the impersonation level is what Kerberos can show: DELEGATE when the client forwarded a TGT,
  IDENTIFY when it set GSS_C_IDENTIFY_FLAG, else IMPERSONATE;
* what a standard peer cannot say is reported as such: no delegation chain is claimed (a
  ticket got with a forwarded TGT is recorded as coming through ``UNNAMED_DELEGATE``), and the
  client side of a context that did not perform mutual authentication gets the target name,
  not a proven server (``IDENTIFY``-level peer token named ``(unverified) <target>``).

The acceptor's first token is checked for its DER structure and mechanism OID before libkrb5
sees it (``initial_token_mech``); continuation tokens are checked for a well-formed outer DER
element.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rpcsec.packages._standard import AutoServer, StandardMessages
from rpcsec.security._token import AccessToken
from rpcsec.sspi._credentials import Credentials
from rpcsec.sspi._errors import (
    InvalidTokenError,
    NoCredentialsError,
    TargetUnknownError,
    UnsupportedFunctionError,
)
from rpcsec.sspi._flags import ContextReq, CredentialUse, ImpersonationLevel
from rpcsec.sspi._package import Mechanism, MechanismResult

from ._credentials import KerberosCredentials
from ._errors import Phase, native_call
from ._flags import from_gss
from ._handshake import claimed_chain, exported_key, forwarded_ticket, protection_level
from ._names import display, service_name
from ._native import KRB5_MECH, SPNEGO_MECH, gss
from ._protector import GssProtector, session_key

if TYPE_CHECKING:
    from rpcsec.sspi._package import SecurityPackage

__all__ = [
    "KRB5_OID_DER",
    "SPNEGO_MECH",
    "SPNEGO_OID_DER",
    "StandardClient",
    "StandardGssProtector",
    "StandardServer",
    "check_der_element",
    "initial_token_mech",
]

# DER of the two mechanism OIDs an InitialContextToken may carry (tag 06, length, arcs).
KRB5_OID_DER = bytes.fromhex("06092a864886f712010202")  # 1.2.840.113554.1.2.2
SPNEGO_OID_DER = bytes.fromhex("06062b0601050502")  # 1.3.6.1.5.5.2
MAX_STANDARD_TOKEN = 64 * 1024
UNVERIFIED_PREFIX = "(unverified) "


class Mech(enum.Enum):
    """Which GSS mechanism a standard token is for."""

    KERBEROS = "kerberos"
    SPNEGO = "spnego"


def _der_length(token: bytes, pos: int) -> tuple[int, int]:
    """(length, offset of the contents) of the DER length at ``pos`` (X.690 §8.1.3)."""
    if pos >= len(token):
        raise InvalidTokenError("GSS token is truncated")
    first = token[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count == 0 or count > 4 or pos + 1 + count > len(token):
        raise InvalidTokenError("GSS token has a bad DER length")
    length = int.from_bytes(token[pos + 1 : pos + 1 + count], "big")
    if length < 0x80 or token[pos + 1] == 0:
        raise InvalidTokenError("GSS token has a non-minimal DER length")
    return length, pos + 1 + count


def check_der_element(token: bytes, tags: frozenset[int]) -> None:
    """Raise ``InvalidTokenError`` unless ``token`` is exactly one DER element with a tag from
    ``tags`` (size-bounded): the outer shape every GSS token has (RFC 2743 §3.1, RFC 4178 §4.2)."""
    if not isinstance(token, bytes | bytearray) or not token:
        raise InvalidTokenError("empty GSS token")
    if len(token) > MAX_STANDARD_TOKEN:
        raise InvalidTokenError("GSS token is too large")
    if token[0] not in tags:
        raise InvalidTokenError("not a GSS token")
    length, start = _der_length(token, 1)
    if start + length != len(token):
        raise InvalidTokenError("GSS token length does not match its DER header")


def initial_token_mech(token: bytes) -> Mech:
    """The mechanism of an InitialContextToken (``0x60 len OID ...``), checked before any native
    code parses it; ``InvalidTokenError`` for anything else."""
    check_der_element(token, frozenset({0x60}))
    _, start = _der_length(token, 1)
    if token.startswith(KRB5_OID_DER, start):
        return Mech.KERBEROS
    if token.startswith(SPNEGO_OID_DER, start):
        return Mech.SPNEGO
    raise InvalidTokenError("GSS token is for an unsupported mechanism")


# Continuation tokens: a Kerberos InitialContextToken-framed AP-REP / KRB-ERROR (0x60), or a
# SPNEGO NegTokenResp ([1], 0xa1) / NegTokenInit ([0], 0xa0) without the outer framing.
_CONTINUATION_TAGS = frozenset({0x60, 0xA0, 0xA1})


def _standard_flags() -> tuple[tuple[ContextReq, int], ...]:
    if gss is None:  # pragma: no cover
        return ()
    flag = gss.RequirementFlag
    return (
        (ContextReq.REPLAY_DETECT, int(flag.replay_detection)),
        (ContextReq.SEQUENCE_DETECT, int(flag.out_of_sequence_detection)),
    )


STANDARD_TABLE = _standard_flags()


def standard_granted(flags: int) -> ContextReq:
    """Granted attributes of a standard context: exactly what its GSS ret_flags say."""
    granted = from_gss(flags)
    for ours, theirs in STANDARD_TABLE:
        if int(flags) & theirs:
            granted |= ours
    return granted | ContextReq.CONNECTION


def standard_request_flags(requested: ContextReq) -> int:
    """GSS req_flags for a standard initiator (RFC 2744 §5.19): what the caller asked for, with
    GSS doing its own replay and sequence checks (the peer expects bare RFC 4121 tokens)."""
    requested = requested.normalized()
    flag = gss.RequirementFlag
    table = (
        (ContextReq.DELEGATE, flag.delegate_to_peer),
        (ContextReq.MUTUAL_AUTH, flag.mutual_authentication),
        (ContextReq.REPLAY_DETECT, flag.replay_detection),
        (ContextReq.SEQUENCE_DETECT, flag.out_of_sequence_detection),
        (ContextReq.CONFIDENTIALITY, flag.confidentiality),
        (ContextReq.INTEGRITY, flag.integrity),
        (ContextReq.IDENTIFY, flag.identify),
    )
    out = 0
    for ours, theirs in table:
        if requested & ours:
            out |= int(theirs)
    return out


def check_gss_message(token: bytes) -> None:
    """Shape check of an RFC 4121 §4.2.6 per-message token before GSS sees it (TOK_ID 04 04
    MIC, 05 04 Wrap) or an RFC 1964 InitialContextToken-framed one."""
    if not isinstance(token, bytes | bytearray) or len(token) < 16:
        raise InvalidTokenError("GSS message token is truncated")
    if len(token) > (1 << 24) + 1024:
        raise InvalidTokenError("GSS message token is too large")
    if token[:2] not in (b"\x04\x04", b"\x05\x04") and token[0] != 0x60:
        raise InvalidTokenError("not a GSS message token")


class StandardGssProtector(GssProtector, StandardMessages):
    """The bare RFC 2743 per-message calls a standard peer uses (GSS_Wrap / GSS_Unwrap /
    GSS_GetMIC / GSS_VerifyMIC, RFC 4121 §4.2 tokens, with GSS's own replay and sequence
    checks when the context has them); the core's header-carrying format is refused."""

    __slots__ = ()

    def __init__(self, context: Any, enctype: int) -> None:
        # No size probe (GssProtector's costs a MIC and a wrap): on a context with GSS
        # sequence detection the peer would then see the first real token as a gap.
        del enctype
        self._context = context
        self._lock = threading.Lock()
        self.signature_size = self.trailer_size = 0

    def _unsupported(self) -> UnsupportedFunctionError:
        return UnsupportedFunctionError(
            "standard-mode contexts protect messages with the mechanism's own tokens: "
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
        with self._lock, native_call(Phase.MESSAGE, "GSS_Wrap failed"):
            result = gss.wrap(self._context, bytes(data), confidential=encrypt)
        if encrypt and not result.encrypted:
            raise InvalidTokenError("GSS_Wrap did not encrypt")
        return bytes(result.message)

    def gss_unwrap(self, token: bytes) -> tuple[bytes, bool]:
        check_gss_message(token)
        with self._lock, native_call(Phase.MESSAGE, "wrapped message does not verify"):
            result = gss.unwrap(self._context, bytes(token))
        return bytes(result.message), bool(result.encrypted)

    def gss_get_mic(self, data: bytes) -> bytes:
        with self._lock, native_call(Phase.MESSAGE, "GSS_GetMIC failed"):
            return bytes(gss.get_mic(self._context, bytes(data)))

    def gss_verify_mic(self, data: bytes, mic: bytes) -> None:
        check_gss_message(mic)
        with self._lock, native_call(Phase.MESSAGE, "message signature does not verify"):
            gss.verify_mic(self._context, bytes(data), bytes(mic))


def _mech_oid(mech: Mech) -> Any:
    return KRB5_MECH if mech is Mech.KERBEROS else SPNEGO_MECH


class StandardServer(Mechanism):
    """AcceptSecurityContext for a standard Kerberos or SPNEGO initiator (one or more legs)."""

    def __init__(
        self,
        package: SecurityPackage,
        credentials: KerberosCredentials,
        *,
        clock: Callable[[], float],
        mechs: frozenset[Mech] = frozenset({Mech.KERBEROS, Mech.SPNEGO}),
    ) -> None:
        if credentials.acceptor is None:
            raise NoCredentialsError("kerberos server contexts need INBOUND credentials")
        self._package = package
        self._creds = credentials.acceptor
        self._clock = clock
        self._mechs = mechs
        self._context: Any = None
        self.mech: Mech | None = None

    def step(self, token: bytes | None) -> bytes | None:
        if self.complete:
            raise InvalidTokenError("GSS handshake has no more steps")
        if token is None:
            raise InvalidTokenError("GSS acceptor needs the initiator's token")
        if self._context is None:
            self.mech = initial_token_mech(token)
            if self.mech not in self._mechs:
                raise InvalidTokenError("GSS token is for a mechanism this server does not accept")
        else:
            check_der_element(token, _CONTINUATION_TAGS)
        with native_call(Phase.ACCEPT, "the client's GSS token was rejected"):
            result = gss.accept_sec_context(
                token, acceptor_creds=self._creds, context=self._context
            )
        self._context = result.context
        out = bytes(result.token) if result.token else None
        if result.more_steps:
            if not out:
                raise InvalidTokenError("GSS acceptor continued without a token")
            return out
        self._finish(result)
        return out

    def _finish(self, result: Any) -> None:
        context = result.context
        with native_call(Phase.ACCEPT, "cannot inquire the accepted context"):
            own = gss.inquire_context(
                context,
                target_name=True,
                initiator_name=False,
                lifetime=False,
                mech=False,
                flags=False,
                locally_init=False,
                complete=False,
            ).target_name
        client = display(result.initiator_name)
        service = display(own) if own is not None else ""
        granted = standard_granted(result.flags)
        delegated = result.delegated_creds if granted & ContextReq.DELEGATE else None
        chain = claimed_chain((), forwarded_ticket(context))
        if delegated is None:
            granted &= ~ContextReq.DELEGATE
            level = (
                ImpersonationLevel.IDENTIFY
                if granted & ContextReq.IDENTIFY
                else ImpersonationLevel.IMPERSONATE
            )
        else:
            level = ImpersonationLevel.DELEGATE
        key, enctype = session_key(context)
        expires_at = self._clock() + max(0, int(result.lifetime or 0))
        onward = None
        if delegated is not None:
            onward = Credentials(
                package=self._package,
                principal=client,
                use=CredentialUse.OUTBOUND,
                material=KerberosCredentials(
                    principal=client, initiator=delegated, delegation_chain=(*chain, service)
                ),
            )
        self.result = MechanismResult(
            granted=granted,
            impersonation_level=level,
            protector=StandardGssProtector(context, enctype),
            peer=AccessToken(
                principal=client,
                package="kerberos",
                impersonation_level=level,
                delegation_chain=chain,
                protection_level=protection_level(granted),
                expires_at=expires_at,
                delegated_credentials=onward,
            ),
            expires_at=expires_at,
            peer_native_name=client,
            session_key=exported_key(key),
        )
        self.complete = True


class StandardClient(Mechanism):
    """InitializeSecurityContext toward a standard Kerberos or SPNEGO acceptor."""

    def __init__(
        self,
        credentials: KerberosCredentials,
        *,
        target_name: str | None,
        requested: ContextReq,
        clock: Callable[[], float],
        mech: Mech = Mech.KERBEROS,
    ) -> None:
        if credentials.initiator is None:
            raise NoCredentialsError("kerberos client contexts need OUTBOUND credentials")
        if target_name is None:
            raise TargetUnknownError("kerberos needs a target service principal")
        self._creds = credentials.initiator
        self._target_text = target_name
        self._target = service_name(target_name)
        self._requested = requested.normalized()
        self._flags = standard_request_flags(self._requested)
        self._mech = mech
        self._clock = clock
        self._context: Any = None

    def step(self, token: bytes | None) -> bytes | None:
        if self.complete:
            raise InvalidTokenError("GSS handshake has no more steps")
        if self._context is None:
            if token is not None:
                raise InvalidTokenError("GSS initiator expects no token on its first step")
        else:
            if token is None:
                raise InvalidTokenError("GSS initiator expected the server's token")
            check_der_element(token, _CONTINUATION_TAGS)
        with native_call(Phase.INITIATE, "cannot make or continue the GSS context"):
            result = gss.init_sec_context(
                self._target,
                creds=self._creds,
                context=self._context,
                mech=_mech_oid(self._mech),
                flags=self._flags,
                input_token=token,
            )
        self._context = result.context
        out = bytes(result.token) if result.token else None
        if result.more_steps:
            if not out:
                raise InvalidTokenError("GSS initiator continued without a token")
            return out
        self._finish(result)
        return out

    def _finish(self, result: Any) -> None:
        granted = standard_granted(result.flags)
        if self._requested & ContextReq.MUTUAL_AUTH and not granted & ContextReq.MUTUAL_AUTH:
            raise InvalidTokenError("server did not perform the mutual authentication asked for")
        key, enctype = session_key(result.context)
        expires_at = self._clock() + max(0, int(result.lifetime or 0))
        if granted & ContextReq.MUTUAL_AUTH:
            with native_call(Phase.INITIATE, "cannot inquire the context"):
                server = display(gss.inquire_context(result.context).target_name)
        else:
            server = UNVERIFIED_PREFIX + self._target_text
        self.result = MechanismResult(
            granted=granted,
            impersonation_level=(
                ImpersonationLevel.DELEGATE
                if granted & ContextReq.DELEGATE
                else ImpersonationLevel.IMPERSONATE
            ),
            protector=StandardGssProtector(result.context, enctype),
            peer=AccessToken(
                principal=server,
                package="kerberos",
                impersonation_level=ImpersonationLevel.IDENTIFY,
                protection_level=protection_level(granted),
                expires_at=expires_at,
            ),
            expires_at=expires_at,
            peer_native_name=server,
            session_key=exported_key(key),
        )
        self.complete = True


def standard_server(
    package: SecurityPackage,
    credentials: Any,
    requested: ContextReq,
    options: dict[str, Any],
    clock: Callable[[], float],
) -> Mechanism:
    """The package hook for ``options["standard"]`` on AcceptSecurityContext: accept standard
    GSS initiators, and rpcsec's extended handshake too unless ``standard == "only"``."""
    from ._handshake import MAGIC, KerberosServer

    if not isinstance(credentials, KerberosCredentials):
        raise NoCredentialsError("these are not kerberos credentials")
    standard = lambda: StandardServer(package, credentials, clock=clock)  # noqa: E731
    if options["standard"] == "only":
        return standard()
    rest = {k: v for k, v in options.items() if k != "standard"}
    extended = lambda: KerberosServer(  # noqa: E731
        package, credentials, requested=requested, options=rest, clock=clock
    )
    return AutoServer(extended, standard, MAGIC)


def standard_client(
    package: SecurityPackage,
    credentials: Any,
    target_name: str | None,
    requested: ContextReq,
    options: dict[str, Any],
    clock: Callable[[], float],
) -> Mechanism:
    """The package hook for ``options["standard"]`` on InitializeSecurityContext: ``"krb5"``
    (or True) sends a bare Kerberos token, ``"spnego"`` wraps it in SPNEGO."""
    if not isinstance(credentials, KerberosCredentials):
        raise NoCredentialsError("these are not kerberos credentials")
    choice = options["standard"]
    if choice not in (True, "krb5", "spnego"):
        raise ValueError("standard must be True, 'krb5' or 'spnego'")
    mech = Mech.SPNEGO if choice == "spnego" else Mech.KERBEROS
    return StandardClient(
        credentials, target_name=target_name, requested=requested, clock=clock, mech=mech
    )
