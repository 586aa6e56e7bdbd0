"""The x509 handshake: TLS 1.3 (RFC 8446) records as SSPI tokens, then offer, grant and
optional RFC 3820 delegation inside the TLS channel.

Legs of a normal context (4 tokens)::

    C1  ClientHello
    S1  ServerHello .. server Finished
    C2  client Certificate .. Finished | ClientFinish(offer [, delegated chain + possession])
    S2  [NewSessionTicket] | ServerGrant(grant [, fresh delegation public key])   -> server OK
        client reads the grant                                                    -> client OK

With DELEGATE granted the client answers S2 with one more leg, ``C3 = ProxyIssued(proxy)``,
returned together with its OK; the server completes when it has verified it. A HelloRetry-
Request (peers preferring different key shares) adds one round trip inside the TLS part.

Per-message secrets come from the TLS exporter (RFC 8446 §7.5) under labels of ours, 32
bytes per direction, and feed the core's ``AeadProtector``. Proof of possession of a proxy
key is an Ed25519 signature over this connection's exporter value under another label, so a
proxy chain copied from one connection is worthless on another (the channel binding idea of
RFC 5056 / RFC 9266, with the exporter in place of tls-unique).

Each mechanism is a small state machine: one handler per state, allowed transitions listed
as data, any failure sticky.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, ClassVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from rpcsec.security._token import AccessToken
from rpcsec.sspi._credentials import Credentials
from rpcsec.sspi._errors import (
    CertificateWrongUsageError,
    DelegationPolicyError,
    InvalidStateError,
    InvalidTokenError,
    SecurityError,
    WrongPrincipalError,
)
from rpcsec.sspi._flags import (
    ContextReq,
    CredentialUse,
    ImpersonationLevel,
    PackageCapability,
    ProtectionLevel,
)
from rpcsec.sspi._negotiation import ContextOffer, decide_grant
from rpcsec.sspi._package import Mechanism, MechanismResult
from rpcsec.sspi._protection import AeadProtector
from rpcsec.sspi._target import AnyServer

from ._credential import DelegatedChain, X509Credential
from ._extensions import ProxyCertInfo
from ._keys import same_public_key
from ._messages import ClientFinish, ProxyIssued, ServerGrant
from ._peer import VerifiedPeer
from ._proxy import MAX_DEPTH, Delegation, issue_proxy, verify_delegation
from ._spiffe import parse_spiffe_id
from ._tls import DEFAULT_CLOCK_SKEW, TlsChannel, check_clock_skew

if TYPE_CHECKING:
    from rpcsec.sspi._package import SecurityPackage

__all__ = [
    "CLIENT_TO_SERVER_LABEL",
    "DEFAULT_PROXY_LIFETIME",
    "POSSESSION_LABEL",
    "SERVER_TO_CLIENT_LABEL",
    "SESSION_KEY_LABEL",
    "X509ClientMechanism",
    "X509ServerMechanism",
]

CLIENT_TO_SERVER_LABEL = b"EXPORTER-rpcsec-x509 client to server"
SERVER_TO_CLIENT_LABEL = b"EXPORTER-rpcsec-x509 server to client"
SESSION_KEY_LABEL = b"EXPORTER-rpcsec-x509 session key"
POSSESSION_LABEL = b"EXPORTER-rpcsec-x509 proxy possession"
_POSSESSION_CONTEXT = b"rpcsec x509 proxy possession v1\x00"
DEFAULT_PROXY_LIFETIME = 3600.0
_SECRET = 32
_CLIENT_OPTIONS = frozenset({"delegate_to", "delegation_depth", "proxy_lifetime", "clock_skew"})
_SERVER_OPTIONS = frozenset({"accept_delegation", "clock_skew"})
_NO_TARGET = (
    "x509 clients need target_name: the server's SPIFFE ID (spiffe://TRUST-DOMAIN/svc/NAME), "
    "or rpcsec.ANY_SERVER to accept any server of the trust domain (dangerous)"
)


class _State(enum.Enum):
    START = "start"
    TLS = "tls"  # TLS handshake in progress
    GRANT = "grant"  # client: waiting for the server's grant
    DELEGATION = "delegation"  # server: waiting for the proxy certificate
    DONE = "done"
    FAILED = "failed"


def _protection(granted: ContextReq) -> ProtectionLevel:
    if granted & ContextReq.CONFIDENTIALITY:
        return ProtectionLevel.PRIVACY
    if granted & ContextReq.INTEGRITY:
        return ProtectionLevel.INTEGRITY
    return ProtectionLevel.NONE


def _possession_message(channel: TlsChannel) -> bytes:
    return _POSSESSION_CONTEXT + channel.exporter(POSSESSION_LABEL, _SECRET)


class _X509Mechanism(Mechanism):
    """Shared plumbing: the state table, sticky failure, the TLS channel, key export."""

    _HANDLERS: ClassVar[dict[_State, str]]
    _TRANSITIONS: ClassVar[frozenset[tuple[_State, _State]]]
    _MAX_TLS_ROUNDS: ClassVar[int]

    def __init__(
        self,
        package: SecurityPackage,
        material: X509Credential,
        requested: ContextReq,
        clock: Callable[[], float],
        options: dict[str, Any],
    ) -> None:
        if not isinstance(material, X509Credential):
            raise TypeError("x509 contexts need credentials from the x509 package")
        self._skew = check_clock_skew(options.get("clock_skew", DEFAULT_CLOCK_SKEW))
        self._package = package
        self._material = material
        self._requested = requested
        self._clock = clock
        self._state = _State.START
        self._channel: TlsChannel | None = None
        self._tls_rounds = 0
        self.complete = False
        self.result = None

    def _move(self, state: _State) -> None:
        if (self._state, state) not in self._TRANSITIONS:
            raise InvalidStateError(f"x509: no transition {self._state.value} -> {state.value}")
        self._state = state

    def step(self, token: bytes | None) -> bytes | None:
        if self._state is _State.FAILED:
            raise InvalidTokenError("x509 context already failed")
        name = self._HANDLERS.get(self._state)
        if name is None:
            raise InvalidStateError(f"x509 context cannot step in state {self._state.value}")
        if token is not None and len(token) > self._package.max_token:
            self._abort()
            raise InvalidTokenError("handshake token is too large")
        try:
            handler: Callable[[bytes | None], bytes | None] = getattr(self, name)
            return handler(token)
        except (SecurityError, InvalidStateError):
            self._abort()
            raise
        except Exception as exc:  # nothing native (OpenSSL, cryptography) escapes
            self._abort()
            raise InvalidTokenError("x509 handshake failed") from exc

    def _abort(self) -> None:
        """Sticky failure: forget the TLS connection (and any key) for good."""
        self._state = _State.FAILED
        self._channel = None
        self._forget()

    def _forget(self) -> None:
        """Drop per-context secrets a subclass holds."""

    def _verify_time(self) -> float | None:
        """Let OpenSSL verify at the injected clock's time (the system time by default)."""
        return None if self._clock is time.time else self._clock()

    def _new_channel(self, *, server: bool) -> TlsChannel:
        context = self._material.ssl_context(self._verify_time())
        return TlsChannel(context, server=server, clock=self._clock, skew=self._skew)

    def _feed(self, token: bytes | None) -> TlsChannel:
        if token is None:
            raise InvalidTokenError("x509 expected a handshake token")
        channel = self._channel
        assert channel is not None
        channel.feed(token)
        return channel

    def _advance_tls(self, channel: TlsChannel) -> bytes | None:
        """One TLS round: None once the handshake completed, else the records to send."""
        self._tls_rounds += 1
        if self._tls_rounds > self._MAX_TLS_ROUNDS:
            raise InvalidTokenError("TLS handshake takes too many round trips")
        if channel.handshake():
            return None
        out = channel.take_output()
        if not out:
            raise InvalidTokenError("TLS handshake message is truncated")
        return out

    def _secrets(self, channel: TlsChannel, *, client: bool) -> tuple[bytes, bytes, bytes]:
        c2s = channel.exporter(CLIENT_TO_SERVER_LABEL, _SECRET)
        s2c = channel.exporter(SERVER_TO_CLIENT_LABEL, _SECRET)
        session = channel.exporter(SESSION_KEY_LABEL, _SECRET)
        return (c2s, s2c, session) if client else (s2c, c2s, session)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} state={self._state.value}>"


class X509ClientMechanism(_X509Mechanism):
    """InitializeSecurityContext for x509."""

    _HANDLERS: ClassVar[dict[_State, str]] = {
        _State.START: "_send_hello",
        _State.TLS: "_finish_tls",
        _State.GRANT: "_read_grant",
    }
    _TRANSITIONS: ClassVar[frozenset[tuple[_State, _State]]] = frozenset(
        {
            (_State.START, _State.TLS),
            (_State.TLS, _State.TLS),  # after a HelloRetryRequest
            (_State.TLS, _State.GRANT),
            (_State.GRANT, _State.DONE),
        }
    )
    _MAX_TLS_ROUNDS = 2

    def __init__(
        self,
        package: SecurityPackage,
        material: X509Credential,
        *,
        target_name: str | None,
        requested: ContextReq,
        impersonation: ImpersonationLevel,
        options: dict[str, Any],
        clock: Callable[[], float],
    ) -> None:
        super().__init__(package, material, requested, clock, options)
        unknown = set(options) - _CLIENT_OPTIONS
        if unknown:
            raise ValueError(f"unknown x509 client options: {sorted(unknown)}")
        if target_name is None:
            raise ValueError(_NO_TARGET)
        # ANY_SERVER: any server the anchors vouch for (it must still hold serverAuth).
        self._target = None if isinstance(target_name, AnyServer) else target_name
        if self._target is not None:
            parse_spiffe_id(self._target)
        self._impersonation = impersonation
        targets = options.get("delegate_to", ())
        if isinstance(targets, str) or not isinstance(targets, Collection):
            raise TypeError("delegate_to must be a list of SPIFFE IDs")
        for target in targets:
            parse_spiffe_id(target)
        self._delegate_to = frozenset(targets)
        depth = options.get("delegation_depth", 1)
        if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= MAX_DEPTH:
            raise ValueError(f"delegation_depth must be an int from 0 to {MAX_DEPTH}")
        self._depth = depth
        lifetime = options.get("proxy_lifetime", DEFAULT_PROXY_LIFETIME)
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
            raise ValueError("proxy_lifetime must be a positive number of seconds")
        self._proxy_lifetime = float(lifetime)
        self._server: VerifiedPeer | None = None
        self._check_delegated_use()

    @property
    def _wants_delegation(self) -> bool:
        return bool(self._requested & ContextReq.DELEGATE) and (
            self._impersonation >= ImpersonationLevel.DELEGATE
        )

    def _check_delegated_use(self) -> None:
        """Refuse early, before any token, what the delegated chain's policy forbids."""
        delegated = self._material.delegated
        if delegated is None:
            return
        chain = delegated.delegation
        if self._clock() >= chain.expires_at:
            raise DelegationPolicyError("delegated credentials (the proxy chain) have expired")
        if self._target is None or self._target not in chain.targets:
            raise DelegationPolicyError("target is not allowed by the delegation policy")
        if self._wants_delegation:
            if chain.remaining_depth < 1:
                raise DelegationPolicyError("delegation depth exhausted: cannot delegate further")
            if not self._delegate_to <= chain.targets:
                raise DelegationPolicyError("cannot delegate to targets outside the policy")

    def _send_hello(self, token: bytes | None) -> bytes:
        if token is not None:
            raise InvalidTokenError("the x509 client speaks first")
        channel = self._channel = self._new_channel(server=False)
        if channel.handshake():
            raise InvalidTokenError("TLS handshake completed without the server")
        self._move(_State.TLS)
        return channel.take_output()

    def _finish_tls(self, token: bytes | None) -> bytes:
        channel = self._feed(token)
        out = self._advance_tls(channel)
        if out is not None:
            self._move(_State.TLS)
            return out
        server = self._server = self._material.peers.peer(channel.verified_chain())
        if not server.server_auth:
            raise CertificateWrongUsageError("the server's certificate is not for TLS servers")
        if self._target is not None and server.spiffe_id != self._target:
            raise WrongPrincipalError("the server proved another identity than the target")
        channel.expect_end()
        offer = ContextOffer(self._requested, self._impersonation)
        delegated = self._material.delegated
        if delegated is None:
            finish = ClientFinish(offer)
        else:
            chain = delegated.delegation
            finish = ClientFinish(
                offer,
                chain.principal_chain,
                chain.proxies,
                delegated.key.sign(_possession_message(channel)),
            )
        channel.send(finish.encode())
        self._move(_State.GRANT)
        return channel.take_output()

    def _read_grant(self, token: bytes | None) -> bytes | None:
        channel = self._feed(token)
        answer = ServerGrant.decode(channel.receive())
        channel.expect_end()
        grant = answer.grant
        if grant.granted & ~self._requested:
            raise InvalidTokenError("server granted attributes that were not requested")
        if grant.impersonation > self._impersonation:
            raise InvalidTokenError("server took a higher impersonation level than allowed")
        out = None
        if grant.granted & ContextReq.DELEGATE:
            if not self._wants_delegation or len(answer.delegation_key) != 32:
                raise InvalidTokenError("delegation granted without a valid key or request")
            out = self._delegate(channel, answer.delegation_key)
        elif answer.delegation_key:
            raise InvalidTokenError("delegation key sent without granting delegation")
        self._finish(channel, grant.granted, grant.impersonation)
        self._move(_State.DONE)
        return out

    def _delegate(self, channel: TlsChannel, raw_key: bytes) -> bytes:
        """Sign the proxy certificate for the server's fresh key (RFC 3820) and send it."""
        server = self._server
        assert server is not None
        try:
            public = ed25519.Ed25519PublicKey.from_public_bytes(raw_key)
        except ValueError as exc:
            raise InvalidTokenError("delegation key is not an Ed25519 public key") from exc
        material = self._material
        depth = self._depth
        if material.delegated is None:
            signer, signer_key = material.identity.certificate, material.identity.key
            limit = material.identity.not_after
        else:
            chain = material.delegated.delegation
            signer, signer_key = chain.last, material.delegated.key
            limit = chain.expires_at
            depth = min(depth, chain.remaining_depth - 1)
        info = ProxyCertInfo(path_len=depth, delegate=server.spiffe_id, targets=self._delegate_to)
        proxy = issue_proxy(
            signer,
            signer_key,
            public,
            info,
            now=self._clock(),
            lifetime=self._proxy_lifetime,
            not_after_limit=limit,
        )
        channel.send(ProxyIssued(proxy).encode())
        return channel.take_output()

    def _finish(self, channel: TlsChannel, granted: ContextReq, level: ImpersonationLevel) -> None:
        server = self._server
        assert server is not None
        outbound, inbound, session = self._secrets(channel, client=True)
        material = self._material
        expiries = [server.expires_at, material.identity.not_after]
        if material.delegated is not None:
            expiries.append(material.delegated.delegation.expires_at)
        peer = AccessToken(
            principal=server.spiffe_id,
            package=self._package.name,
            impersonation_level=ImpersonationLevel.IDENTIFY,
            groups=server.groups,
            protection_level=_protection(granted),
            expires_at=server.expires_at,
        )
        self.result = MechanismResult(
            granted=granted,
            impersonation_level=level,
            protector=AeadProtector(
                outbound, inbound, datagram=bool(granted & ContextReq.DATAGRAM)
            ),
            peer=peer,
            expires_at=min(expiries),
            peer_native_name=server.subject,
            session_key=session,
        )
        self._channel = None
        self.complete = True


class X509ServerMechanism(_X509Mechanism):
    """AcceptSecurityContext for x509."""

    _HANDLERS: ClassVar[dict[_State, str]] = {
        _State.START: "_tls",
        _State.TLS: "_tls",
        _State.DELEGATION: "_read_proxy",
    }
    _TRANSITIONS: ClassVar[frozenset[tuple[_State, _State]]] = frozenset(
        {
            (_State.START, _State.TLS),
            (_State.TLS, _State.TLS),
            (_State.TLS, _State.DELEGATION),
            (_State.TLS, _State.DONE),
            (_State.DELEGATION, _State.DONE),
        }
    )
    _MAX_TLS_ROUNDS = 3

    def __init__(
        self,
        package: SecurityPackage,
        material: X509Credential,
        *,
        requested: ContextReq,
        options: dict[str, Any],
        clock: Callable[[], float],
    ) -> None:
        super().__init__(package, material, requested, clock, options)
        unknown = set(options) - _SERVER_OPTIONS
        if unknown:
            raise ValueError(f"unknown x509 server options: {sorted(unknown)}")
        accept = options.get("accept_delegation", True)
        if not isinstance(accept, bool):
            raise TypeError("accept_delegation must be a bool")
        self._accept_delegation = accept
        self._client: VerifiedPeer | None = None
        self._presented: Delegation | None = None
        self._proxy_key: ed25519.Ed25519PrivateKey | None = None
        self._granted = ContextReq.NONE
        self._level = ImpersonationLevel.ANONYMOUS

    def _forget(self) -> None:
        self._proxy_key = None

    def _tls(self, token: bytes | None) -> bytes | None:
        if self._channel is None:
            self._channel = self._new_channel(server=True)
        channel = self._feed(token)
        out = self._advance_tls(channel)
        if out is not None:
            self._move(_State.TLS)
            return out
        client = self._client = self._material.peers.peer(channel.verified_chain())
        if not client.client_auth:
            raise CertificateWrongUsageError("the client's certificate is not for TLS clients")
        finish = ClientFinish.decode(channel.receive())
        channel.expect_end()
        capabilities = self._package.capabilities
        if finish.proxies:
            presented = self._presented = self._check_presented(channel, client, finish)
            if presented.remaining_depth < 1:
                capabilities &= ~PackageCapability.DELEGATION
        if not self._accept_delegation:
            capabilities &= ~PackageCapability.DELEGATION
        grant = decide_grant(finish.offer, capabilities, self._requested, mutual_proven=True)
        self._granted, self._level = grant.granted, grant.impersonation
        key = b""
        if grant.granted & ContextReq.DELEGATE:
            self._proxy_key = ed25519.Ed25519PrivateKey.generate()
            key = self._proxy_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        channel.send(ServerGrant(grant, key).encode())
        out = channel.take_output()  # carries OpenSSL's NewSessionTicket too: no extra trip
        if self._proxy_key is not None:
            self._move(_State.DELEGATION)
        else:
            self._finish(channel, None)
            self._move(_State.DONE)
        return out

    def _check_presented(
        self, channel: TlsChannel, client: VerifiedPeer, finish: ClientFinish
    ) -> Delegation:
        """The downstream rules: trust nothing the delegate says that it cannot prove."""
        chain = verify_delegation(
            finish.principal_chain,
            finish.proxies,
            self._material.trust.anchors,
            self._clock(),
            skew=self._skew,
        )
        if chain.delegate != client.spiffe_id:
            raise DelegationPolicyError("the presenting service is not the chain's delegate")
        if self._material.identity.spiffe_id not in chain.targets:
            raise DelegationPolicyError("this service is not an allowed delegation target")
        public = chain.last.public_key()
        assert isinstance(public, ed25519.Ed25519PublicKey)
        try:
            public.verify(finish.possession, _possession_message(channel))
        except InvalidSignature as exc:
            raise DelegationPolicyError("no proof of possession of the proxy key") from exc
        return chain

    def _read_proxy(self, token: bytes | None) -> None:
        channel = self._feed(token)
        proxy = ProxyIssued.decode(channel.receive()).proxy
        channel.expect_end()
        client, key = self._client, self._proxy_key
        assert client is not None and key is not None
        presented = self._presented
        proxies: tuple[x509.Certificate, ...]
        if presented is None:
            principal_chain, proxies = client.presented, (proxy,)
        else:
            principal_chain, proxies = presented.principal_chain, (*presented.proxies, proxy)
        chain = verify_delegation(
            principal_chain, proxies, self._material.trust.anchors, self._clock(), skew=self._skew
        )
        if not same_public_key(proxy.public_key(), key.public_key()):
            raise DelegationPolicyError("proxy certificate is not for this context's key")
        if chain.delegate != self._material.identity.spiffe_id:
            raise DelegationPolicyError("proxy certificate names another delegate")
        material = X509Credential(
            self._material.identity,
            self._material.trust,
            DelegatedChain(chain, key),
            peers=self._material.peers,
        )
        credentials = Credentials(
            package=self._package,
            principal=chain.principal,
            use=CredentialUse.OUTBOUND,
            material=material,
        )
        self._finish(channel, credentials)
        self._move(_State.DONE)
        return None

    def _finish(self, channel: TlsChannel, delegated: Credentials | None) -> None:
        client = self._client
        assert client is not None
        outbound, inbound, session = self._secrets(channel, client=False)
        presented = self._presented
        granted, level = self._granted, self._level
        expires = client.expires_at
        if presented is not None:
            expires = min(expires, presented.expires_at)
            principal, groups = presented.principal, presented.groups
            chain, native = presented.delegates, presented.principal_chain[0]
            native_name = native.subject.rfc4514_string()
        else:
            principal, groups, chain = client.spiffe_id, client.groups, ()
            native_name = client.subject
        # At ANONYMOUS level the core replaces this token with the anonymous one.
        peer = AccessToken(
            principal=principal,
            package=self._package.name,
            impersonation_level=level,
            groups=groups,
            delegation_chain=chain,
            protection_level=_protection(granted),
            expires_at=expires,
            delegated_credentials=delegated,
        )
        self.result = MechanismResult(
            granted=granted,
            impersonation_level=level,
            protector=AeadProtector(
                outbound, inbound, datagram=bool(granted & ContextReq.DATAGRAM)
            ),
            peer=peer,
            expires_at=min(expires, self._material.identity.not_after),
            peer_native_name=native_name,
            session_key=session,
        )
        self._channel = None
        self._proxy_key = None
        self.complete = True
