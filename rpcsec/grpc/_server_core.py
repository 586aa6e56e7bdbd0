"""What the server does for every call, shared by the sync and asyncio interceptors.

``ServerSecurity`` owns the context table, the handshake limiter and the policy.
``open_unary`` / ``open_call`` are the whole admission of one call, before any handler code
runs: find the context named by the handle, verify the token that opens the call (the single
request message, or the signed call header of a request stream; its sequence number is the
call sequence and the replay store -- or a process-local context's window -- refuses it if
seen before), then check the authorization policy with the caller's token at the call's
protection level. ``ServerCall`` then opens the request stream's messages and seals the
responses of that call; it is also the servicer context the handler sees (the shells pass
their subclass, ``_servicer_context``), so a call costs one object. No I/O, no grpc objects
(the servicer context is held, never called, here).

Issue 14: ``open_unary`` is *the* path of every single-request call, sync and asyncio (an
``AsyncReplayStore`` only moves the claim out, ``verify_unary``), one frame over state made
once per context and per (context, method): every check once, the AEAD called directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag

from rpcsec.security import AccessToken
from rpcsec.security import _audit as audit
from rpcsec.session import ReplayVerdict
from rpcsec.sspi import (
    DEFAULT_WINDOW,
    ContextReq,
    Credentials,
    CredentialUse,
    InvalidHandleError,
    InvalidStateError,
    InvalidTokenError,
    MessageAlteredError,
    ProtectionLevel,
    SecurityError,
    ServerContext,
)
from rpcsec.sspi._protection import EPOCH_BITS, LARGE_MESSAGE

from ._admission import AdmissionKey
from ._calls import FIRST_RESPONSE, CallProtection, Inbound, Outbound
from ._handshake import ServerNegotiation
from ._metadata import METADATA_KEY, declared_keys, server_part, split
from ._policy import AuthorizationPolicy
from ._responses import ResponseKeys, TicketServerProtection
from ._table import TOUCH, ContextEntry, ContextTable, HandshakeLimiter, stale_entry
from ._tickets import ContextTickets, judge
from ._wire import (
    CALL_KEY,
    CONTEXT_KEY,
    END_MARKER_KIND,
    HANDLE_SIZE,
    NEGOTIATE_METHOD,
    REQUEST,
    RESPONSE,
    SEALED_KIND,
    SEQ_SLICE,
    SIGNED_KIND,
    is_ticket,
    level_from_byte,
    method_part,
    not_run_prefix,
)

__all__ = ["ServerCall", "ServerMethod", "ServerSecurity", "not_run_token"]

_BINDING_REQUIRES = ContextReq.INTEGRITY | ContextReq.REPLAY_DETECT
_PRIVACY = ProtectionLevel.PRIVACY
_INTEGRITY = ProtectionLevel.INTEGRITY
_NONE: frozenset[str] = frozenset()
_FRESH = ReplayVerdict.FRESH
_MIN_TOKEN = 9 + 16  # a core wrap token's header (kind:u8 | seq:u64) and tag


class ServerMethod:
    """Per-method constants, computed once when the interceptor wraps a handler.
    ``request_deserializer`` / ``response_serializer``: the handler's own, None for bytes
    (the behaviors then call nothing); ``deserialize`` / ``serialize`` are never None."""

    __slots__ = (
        "authorize",
        "deserialize",
        "method",
        "part",
        "request_deserializer",
        "response_serializer",
        "serialize",
    )

    def __init__(
        self,
        method: str,
        deserialize: Callable[[bytes], Any] | None,
        serialize: Callable[[Any], bytes] | None,
        *,
        authorize: bool = True,
    ) -> None:
        self.method = method
        self.part = method_part(method)
        self.request_deserializer = deserialize
        self.response_serializer = serialize
        self.deserialize = deserialize or _identity
        self.serialize = serialize or _identity
        self.authorize = authorize


def _identity(value: Any) -> Any:
    return value


def not_run_token(error: BaseException) -> bytes | None:
    """The signed "this call did not run" a refusal carries (``_wire``: NOT_RUN_AAD), if any."""
    token = getattr(error, "not_run", None)
    return token if isinstance(token, bytes) else None


class EntryMethod:
    """What every call of one method on one context shares, computed on its first call: the
    opening AAD, the MSG_AAD prefix, the server's clock (stream lifetimes), and the caller's
    token at each protection level the policy has admitted for this method (a policy decision
    depends on the method and the token only, both fixed here; only a decision that admits is
    kept, so a refusal is made -- and audited -- every time)."""

    __slots__ = ("clock", "integrity", "open_aad", "prefix", "privacy")

    def __init__(
        self, entry: ContextEntry, method: ServerMethod, clock: Callable[[], float]
    ) -> None:
        self.open_aad = entry.open_prefix + method.part
        self.prefix = entry.msg_label + method.part
        self.clock = clock
        self.integrity: AccessToken | None = None  # admitted at INTEGRITY
        self.privacy: AccessToken | None = None  # admitted at PRIVACY


_MAX_METHODS_PER_ENTRY = 256  # a catch-all generic handler must not grow an entry unboundedly


class ServerCall:
    """One admitted call: the caller's token and the keys to its messages. The servicer
    context a handler sees (``_servicer_context.VerifiedContext``) is this same object -- one
    per call -- made by the core with the shell's class (``open_unary``'s ``cls``)."""

    __slots__ = (
        "_call_seq",
        "_context",
        "_declared",
        "_encrypt",
        "_entry",
        "_metadata",
        "_outcome",
        "_seq",
        "_split",
        "_state",
        "_token",
    )

    def __init__(
        self,
        context: Any,
        entry: ContextEntry,
        state: EntryMethod,
        call_seq: bytes,
        seq: int,
        token: AccessToken | None,
        encrypt: bool,
        metadata: Sequence[Any] | None,
        declared: frozenset[str],
    ) -> None:
        self._context = context  # the grpc servicer context (opaque here), or None
        self._entry = entry
        self._state = state
        self._call_seq = call_seq
        self._seq = seq
        self._token: AccessToken = token  # type: ignore[assignment]  # None until authorized
        self._encrypt = encrypt  # the call's level is PRIVACY
        self._metadata = metadata  # as received
        self._declared = declared  # the keys the opening signature covers
        self._split: tuple[tuple[Any, ...], tuple[Any, ...]] | None = None
        self._outcome: Any = None  # what the handler set, once it set anything

    @property
    def token(self) -> AccessToken:
        """The caller's token at the call's protection level."""
        return self._token

    @property
    def entry(self) -> ContextEntry:
        return self._entry

    @property
    def call_seq(self) -> bytes:
        return self._call_seq

    @property
    def prefix(self) -> bytes:
        return self._state.prefix

    @property
    def encrypt(self) -> bool:
        return self._encrypt

    @property
    def protection(self) -> CallProtection:
        return self._entry.protection

    def split_metadata(self) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """(verified, unverified) request metadata (``_metadata``), split once."""
        entries = self._split
        if entries is None:
            entries = self._split = split(self._metadata, self._declared)
        return entries

    def seal_response(self, payload: bytes, suffix: bytes = b"") -> bytes:
        """The single response's token (``suffix``: ``OUTCOME_OK`` to fold the outcome in):
        for a ticket, one call sealing record ``call_seq || 0`` with the per-call keys."""
        entry = self._entry
        keys = entry.keys
        if keys is not None:
            return keys.responses.seal_record(
                self._call_seq,
                self._seq << 32,
                self._state.prefix + self._call_seq + FIRST_RESPONSE + suffix,
                payload,
                self._encrypt,
            )
        return entry.protection.seal(
            self._state.prefix, self._call_seq, FIRST_RESPONSE, payload, self._encrypt, suffix
        )

    def inbound(self) -> Inbound:
        return Inbound(
            self._entry.protection,
            self._state.prefix,
            self._call_seq,
            REQUEST,
            self._encrypt,
            self._entry.expires_at,
            self._state.clock,
        )

    def outbound(self) -> Outbound:
        return Outbound(
            self._entry.protection,
            self._state.prefix,
            self._call_seq,
            RESPONSE,
            self._encrypt,
            self._entry.expires_at,
            self._state.clock,
        )


_Call = TypeVar("_Call", bound=ServerCall)


class ServerSecurity:
    """The server side of the binding, minus grpc: contexts, handshakes, admission, policy."""

    def __init__(
        self,
        credentials: Credentials | Iterable[Credentials],
        policy: AuthorizationPolicy | None = None,
        *,
        required: ContextReq = _BINDING_REQUIRES,
        table: ContextTable | None = None,
        limiter: HandshakeLimiter | None = None,
        replay_window: int = DEFAULT_WINDOW,
        lifetime: float | None = None,
        package_options: Mapping[str, Mapping[str, Any]] | None = None,
        ticket_keys: Any = None,
        replay_store: Any = None,
        trusted_proxies: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credentials = _by_package(credentials)
        self.admission_key = AdmissionKey(trusted_proxies)
        if policy is None:
            policy = AuthorizationPolicy.any_authenticated()
        if not isinstance(policy, AuthorizationPolicy):
            raise TypeError("policy must be an AuthorizationPolicy")
        if not isinstance(required, ContextReq):
            raise TypeError("required must be ContextReq flags")
        self.policy = policy
        # A decision is cached per (context, method) only when the policy is this module's
        # own class: its decision depends on the method and the caller's token alone. A
        # subclass may decide on anything (time, load): it is asked every call.
        self._policy_cacheable = type(policy) is AuthorizationPolicy
        self.required = (required | ContextReq.INTEGRITY).normalized()
        if not self.required & (ContextReq.REPLAY_DETECT | ContextReq.SEQUENCE_DETECT):
            self.required |= ContextReq.REPLAY_DETECT
        self.clock = clock
        self.table = table if table is not None else ContextTable(clock=clock)
        self.limiter = limiter if limiter is not None else HandshakeLimiter(clock=clock)
        self._replay_window = replay_window
        self._lifetime = lifetime
        self._package_options = {k.lower(): dict(v) for k, v in (package_options or {}).items()}
        self.tickets: ContextTickets | None = ContextTickets.default(
            self.credentials,
            ticket_keys=ticket_keys,
            replay_store=replay_store,
            max_lifetime=self.table.max_lifetime,
            clock=clock,
        )
        # The per-call path's constants (``open_unary``): the store's claim called directly
        # when it answers synchronously (an async store is awaited by the asyncio shell, or
        # run on its loop by ``ContextTickets.claim``), and the ring only when it can change
        # under us (a directory ring polled at ``next_poll``; one in memory rotates itself).
        tickets = self.tickets
        self._claim: Callable[..., ReplayVerdict] | None = (
            None if tickets is None or tickets.asynchronous else tickets.store.claim
        )
        self._polled_ring = (
            tickets.ring if tickets is not None and tickets.ring.directory is not None else None
        )

    # -- handshakes ------------------------------------------------------------------------

    def negotiation(self, peer: str) -> ServerNegotiation:
        return ServerNegotiation(
            self.credentials,
            self._new_context,
            lambda context: self.register(context, peer),
            lambda error: audit.refusal(NEGOTIATE_METHOD, peer, error, handshake=True),
        )

    def register(self, context: ServerContext, peer: str) -> bytes:
        """Name an established context: seal it into a ticket (any replica opens it), or --
        a package that cannot export -- remember it here under a random handle."""
        caller = context.peer  # with any delegated credentials; read before the export,
        # which retires the exporter
        audit.logon(caller, peer)
        tickets = self.tickets
        if tickets is not None:
            try:
                ticket, continued, ticket_id, expires_at, issued_at = tickets.issue(context)
            except InvalidStateError:
                pass  # not exportable: process-local
            else:
                context.delete()
                self.table.insert(
                    self._ticket_entry(
                        ticket, continued, peer, expires_at, ticket_id, issued_at, caller
                    )
                )
                return ticket
        return self.table.add(context, peer)

    def _ticket_entry(
        self,
        ticket: bytes,
        context: ServerContext,
        peer: str,
        expires_at: float,
        ticket_id: bytes,
        issued_at: float,
        caller: AccessToken | None = None,
    ) -> ContextEntry:
        return ContextEntry(
            ticket,
            context,
            peer,
            self.clock(),
            expires_at,
            protection=TicketServerProtection(context, ticket, ResponseKeys.of(context)),
            caller=caller,
            ticket_id=ticket_id,
            issued_at=issued_at,
        )

    def _new_context(self, credentials: Credentials) -> ServerContext:
        kwargs: dict[str, Any] = {"replay_window": self._replay_window, "clock": self.clock}
        if self._lifetime is not None:
            kwargs["lifetime"] = self._lifetime
        return ServerContext(
            credentials,
            self.required,
            options=self._package_options.get(credentials.package.name, {}),
            **kwargs,
        )

    # -- calls -----------------------------------------------------------------------------

    def _find(self, metadata: Sequence[Any] | None) -> tuple[ContextEntry, Any, Any]:
        """The context a call names, its call header and its metadata declaration."""
        handle = header = declaration = None
        for item in metadata or ():
            key = item[0]
            if key == CONTEXT_KEY:
                handle = item[1]
            elif key == CALL_KEY:
                header = item[1]
            elif key == METADATA_KEY:
                if declaration is not None:
                    raise InvalidTokenError("call carries a malformed metadata declaration")
                declaration = item[1]
        if handle is None:
            raise InvalidHandleError("call carries no security context handle")
        if not isinstance(handle, bytes):
            raise InvalidHandleError("call carries a malformed security context handle")
        ticket = is_ticket(handle)
        if not ticket and len(handle) != HANDLE_SIZE:
            raise InvalidHandleError("call carries a malformed security context handle")
        tickets = self.tickets
        if tickets is not None and tickets.ring.refresh():
            self._drop_retired(tickets)  # the ring changed: no cached ticket outlives its key
        try:
            return self.table.lookup(handle), header, declaration
        except InvalidHandleError as exc:
            if not ticket or tickets is None:
                raise
            stale = stale_entry(exc)
            if stale is not None:
                self.table.discard(stale)  # idle: the cache forgets, the ticket still opens
        assert self.tickets is not None
        context, ticket_id, expires_at, issued_at = self.tickets.open(handle)
        entry = self._ticket_entry(handle, context, "ticket", expires_at, ticket_id, issued_at)
        self.table.insert(entry)
        return entry, header, declaration

    def _drop_retired(self, tickets: ContextTickets) -> None:
        live = set(tickets.ring.key_names)
        for entry in self.table.entries():
            if entry.ticket_id is not None and entry.handle[1:17] not in live:
                self.table.discard(entry)  # RFC 5077 layout: version:u8 | key_name[16] | ...

    def _note_stale(
        self,
        error: SecurityError,
        metadata: Sequence[Any] | None,
        verify: Callable[[ContextEntry, bytes], bytes],
    ) -> None:
        """A stale context refused a call before any handler ran. If the call's opening token
        verifies (``verify`` returns its call sequence), note it on ``error`` (``stale_call``)
        so the shell can claim it and sign that it did not run (``not_run_claim`` /
        ``sign_not_run``); otherwise nothing is signed.

        Only for a call whose opening token verifies and is fresh: a captured call replayed
        once the context went stale has already run, so it gets no statement that it did not."""
        entry = stale_entry(error)
        if entry is None:
            return
        app = _stale_part(metadata)
        try:
            if app is None:
                raise InvalidTokenError("malformed metadata declaration")
            error.stale_call = (entry, verify(entry, app))  # type: ignore[attr-defined]
        except SecurityError:
            _forget_stale(entry)

    def not_run_claim(self, error: BaseException) -> tuple[bytes, bytes, float, float] | None:
        """The claim (ticket id, call sequence, expires_at, issued_at) a noted stale call needs
        before its refusal may say it did not run (no replica can run it after that); None:
        nothing to claim (none noted, or a process-local context)."""
        noted = getattr(error, "stale_call", None)
        if noted is None or noted[0].ticket_id is None:
            return None
        assert self.tickets is not None
        entry, call_seq = noted
        return entry.ticket_id, call_seq, self.tickets.refused_expiry(), entry.issued_at

    def sign_not_run(self, error: BaseException, method: ServerMethod, claimed: bool) -> None:
        """Sign the noted stale call's "did not run" (``claimed``: its claim succeeded, or it
        needed none), then forget a process-local context."""
        noted = getattr(error, "stale_call", None)
        if noted is None:
            return
        entry, call_seq = noted
        try:
            if claimed:
                part = not_run_prefix(entry.handle, method.part)
                error.not_run = entry.protection.not_run(part, call_seq)  # type: ignore[attr-defined]
        except SecurityError:
            pass  # the context cannot sign: refuse unsigned
        finally:
            _forget_stale(entry)

    def _refuse_stale(self, error: SecurityError, method: ServerMethod) -> None:
        """``not_run_claim`` then ``sign_not_run``, synchronously."""
        claim = self.not_run_claim(error)
        claimed = True
        if claim is not None:
            assert self.tickets is not None
            try:
                self.tickets.claim(*claim)
            except SecurityError:
                claimed = False
        self.sign_not_run(error, method, claimed)

    def _method_state(self, entry: ContextEntry, method: ServerMethod) -> EntryMethod:
        state = EntryMethod(entry, method, self.clock)
        methods = entry.methods
        if len(methods) < _MAX_METHODS_PER_ENTRY:
            methods[method.method] = state
        return state

    def claim_of(self, call: ServerCall) -> tuple[bytes, bytes, float, float] | None:
        """The replay-store claim (ticket id, call sequence, expires_at, issued_at) a verified
        call needs before anything runs; None for a process-local context (its own window
        already accepted the call)."""
        entry = call._entry
        ticket_id = entry.ticket_id
        if ticket_id is None:
            return None
        return ticket_id, call._call_seq, entry.expires_at or 0.0, entry.issued_at

    def _decide(
        self, entry: ContextEntry, state: EntryMethod, method: ServerMethod, encrypt: bool
    ) -> AccessToken:
        """The policy's decision for a call with no admitting decision kept: the caller's
        token at the call's level, or ``AccessDeniedError``. An admitting decision is kept per
        (context, method, level) when the policy is this module's class (its decision depends
        on the method and the token alone); a subclass may decide on anything, every call."""
        token = entry.tokens[_PRIVACY if encrypt else _INTEGRITY]
        if method.authorize:
            self.policy.check(method.method, token)
        if self._policy_cacheable or not method.authorize:
            if encrypt:
                state.privacy = token
            else:
                state.integrity = token
        return token

    def authorize(self, call: ServerCall, method: ServerMethod) -> None:
        """The policy for a verified, claimed call: sets the call's token or raises
        ``AccessDeniedError`` (``_decide``)."""
        state = call._state
        token = state.privacy if call._encrypt else state.integrity
        if token is None:
            token = self._decide(call._entry, state, method, call._encrypt)
        call._token = token

    def admit(self, call: ServerCall, method: ServerMethod) -> None:
        """Claim (a ticket: cluster-wide) then authorize a verified call, synchronously."""
        claim = self.claim_of(call)
        if claim is not None:
            assert self.tickets is not None
            self.tickets.claim(*claim)
        self.authorize(call, method)

    def verify_unary(
        self,
        metadata: Sequence[Any] | None,
        method: ServerMethod,
        request: bytes,
        context: Any = None,
        cls: type[_Call] = ServerCall,  # type: ignore[assignment]
    ) -> tuple[_Call, bytes]:
        """``open_unary`` without the claim and the policy (the asyncio shell awaits an async
        store's claim, then ``authorize``); a stale context's refusal is noted on the error
        (``_note_stale``), not yet claimed nor signed."""
        return self.open_unary(metadata, method, request, context, cls, admit=False)

    def open_unary(
        self,
        metadata: Sequence[Any] | None,
        method: ServerMethod,
        request: bytes,
        context: Any = None,
        cls: type[_Call] = ServerCall,  # type: ignore[assignment]
        *,
        admit: bool = True,
    ) -> tuple[_Call, bytes]:
        """Admit a single-request call, opened by its request message: the call (``cls``,
        holding ``context``) and the request's payload, or raises the ``SecurityError`` that
        refuses it. Nothing of the call runs before this returns.

        One frame for what every call does (issue 14), each check once: the handle found in
        the metadata, the cached entry's idle time and expiry (``ContextTable.lookup``'s rule;
        the context's own expiry is never later), the per-(context, method) state, the opening
        token verified with one AEAD call on the epoch key cached for the ticket
        (``TicketServerProtection``; any other case through ``SecurityContext.unwrap``), the
        claim in the replay store, the policy's kept decision. Everything rarer -- a miss, a
        stale or unknown context, a ticket to open, a ring to re-read -- takes ``_find``."""
        handle = declaration = None
        for item in metadata or ():
            key = item[0]
            if key == CONTEXT_KEY:
                handle = item[1]
            elif key == METADATA_KEY:
                if declaration is not None:
                    raise InvalidTokenError("call carries a malformed metadata declaration")
                declaration = item[1]
        table = self.table
        entry = table.cached(handle) if handle.__class__ is bytes else None
        if entry is not None:
            now = table.clock()
            last = entry.last_used
            idle = table.idle_timeout
            expires = entry.expires_at
            ring = self._polled_ring
            if (
                (idle is None or now - last <= idle)
                and (expires is None or now < expires)
                and (ring is None or time.monotonic() < ring.next_poll)
            ):
                entry.last_used = now
                if now - last >= TOUCH:
                    table.touch(handle)  # type: ignore[arg-type]  # bytes: it was found
            else:
                entry = None
        if entry is None:
            entry = self._find_opening(metadata, method, request, admit)
        try:
            state = entry.methods[method.method]
        except KeyError:
            state = self._method_state(entry, method)
        if declaration is None:
            declared, aad = _NONE, state.open_aad
        else:
            declared, part = _app_part(metadata, declaration)
            aad = state.open_aad + part
        if request.__class__ is not bytes or not request:
            raise InvalidTokenError("call does not open with a protected message")
        kind = request[0]
        if kind == SIGNED_KIND:
            encrypt = False
        elif kind == SEALED_KIND:
            encrypt = True
        else:
            raise InvalidTokenError("call does not open with a protected message")
        call_seq = request[1:9]
        seq = int.from_bytes(call_seq, "big")
        keys = entry.keys
        receive = None if keys is None else keys.receive
        if (
            receive is not None
            and seq >> EPOCH_BITS == receive[0]
            and _MIN_TOKEN <= len(request) < LARGE_MESSAGE
        ):
            # The core's wrap token (``rpcsec.sspi._context``), opened as ``unwrap`` does.
            nonce = (receive[2] ^ seq).to_bytes(12, "big")
            try:
                if encrypt:
                    payload = receive[1].decrypt(nonce, request[9:], request[:9] + aad)
                else:
                    payload = request[_MIN_TOKEN:]
                    receive[1].decrypt(nonce, request[9:_MIN_TOKEN], request[:9] + aad + payload)
            except InvalidTag:
                raise MessageAlteredError("message failed its integrity check") from None
        else:
            # A ticket's requests are claimed in the replay store (cluster-wide), which makes
            # the context's own window a second copy of the same check: skipped.
            payload = entry.context.unwrap(
                request, aad=aad, encrypted=encrypt, record=entry.ticket_id is None
            )
            if keys is not None:
                keys.verified(seq)
        if not admit:
            return cls(context, entry, state, call_seq, seq, None, encrypt, metadata, declared), (
                payload
            )
        ticket_id = entry.ticket_id
        if ticket_id is not None:
            claim = self._claim
            if claim is not None:
                verdict = claim(ticket_id, seq, entry.expires_at or 0.0, issued_at=entry.issued_at)
                if verdict is not _FRESH:
                    judge(verdict)
            else:  # an async store, from a worker thread of an asyncio server
                assert self.tickets is not None
                self.tickets.claim(ticket_id, call_seq, entry.expires_at or 0.0, entry.issued_at)
        token = state.privacy if encrypt else state.integrity
        if token is None:
            token = self._decide(entry, state, method, encrypt)
        return cls(context, entry, state, call_seq, seq, token, encrypt, metadata, declared), (
            payload
        )

    def _find_opening(
        self, metadata: Sequence[Any] | None, method: ServerMethod, request: Any, admit: bool
    ) -> ContextEntry:
        """``_find`` for a call opened by its request: on a refusal, a stale context's call is
        noted (``_note_stale``) and, when ``admit``, claimed and signed "did not run" now."""
        try:
            return self._find(metadata)[0]
        except SecurityError as exc:
            self._note_stale(
                exc, metadata, lambda stale, app: _open_request(stale, method, request, app)[2]
            )
            if admit:
                self._refuse_stale(exc, method)
            raise

    def verify_call(
        self,
        metadata: Sequence[Any] | None,
        method: ServerMethod,
        context: Any = None,
        cls: type[_Call] = ServerCall,  # type: ignore[assignment]
    ) -> _Call:
        """Verify a request-streaming call's signed call header (``verify_unary``'s twin)."""
        try:
            entry, header, declaration = self._find(metadata)
        except SecurityError as exc:
            header = _header(metadata)
            self._note_stale(
                exc, metadata, lambda stale, app: _open_header(stale, method, header, app)[1]
            )
            raise
        try:
            state = entry.methods[method.method]
        except KeyError:
            state = self._method_state(entry, method)
        declared, part = _app_part(metadata, declaration)
        level, call_seq = _open_header(entry, method, header, part)
        seq = int.from_bytes(call_seq, "big")
        return cls(
            context, entry, state, call_seq, seq, None, level is _PRIVACY, metadata, declared
        )

    def open_call(
        self,
        metadata: Sequence[Any] | None,
        method: ServerMethod,
        context: Any = None,
        cls: type[_Call] = ServerCall,  # type: ignore[assignment]
    ) -> _Call:
        """Admit a request-streaming call, opened by the signed call header in its metadata."""
        try:
            call = self.verify_call(metadata, method, context, cls)
        except SecurityError as exc:
            self._refuse_stale(exc, method)
            raise
        self.admit(call, method)
        return call

    def release(self, call: ServerCall) -> None:
        """DeleteSecurityContext for the client: here, and for a ticket on every replica
        (revoked in the replay store)."""
        revocation = self.release_here(call)
        if revocation is not None:
            assert self.tickets is not None
            self.tickets.revoke(*revocation)

    def release_here(self, call: ServerCall) -> tuple[bytes, float, float] | None:
        """The local half of ``release``; returns the revocation (ticket id, expires_at,
        issued_at) the replay store still needs, if any (the asyncio shell awaits it)."""
        entry = call._entry
        self.table.release(entry.handle)
        if entry.ticket_id is None or self.tickets is None:
            return None
        return entry.ticket_id, entry.expires_at or 0.0, entry.issued_at


def _forget_stale(entry: ContextEntry) -> None:
    """A stale process-local context is deleted once its refusal is decided (a ticket's
    entry is only a cache)."""
    if entry.ticket_id is None:
        entry.context.delete()


def _app_part(metadata: Sequence[Any] | None, declaration: Any) -> tuple[frozenset[str], bytes]:
    """The declared keys and the APP_METADATA the opening signature must cover (``_metadata``;
    nothing for a call without a declaration)."""
    if declaration is None:
        return _NONE, b""
    declared = declared_keys(declaration)
    return declared, server_part(metadata, declared)


def _stale_part(metadata: Sequence[Any] | None) -> bytes | None:
    """APP_METADATA of a call refused as stale, or None if its declaration is malformed
    (such a call gets no signed "did not run")."""
    found = None
    for item in metadata or ():
        if item[0] == METADATA_KEY:
            if found is not None:
                return None
            found = item[1]
    try:
        return _app_part(metadata, found)[1]
    except SecurityError:
        return None


def _open_request(
    entry: ContextEntry, method: ServerMethod, request: Any, app: bytes = b""
) -> tuple[ProtectionLevel, bytes, bytes]:
    """Verify a single-request call's opening token: (level, payload, call sequence); ``app``
    is the APP_METADATA it also covers."""
    if not isinstance(request, bytes) or not request:
        raise InvalidTokenError("call does not open with a protected message")
    kind = request[0]
    if kind == SEALED_KIND:
        level = ProtectionLevel.PRIVACY
    elif kind == SIGNED_KIND:
        level = ProtectionLevel.INTEGRITY
    else:
        raise InvalidTokenError("call does not open with a protected message")
    payload = entry.context.unwrap(
        request, aad=entry.open_prefix + method.part + app, encrypted=level is _PRIVACY
    )
    return level, payload, request[SEQ_SLICE]


def _open_header(
    entry: ContextEntry, method: ServerMethod, header: Any, app: bytes = b""
) -> tuple[ProtectionLevel, bytes]:
    """Verify a request-streaming call's signed call header: (level, call sequence)."""
    if not isinstance(header, bytes) or len(header) < 10 or header[1] != END_MARKER_KIND:
        raise InvalidTokenError("call carries no valid call header")
    level = level_from_byte(header[0])
    if level is None:
        raise InvalidTokenError("call header names an unknown protection level")
    signature = header[1:]
    entry.context.verify(b"", signature, aad=entry.call_prefix + header[:1] + method.part + app)
    return level, signature[SEQ_SLICE]


def _header(metadata: Sequence[Any] | None) -> Any:
    for item in metadata or ():
        if item[0] == CALL_KEY:
            return item[1]
    return None


def _by_package(credentials: Credentials | Iterable[Credentials]) -> dict[str, Credentials]:
    items = [credentials] if isinstance(credentials, Credentials) else list(credentials)
    if not items:
        raise ValueError("a SecurityInterceptor needs at least one INBOUND credentials handle")
    table: dict[str, Credentials] = {}
    for item in items:
        if not isinstance(item, Credentials):
            raise TypeError("credentials must come from acquire_credentials_handle()")
        if not item.use & CredentialUse.INBOUND:
            raise ValueError("server credentials must be INBOUND")
        name = item.package.name.lower()
        if name in table:
            raise ValueError(f"two credentials handles for package {name!r}")
        table[name] = item
    return table
