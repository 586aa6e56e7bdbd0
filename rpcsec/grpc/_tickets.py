"""Context handles that are sealed tickets: what the server seals, opens and claims.

A handle is a ticket (``rpcsec.session``: RFC 5077 §4 layout, lifetime and rotation after
RFC 8446 §4.6.1) sealing the server context's export (ExportSecurityContext: direction
secrets, granted attributes, impersonation level, the caller's token, expiry). Any replica
whose ``TicketKeyRing`` holds the sealing key opens it (ImportSecurityContext) and serves the
context; the table only caches opened tickets. Because every replica holds the same keys:

* requests are claimed in the shared ``ReplayStore`` (cluster-wide: a request accepted by one
  replica is refused by all, RFC 4120 §3.2.3) after they verify and before anything runs;
* responses are sealed with ``ResponseKeys`` (per-call nonces, ``_responses``), never with
  the context's own send counter, which every replica would start at the same number;
* release revokes the ticket id in the store, which every replica consults on every call.

The ticket's state is imported with ``once=False``: ImportSecurityContext otherwise opens a
blob once per credentials handle, and a replica must be able to re-open a ticket whose cache
entry it dropped (idle, evicted). That is safe only because nothing here sends with the
imported context's own counter (responses: per-call keys; requests: claimed in the store).

Every package whose contexts export is sealed: x509, ntlm, and kerberos / negotiate (their
per-message keys now come from the GSS session key, so MIT's context is not needed after the
handshake). A package that cannot export keeps a process-local random handle instead: such a
context is served by the replica that made it. Delegated credentials travel in the export
where the package can write them (``SecurityPackage.export_delegation``; kerberos, negotiate:
the forwarded TGT; x509: the proxy chain and the context's fresh proxy key, never the
service's own key), so a handler on any replica can act for the caller; the importing
replica's own credentials prove its identity and re-verify an x509 chain.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from rpcsec.session import (
    MemoryReplayStore,
    RedisReplayStore,
    ReplayStore,
    ReplayStoreUnavailableError,
    ReplayVerdict,
    TicketKeyRing,
)
from rpcsec.sspi import (
    Credentials,
    InvalidHandleError,
    InvalidStateError,
    ReplayError,
    SecurityError,
    ServerContext,
    import_security_context,
)

__all__ = ["TICKET_ID_SIZE", "ContextTickets", "judge"]

TICKET_ID_SIZE = 16


class ContextTickets:
    """The service's ring and replay store, and the credentials tickets are imported with."""

    def __init__(
        self,
        ring: TicketKeyRing,
        store: ReplayStore,
        credentials: Mapping[str, Credentials],
        *,
        max_lifetime: float | None,
        clock: Callable[[], float],
    ) -> None:
        if not isinstance(ring, TicketKeyRing):
            raise TypeError("ticket_keys must be a TicketKeyRing or a key ring directory")
        if not callable(getattr(store, "claim", None)) or not callable(
            getattr(store, "revoke", None)
        ):
            raise TypeError("replay_store must be a ReplayStore (claim / revoke)")
        # An ``AsyncReplayStore`` (AsyncRedisReplayStore): the asyncio server awaits its
        # verdicts (``claim_async``); the sync server refuses one (``InterceptorBase``).
        self.asynchronous = inspect.iscoroutinefunction(store.claim)
        # The event loop an async store belongs to, for a synchronous handler's admission on
        # an asyncio server (it runs in a worker thread): set by the asyncio server.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ring = ring
        self.store: Any = store  # a ReplayStore or an AsyncReplayStore
        self._credentials = credentials
        self._max_lifetime = max_lifetime
        self._clock = clock

    @classmethod
    def default(
        cls,
        credentials: Mapping[str, Credentials],
        *,
        ticket_keys: TicketKeyRing | str | Any = None,
        replay_store: ReplayStore | None = None,
        max_lifetime: float | None,
        clock: Callable[[], float],
    ) -> ContextTickets:
        """``ticket_keys``: a ring, a ring directory (``rpcsec keyring``), or None for a ring
        generated in memory for this process; ``replay_store``: a store, a ``redis://`` URL
        (``RedisReplayStore``), or None for this process's memory store."""
        if ticket_keys is None:
            ring = TicketKeyRing.generate(clock=clock)
        elif isinstance(ticket_keys, TicketKeyRing):
            ring = ticket_keys
        else:
            ring = TicketKeyRing.load(ticket_keys, clock=clock)
        if replay_store is None:
            store: ReplayStore = MemoryReplayStore(clock=clock)
        elif isinstance(replay_store, str):
            store = RedisReplayStore(replay_store, clock=clock)  # a redis:// URL
        else:
            store = replay_store
        return cls(ring, store, credentials, max_lifetime=max_lifetime, clock=clock)

    def issue(self, context: ServerContext) -> tuple[bytes, ServerContext, bytes, float, float]:
        """Seal an established context: (ticket, the context continued in this process with
        exactly the ticket's state, ticket id, expires_at, issued_at). ``InvalidStateError`` if
        it cannot be exported (the caller then keeps it process-local)."""
        now = self._clock()
        expires_at = now + self.ring.max_ticket_lifetime
        if self._max_lifetime is not None:
            expires_at = min(expires_at, now + self._max_lifetime)
        if context.expires_at is not None:
            expires_at = min(expires_at, context.expires_at)
        if expires_at <= now:
            raise InvalidStateError("context expires before a ticket could be used")
        # Last: an export retires the exporter. The context this process serves is the live
        # one moved over, not a re-import of the blob just written (the same state, without
        # parsing it back, a second caller token, or re-verifying a delegated chain).
        blob, continued = context.export_and_continue()
        ticket_id = secrets.token_bytes(TICKET_ID_SIZE)
        ticket = self.ring.seal(blob, ticket_id=ticket_id, expires_at=expires_at, issued_at=now)
        assert isinstance(continued, ServerContext)
        return ticket, continued, ticket_id, expires_at, now

    def open(self, ticket: bytes) -> tuple[ServerContext, bytes, float, float]:
        """Open a ticket another replica (or this one, before a cache eviction) issued:
        (context, ticket id, expires_at, issued_at). Anything wrong with it is
        ``context-unknown`` (or ``expired``); the peer learns nothing more."""
        opened = self.ring.open(ticket)
        context: Any = None
        for credentials in self._credentials.values():  # the blob names its package
            try:
                context = import_security_context(
                    opened.state, credentials, clock=self._clock, once=False
                )
                break
            except SecurityError:
                continue  # another package's credentials
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidHandleError("ticket state is malformed") from exc
        if context is None:
            raise InvalidHandleError("ticket state cannot be continued here")
        if not isinstance(context, ServerContext):
            raise InvalidHandleError("ticket does not hold a server context")
        return context, opened.ticket_id, opened.expires_at, opened.issued_at

    def claim(self, ticket_id: bytes, call_seq: bytes, expires_at: float, issued_at: float) -> None:
        """The request opening call ``call_seq`` is fresh cluster-wide, or the call is refused
        (``replay``; ``context-unknown`` once released; ``replay-store-unavailable``)."""
        sequence = int.from_bytes(call_seq, "big")
        if self.asynchronous:
            verdict = self._on_loop(
                self.store.claim(ticket_id, sequence, expires_at, issued_at=issued_at)
            )
        else:
            verdict = self.store.claim(ticket_id, sequence, expires_at, issued_at=issued_at)
        judge(verdict)

    async def claim_async(
        self, ticket_id: bytes, call_seq: bytes, expires_at: float, issued_at: float
    ) -> None:
        """``claim`` for the asyncio server: an async store's verdict is awaited (the loop
        keeps serving while Redis answers); a synchronous store is called as it is."""
        sequence = int.from_bytes(call_seq, "big")
        if self.asynchronous:
            verdict = await self.store.claim(ticket_id, sequence, expires_at, issued_at=issued_at)
        else:
            verdict = self.store.claim(ticket_id, sequence, expires_at, issued_at=issued_at)
        judge(verdict)

    def refused_expiry(self) -> float:
        """Until when a call refused as stale stays claimed: a minute past now (the ticket
        itself is over)."""
        return max(self._clock() + 60.0, 0.0)

    def claim_refused(self, ticket_id: bytes, call_seq: bytes, issued_at: float) -> None:
        """Claim a call refused as expired, so no replica can ever run it: only then may the
        refusal say it did not run."""
        self.claim(ticket_id, call_seq, self.refused_expiry(), issued_at)

    def revoke(self, ticket_id: bytes, expires_at: float, issued_at: float) -> None:
        if math.isfinite(expires_at) and expires_at > self._clock():
            if self.asynchronous:
                self._on_loop(self.store.revoke(ticket_id, expires_at, issued_at=issued_at))
            else:
                self.store.revoke(ticket_id, expires_at, issued_at=issued_at)

    async def revoke_async(self, ticket_id: bytes, expires_at: float, issued_at: float) -> None:
        if math.isfinite(expires_at) and expires_at > self._clock():
            if self.asynchronous:
                await self.store.revoke(ticket_id, expires_at, issued_at=issued_at)
            else:
                self.store.revoke(ticket_id, expires_at, issued_at=issued_at)

    def _on_loop(self, coroutine: Any) -> Any:
        """An async store's answer for synchronous code (a sync handler on an asyncio server,
        in a worker thread): run on the store's loop, this thread waits. Never on the loop's
        own thread (that would block it): fails closed instead."""
        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is not None:
            coroutine.close()
            raise ReplayStoreUnavailableError(
                "an asynchronous replay store answers only on its event loop"
            )
        try:
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result(_LOOP_TIMEOUT)
        except SecurityError:
            raise
        except Exception as exc:  # the loop stopped, or it did not answer in time
            raise ReplayStoreUnavailableError("the replay store did not answer") from exc


_LOOP_TIMEOUT = 30.0


def judge(verdict: ReplayVerdict) -> None:
    """A store's verdict on a claim, for every shell: FRESH returns, anything else refuses."""
    if verdict is ReplayVerdict.FRESH:
        return
    if verdict is ReplayVerdict.REPLAY:
        raise ReplayError("request was already accepted by this service")
    raise InvalidHandleError("security context was released")
