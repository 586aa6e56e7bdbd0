"""A client channel's security: what it asks for, and the context it is bound to.

Shared by the sync and asyncio channels; no I/O. ``ChannelSecurity`` holds the configuration
(credentials, target, requested and required attributes, impersonation level, protection level)
and makes the ``ClientContext`` for each bind (InitializeSecurityContext). ``ClientBound`` is an
established binding: the context, the server's handle, and the per-method signature prefixes,
with the two operations every call starts with (``keys`` and ``begin``).
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc

from rpcsec._settings import effective_settings
from rpcsec.security import AccessToken, current_token
from rpcsec.security import _audit as audit
from rpcsec.sspi import (
    ClientContext,
    ContextReq,
    Credentials,
    DelegationPolicyError,
    ImpersonationLevel,
    ProtectionLevel,
    SecurityError,
    check_target_name,
)

from ._calls import FIRST_RESPONSE, CallProtection, ClientCallProtection, MethodKeys
from ._cloaking import early_credentials, resolve_credentials
from ._handshake import ClientNegotiation
from ._metadata import client_metadata
from ._recovery import REBIND_REASONS, Action, IdempotentMethods, RebindBackoff, decide
from ._responses import ResponseKeys, TicketClientProtection
from ._status import not_run_of, reason_of
from ._wire import CALL_KEY, CONTEXT_KEY, LEVEL_BYTES, OUTCOME_OK, SEQ_SLICE, is_ticket

__all__ = [
    "REBIND_REASONS",
    "ChannelSecurity",
    "ClientBound",
    "PreparedMethod",
    "refusal_action",
]

_ALWAYS = ContextReq.INTEGRITY
Metadata = Sequence[Any] | None
_ORDERING = ContextReq.REPLAY_DETECT | ContextReq.SEQUENCE_DETECT


class ClientBound:
    """An established binding: context + handle. One per successful handshake."""

    __slots__ = (
        "_ctx_metadata",
        "_keys",
        "_level_byte",
        "_metadata",
        "_prepared",
        "backoff",
        "context",
        "encrypt",
        "expires_at",
        "generation",
        "handle",
        "level",
        "protection",
        "succeeded",
    )

    def __init__(
        self,
        context: ClientContext,
        handle: bytes,
        level: ProtectionLevel,
        generation: int,
        succeeded: Callable[[], None],
        backoff: RebindBackoff | None = None,
    ) -> None:
        self.context = context
        # A call on this binding verified: reset the re-bind backoff of the identity that
        # made it (each cloaked caller has its own; ``_recovery.RebindBackoff``). ``backoff``
        # (that backoff, if ``succeeded`` is its own) lets a hot path skip the call when there
        # is nothing to reset.
        self.succeeded = succeeded
        self.backoff: RebindBackoff | _Always = _ALWAYS_SUCCEED if backoff is None else backoff
        self.handle = handle
        self.level = level
        self.encrypt = level is ProtectionLevel.PRIVACY
        self.generation = generation
        self.protection: CallProtection = (
            TicketClientProtection(context, handle, ResponseKeys.of(context))
            if is_ticket(handle)
            else ClientCallProtection(context, handle)
        )
        self._level_byte = LEVEL_BYTES[level]
        self._ctx_metadata = (CONTEXT_KEY, handle)
        self._metadata = (self._ctx_metadata,)
        self._keys: dict[str, MethodKeys] = {}
        self._prepared: dict[str, PreparedMethod | None] = {}
        self.expires_at = context.expires_at  # fixed once established

    def keys(self, method: str) -> MethodKeys:
        keys = self._keys.get(method)
        if keys is None:
            keys = self._keys[method] = MethodKeys(self.handle, method, self.level)
        return keys

    def prepared(self, method: str) -> PreparedMethod | None:
        """``method``'s calls on this binding prepared once (``PreparedMethod``), or None if
        the context cannot prepare them now (deleted meanwhile: the full path says why)."""
        try:
            return self._prepared[method]
        except KeyError:
            pass
        try:
            prepared = PreparedMethod(self, self.keys(method))
        except SecurityError:
            return None
        self._prepared[method] = prepared
        return prepared

    def begin(
        self, keys: MethodKeys, app: Metadata = ()
    ) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
        """Open a request-streaming call with a signed call header: returns the call sequence
        and the call's metadata. ``app``: the application's metadata, signed with the header
        (``_metadata``)."""
        declaration, part = client_metadata(app)
        header = self.context.sign(b"", aad=keys.call_aad + part)
        ours = (self._ctx_metadata, (CALL_KEY, self._level_byte + header))
        return header[SEQ_SLICE], ours + declaration if declaration else ours

    def open_unary(
        self, keys: MethodKeys, payload: bytes, app: Metadata = ()
    ) -> tuple[bytes, tuple[tuple[str, bytes], ...], bytes]:
        """Open a single-request call with its request message: returns the call sequence,
        the call's metadata and the request token. ``app``: the application's metadata,
        signed with the request (``_metadata``)."""
        if not app:
            token = self.context.wrap(payload, aad=keys.open_aad, encrypt=self.encrypt)
            return token[SEQ_SLICE], self._metadata, token
        declaration, part = client_metadata(app)
        token = self.context.wrap(payload, aad=keys.open_aad + part, encrypt=self.encrypt)
        return token[SEQ_SLICE], self._metadata + declaration, token

    def usable(self, now: float) -> bool:
        """Not expired (a deleted context makes the next signature raise, which re-binds)."""
        expires = self.expires_at
        return expires is None or now < expires


class _Always:
    """The backoff of a binding made without one: ``succeeded`` is called after every call."""

    __slots__ = ()
    failures = 1


_ALWAYS_SUCCEED = _Always()


def _outcome_ok_opener(
    protection: CallProtection, prefix: bytes, encrypt: bool
) -> Callable[[bytes, bytes], bytes | None]:
    """``ResponseKeys.opener`` for a process-local context: the context opens responses."""

    def opened(call_seq: bytes, token: bytes) -> bytes | None:
        try:
            return protection.open(prefix, call_seq, FIRST_RESPONSE, token, encrypt, OUTCOME_OK)
        except SecurityError:
            return None

    return opened


class PreparedMethod:
    """One method's single-request calls on one binding, everything made once: the opening
    wrap over the method's fixed OPEN_AAD (``SecurityContext.wrapper``: the context's own
    sequence counter and keys), the call's metadata (the handle, pre-built), and the open of
    a response whose outcome the server folded into it (``OUTCOME_OK``; None when it does not
    open so). For calls whose application passes no metadata: metadata extends the AAD
    (``ClientBound.open_unary``). It holds no reference to its ``ClientBound`` (which caches
    it): a binding's reference count says which calls hold it (``_cloaking_release``)."""

    __slots__ = (
        "backoff",
        "encrypt",
        "keys",
        "metadata",
        "open_ok",
        "protection",
        "succeeded",
        "wrap",
    )

    def __init__(self, bound: ClientBound, keys: MethodKeys) -> None:
        self.keys = keys
        self.backoff = bound.backoff
        self.succeeded = bound.succeeded
        self.metadata = bound._metadata
        self.encrypt = encrypt = bound.encrypt
        self.wrap = bound.context.wrapper(keys.open_aad, encrypt=encrypt)
        self.protection = protection = bound.protection
        self.open_ok = (
            protection.responses.opener(keys.prefix, FIRST_RESPONSE, OUTCOME_OK, encrypt)
            if isinstance(protection, TicketClientProtection)
            else _outcome_ok_opener(protection, keys.prefix, encrypt)
        )


class ChannelSecurity:
    """A channel's security configuration; makes a fresh ClientContext for each bind."""

    def __init__(
        self,
        credentials: Credentials | None,
        *,
        target_name: str | None,
        requirements: ContextReq | None,
        impersonation: ImpersonationLevel | None,
        protection: ProtectionLevel | None,
        package_options: dict[str, Any] | None,
        lifetime: float | None = None,
        replay_window: int | None = None,
        idempotent_methods: Iterable[str] | None = None,
        clock: Callable[[], float] = time.time,
        dynamic: bool = False,
    ) -> None:
        settings = effective_settings(protection=protection, impersonation=impersonation)
        protection, impersonation = settings.protection, settings.impersonation
        self.idempotent = IdempotentMethods(idempotent_methods)
        self.backoff = RebindBackoff()
        if not isinstance(protection, ProtectionLevel) or protection not in LEVEL_BYTES:
            raise ValueError("protection must be ProtectionLevel.INTEGRITY or PRIVACY")
        if not isinstance(impersonation, ImpersonationLevel):
            raise TypeError("impersonation must be an ImpersonationLevel")
        if requirements is None:
            requirements = ContextReq.default()
        if not isinstance(requirements, ContextReq):
            raise TypeError("requirements must be ContextReq flags")
        if target_name is not None and not isinstance(target_name, str):
            raise TypeError("target_name must be a string")
        # dynamic (cloaking): the template of a channel whose identity is chosen per call
        # (``_cloaking.CallerSessions``); its per-caller copies come from ``for_caller``.
        self.credentials: Credentials | None
        self.owner: AccessToken | None
        if dynamic:
            self.credentials, self.owner = None, None
            early = early_credentials()
            if early is not None:
                check_target_name(early, target_name)
        else:
            self.credentials, self.owner = resolve_credentials(credentials)
            check_target_name(self.credentials, target_name)  # at construction, not first call
        required = requirements | _ALWAYS
        if not required & _ORDERING:
            # Every call is replay protected: without a receive window a whole call could be
            # sent again.
            required |= ContextReq.REPLAY_DETECT
        self._base_required = required  # before the levels add theirs (``with_levels``)
        self.target_name = target_name
        self._set_levels(protection, impersonation)
        self.package_options = dict(package_options or {})
        self.clock = clock
        self._context_kwargs: dict[str, Any] = {"clock": clock}
        if lifetime is not None:
            self._context_kwargs["lifetime"] = lifetime
        if replay_window is not None:
            self._context_kwargs["replay_window"] = replay_window
        self._generations = itertools.count(1)

    def _set_levels(self, protection: ProtectionLevel, impersonation: ImpersonationLevel) -> None:
        required = self._base_required
        if protection is ProtectionLevel.PRIVACY:
            required |= ContextReq.CONFIDENTIALITY
        requested = required
        if impersonation >= ImpersonationLevel.DELEGATE:
            requested |= ContextReq.DELEGATE  # allowed, not required (the server may decline)
        self.required = required.normalized()
        self.requested = requested.normalized()
        self.impersonation = impersonation
        self.protection = protection

    def with_levels(
        self,
        *,
        protection: ProtectionLevel | None = None,
        impersonation: ImpersonationLevel | None = None,
    ) -> ChannelSecurity:
        """This configuration at other levels (CoSetProxyBlanket): same identity, target and
        requirements; its own bindings, since the levels are fixed in each handshake."""
        protection = self.protection if protection is None else protection
        impersonation = self.impersonation if impersonation is None else impersonation
        if not isinstance(protection, ProtectionLevel) or protection not in LEVEL_BYTES:
            raise ValueError("protection must be ProtectionLevel.INTEGRITY or PRIVACY")
        if not isinstance(impersonation, ImpersonationLevel):
            raise TypeError("impersonation must be an ImpersonationLevel")
        blanket = copy.copy(self)
        blanket._set_levels(protection, impersonation)
        blanket.backoff = RebindBackoff()
        blanket._generations = itertools.count(1)
        return blanket

    def for_caller(self, credentials: Credentials, owner: AccessToken | None) -> ChannelSecurity:
        """This configuration speaking as ``credentials`` (for ``owner``, a delegating caller,
        or the process when None): one cloaked channel's per-caller binding configuration,
        with its own re-bind backoff and generations."""
        check_target_name(credentials, self.target_name)
        caller = copy.copy(self)
        caller.credentials, caller.owner = credentials, owner
        caller.backoff = RebindBackoff()
        caller._generations = itertools.count(1)
        return caller

    def negotiation(self) -> ClientNegotiation:
        credentials = self.credentials
        if credentials is None:
            raise AssertionError("a cloaked channel negotiates per caller (for_caller)")
        audit.delegation(self.owner, self.target_name)
        context = ClientContext(
            credentials,
            self.target_name,
            self.requested,
            impersonation=self.impersonation,
            options=self.package_options,
            **self._context_kwargs,
        )
        return ClientNegotiation(context)

    def established(self, negotiation: ClientNegotiation) -> ClientBound:
        """The binding a completed negotiation made (not yet checked: see ``check_granted``)."""
        assert negotiation.handle is not None
        return ClientBound(
            negotiation.context,
            negotiation.handle,
            self.protection,
            next(self._generations),
            self.backoff.succeeded,
            self.backoff,
        )

    def check_granted(self, context: ClientContext) -> None:
        """The seed: "The caller is responsible for determining whether the final context
        attributes are acceptable". Raises ``InsufficientAttributesError`` on a shortfall."""
        context.require(self.required)

    def check_caller(self) -> None:
        """A channel speaking for a delegating caller serves that caller only."""
        owner = self.owner
        if owner is None:
            return
        token = current_token()
        if token is not None and token is not owner and token.principal != owner.principal:
            raise DelegationPolicyError(
                f"this channel speaks for {owner.principal}; it cannot carry a call made as "
                f"{token.principal}"
            )


def refusal_action(
    error: BaseException,
    *,
    idempotent: bool,
    resendable: bool,
    attempt: int,
    bound: ClientBound | None = None,
    keys: MethodKeys | None = None,
    call_seq: bytes | None = None,
) -> Action:
    """``_recovery.decide`` for a refused call's error (sync ``grpc.RpcError`` or aio);
    ``bound``/``keys``/``call_seq`` name the call, to verify a signed "did not run"."""

    def proven() -> bool:
        if bound is None or keys is None or call_seq is None:
            return False
        token = not_run_of(error)
        if token is None:
            return False
        try:
            bound.protection.check_not_run(keys.not_run, call_seq, token)
        except SecurityError:
            return False  # forged or replayed: proves nothing
        return True

    code = getattr(error, "code", None)
    try:
        unavailable = callable(code) and code() is grpc.StatusCode.UNAVAILABLE
    except Exception:
        unavailable = False
    return decide(
        reason_of(error),
        idempotent=idempotent,
        resendable=resendable,
        attempt=attempt,
        proven_not_run=proven,
        unavailable=unavailable,
    )
