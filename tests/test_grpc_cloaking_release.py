"""A binding dynamic cloaking drops is Released at the server (issue 12 leftovers, item 1).

ONE cloaked channel from the delegating front to storage; when it drops a caller's binding --
the cache bound evicts it, or the delegation ends -- the server must not keep the context
until its own expiry (DeleteSecurityContext for the client, as ``channel.close()`` does):
storage's table forgets it and, for a ticket, the replay store revokes it, so a call captured
on the wire is refused on every replica as ``context-unknown`` (before: ``replay`` at most,
and the ticket stayed live). The Release runs off the call that dropped the binding, and
never while a call is still in flight on it. Real servers on loopback, sync and aio.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers.echo import AsyncEchoServicer, EchoServicer
from helpers.wiretap import Wiretap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rpcsec
from rpcsec.grpc import SecurityInterceptor, reason_of, secure_channel, set_default_credentials
from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.grpc._cloaking_release import DroppedSessions
from rpcsec.grpc._wire import CONTEXT_KEY, RELEASE_METHOD
from rpcsec.session import MemoryReplayStore, TicketKeyRing
from rpcsec.sspi import ContextReq, ImpersonationLevel

SAY = "/rpcsec.test.Echo/Say"
WAIT = 10.0  # seconds a test waits for the drain (it polls every few ms)


def _wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


async def _await_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.002)
    return True


class Releases(grpc.ServerInterceptor):
    """In front of storage's SecurityInterceptor: counts Release calls; while ``stall`` is
    set, each Release waits for ``resume`` first (a slow or unresponsive back end)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self.stall = False
        self.resume = threading.Event()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler_call_details.method != RELEASE_METHOD:
            return handler
        with self._lock:
            self.count += 1
        if not self.stall:
            return handler
        release = handler.unary_unary

        def stalled(request, context):  # in the handler's thread, not the server's loop
            assert self.resume.wait(WAIT)
            return release(request, context)

        return grpc.unary_unary_rpc_method_handler(
            stalled,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class Storage(EchoServicer):
    """Answers as the caller; a call as ``hold_for`` waits until ``go`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold_for: str | None = None
        self.entered = threading.Event()
        self.go = threading.Event()

    def Say(self, request, context):
        if self.hold_for is not None and rpcsec.current_token().principal == self.hold_for:
            self.entered.set()
            assert self.go.wait(WAIT)
        return super().Say(request, context)


class Back:
    """Storage as three replicas sharing one ticket key ring and one replay store."""

    def __init__(self, setup, serve, tmp_path) -> None:
        ring = tmp_path / "storage-ring"
        TicketKeyRing.create(ring)
        self.store = MemoryReplayStore()
        self.storage = Storage()
        self.releases = Releases()
        self.guards = [
            SecurityInterceptor(
                setup.server("storage"),
                ticket_keys=TicketKeyRing.load(ring, refresh_interval=0),
                replay_store=self.store,
            )
            for _ in range(3)
        ]
        self.addresses = [serve([self.releases, guard], [self.storage]) for guard in self.guards]

    def handles(self) -> set[bytes]:
        return {entry.handle for entry in self.guards[0].contexts.entries()}

    def replay(self, index: int, captured) -> str:
        """Send a captured call again, byte for byte, to replica ``index``: the refusal."""
        with grpc.insecure_channel(self.addresses[index]) as raw:
            with pytest.raises(grpc.RpcError) as info:
                raw.unary_unary(captured.method)(
                    captured.requests[0], metadata=captured.metadata, timeout=WAIT
                )
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        return reason_of(info.value)


def _delegating(setup) -> dict:
    options = setup.channel_options(
        impersonation=ImpersonationLevel.DELEGATE,
        requirements=setup.requirements | ContextReq.DELEGATE,
    )
    options["package_options"] = {"delegate_to": [setup.target("storage")]}
    return options


def _onward(channel) -> echo_pb2.EchoResponse:
    return echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="onward"))


def _shared(setup, back: Back, tap: Wiretap, **options):
    raw = grpc.intercept_channel(grpc.insecure_channel(back.addresses[0]), tap)
    return secure_channel(raw, **setup.channel_options("storage"), **options)


def _front(setup, serve, shared, **interceptor_options) -> str:
    def onward(request):
        return echo_pb2_grpc.EchoStub(shared).Say(echo_pb2.EchoRequest(text="via front"))

    guard = SecurityInterceptor(setup.server("documents"), **interceptor_options)
    return serve([guard], [EchoServicer(onward)])


def _captured_say(tap: Wiretap, handle: bytes):
    return next(
        call
        for call in tap.calls
        if call.method.endswith("/Say") and dict(call.metadata).get(CONTEXT_KEY) == handle
    )


def test_an_evicted_binding_is_released_and_its_ticket_revoked(x509_setup, serve, tmp_path):
    setup = x509_setup
    back, tap = Back(setup, serve, tmp_path), Wiretap()
    shared = _shared(setup, back, tap, max_callers=1)
    front = _front(setup, serve, shared)
    callers = shared._session.callers
    with (
        secure_channel(front, setup.client("alice"), **_delegating(setup)) as alice,
        secure_channel(front, setup.client("bob"), **_delegating(setup)) as bob,
    ):
        assert _onward(alice).principal == setup.principal("alice")
        (handle,) = back.handles()
        captured = _captured_say(tap, handle)
        # Control: while the ticket is live, the captured call is only a replay elsewhere.
        assert back.replay(2, captured) == "replay"
        assert _onward(bob).principal == setup.principal("bob")  # evicts alice's binding
        assert callers.evicted == 1 and len(callers) == 1
        assert _wait_for(lambda: back.releases.count == 1)
        assert _wait_for(lambda: callers.dropped.released == 1)
        # Storage forgot it, the store revoked it: refused everywhere, handler never ran.
        # (Both counters above tick before storage's Release handler has run: wait for it.)
        assert _wait_for(lambda: handle not in back.handles())
        assert len(back.handles()) == 1
        assert _wait_for(lambda: back.store.revoked_count == 1)  # revoked right after
        ran = back.storage.calls
        assert back.replay(0, captured) == "context-unknown"
        assert back.replay(1, captured) == "context-unknown"  # the store says revoked
        # (replica 2, which opened the ticket for the control, still refuses it as a replay)
        assert back.replay(2, captured) in {"replay", "context-unknown"}
        assert back.storage.calls == ran
        # Alice's next call binds again, as alice.
        assert _onward(alice).principal == setup.principal("alice")  # evicts bob's
        assert _wait_for(lambda: back.releases.count == 2)
    assert callers.dropped.forgotten == 0
    shared.close()
    assert back.releases.count == 3  # close releases the rest
    # Only the revoked ticket may be cached again at replica 0 (its replay above re-opened
    # it; the store refuses every call on it).
    assert back.handles() <= {handle}


def test_no_release_while_a_call_is_in_flight_on_the_binding(x509_setup, serve, tmp_path):
    setup = x509_setup
    back, tap = Back(setup, serve, tmp_path), Wiretap()
    shared = _shared(setup, back, tap, max_callers=1)
    front = _front(setup, serve, shared)
    callers = shared._session.callers
    back.storage.hold_for = setup.principal("alice")
    outcome: list[object] = []
    with (
        secure_channel(front, setup.client("alice"), **_delegating(setup)) as alice,
        secure_channel(front, setup.client("bob"), **_delegating(setup)) as bob,
    ):
        held = threading.Thread(target=lambda: outcome.append(_onward(alice)))
        held.start()
        try:
            assert back.storage.entered.wait(WAIT)  # alice's onward call is at storage
            assert _onward(bob).principal == setup.principal("bob")  # evicts alice's binding
            assert callers.evicted == 1 and len(callers.dropped) == 1
            # The drain looks every few ms: over 0.3 s it sent nothing for alice's binding.
            assert not _wait_for(lambda: back.releases.count > 0, timeout=0.3)
            assert len(back.handles()) == 2
        finally:
            back.storage.go.set()
            held.join(WAIT)
        # Alice's call finished normally on the binding, and only then was it released.
        assert [r.principal for r in outcome] == [setup.principal("alice")]
        assert _wait_for(lambda: back.releases.count == 1)
        assert _wait_for(lambda: len(back.handles()) == 1)
    assert callers.dropped.released == 1 and callers.dropped.forgotten == 0
    shared.close()


def test_a_stalled_release_never_delays_the_calls_that_evict(x509_setup, serve, tmp_path):
    """Storage sits on the first Release: the calls that keep evicting still run at once
    (the Release is not on their path); the queue sends the next Release after it."""
    setup = x509_setup
    setup.pki.issue("carol")
    back, tap = Back(setup, serve, tmp_path), Wiretap()
    back.releases.stall = True
    shared = _shared(setup, back, tap, max_callers=1)
    front = _front(setup, serve, shared)
    callers = shared._session.callers
    names = ("alice", "bob", "carol")
    channels = {n: secure_channel(front, setup.client(n), **_delegating(setup)) for n in names}
    try:
        assert _onward(channels["alice"]).principal == setup.principal("alice")
        assert _onward(channels["bob"]).principal == setup.principal("bob")  # evicts alice
        assert _wait_for(lambda: back.releases.count == 1)  # alice's Release, stalled
        started = time.monotonic()
        for name in ("carol", "alice", "bob"):  # each evicts the one before
            assert _onward(channels[name]).principal == setup.principal(name)
        assert time.monotonic() - started < WAIT / 2  # not held up by the stalled Release
        assert back.releases.count == 1 and callers.evicted == 4
        back.releases.resume.set()
        assert _wait_for(lambda: callers.dropped.released == 4)
        assert _wait_for(lambda: back.releases.count == 4 and len(back.handles()) == 1)
    finally:
        back.releases.resume.set()
        for channel in channels.values():
            channel.close()
    shared.close()


def test_an_ended_delegation_is_dropped_even_if_its_caller_never_calls_again(
    x509_setup, serve, tmp_path
):
    """The sweep drops it at the next call of anyone (here the front's own). An x509
    binding ends with the proxy chain it was made with, so the server forgets it at the same
    moment: nothing to release, counted ``forgotten``, and no Release is sent for it."""
    setup = x509_setup
    now = [time.time()]
    back, tap = Back(setup, serve, tmp_path), Wiretap()
    shared = _shared(setup, back, tap, clock=lambda: now[0])
    front = _front(setup, serve, shared)
    callers = shared._session.callers
    with secure_channel(front, setup.client("alice"), **_delegating(setup)) as alice:
        assert _onward(alice).principal == setup.principal("alice")
    now[0] += 2 * 3600  # past alice's proxy chain, and so past storage's context
    set_default_credentials(setup.client("bob"))  # "bob" plays the front's own identity
    try:
        direct = echo_pb2_grpc.EchoStub(shared).Say(echo_pb2.EchoRequest(text="me"))
        assert direct.principal == setup.principal("bob")
    finally:
        set_default_credentials(None)
    assert callers.expired == 1 and len(callers) == 1  # only the front's own binding left
    assert _wait_for(lambda: callers.dropped.forgotten == 1 and len(callers.dropped) == 0)
    assert callers.dropped.released == 0 and back.releases.count == 0
    shared.close()
    assert back.releases.count == 1  # the front's own


async def test_aio_an_evicted_binding_is_released_after_its_call(
    x509_setup, serve, aio_serve, tmp_path
):
    setup = x509_setup
    back = Back(setup, serve, tmp_path)
    shared = rpcsec_aio.secure_channel(
        back.addresses[0], max_callers=1, **setup.channel_options("storage")
    )
    callers = shared._session.callers

    async def onward(request):
        return await echo_pb2_grpc.EchoStub(shared).Say(echo_pb2.EchoRequest(text="via front"))

    front = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server("documents"))], [AsyncEchoServicer(onward)]
    )
    back.storage.hold_for = setup.principal("alice")
    async with (
        rpcsec_aio.secure_channel(front, setup.client("alice"), **_delegating(setup)) as alice,
        rpcsec_aio.secure_channel(front, setup.client("bob"), **_delegating(setup)) as bob,
    ):
        say = echo_pb2.EchoRequest(text="onward")
        held = asyncio.ensure_future(echo_pb2_grpc.EchoStub(alice).Say(say))
        assert await asyncio.to_thread(back.storage.entered.wait, WAIT)
        answer = await echo_pb2_grpc.EchoStub(bob).Say(say)  # evicts alice's binding
        assert answer.principal == setup.principal("bob")
        assert callers.evicted == 1
        assert not await _await_for(lambda: back.releases.count > 0, timeout=0.3)
        back.storage.go.set()
        assert (await held).principal == setup.principal("alice")
        assert await _await_for(lambda: back.releases.count == 1)
        assert await _await_for(lambda: len(back.handles()) == 1)
    assert callers.dropped.released == 1 and back.store.revoked_count == 1
    await shared.close()
    assert back.handles() == set()


class _Stand:
    """A stand-in session for the queue's unit tests: records its Release."""

    def __init__(self, log: list[str], name: str, expires_at: float | None = None) -> None:
        self.current = _Bound(expires_at)
        self._log, self._name = log, name

    def release(self) -> None:
        self._log.append(self._name)


class _Bound:
    def __init__(self, expires_at: float | None) -> None:
        self.expires_at = expires_at


def test_dropped_sessions_wait_for_their_holders_and_stay_bounded() -> None:
    now = [1000.0]
    log: list[str] = []
    queue: DroppedSessions[_Stand] = DroppedSessions(limit=3, clock=lambda: now[0])
    held, bound_held = _Stand(log, "held"), _Stand(log, "bound-held")
    in_flight = bound_held.current  # a call still holds this one's binding
    queue.add([_Stand(log, "free"), held, bound_held])
    del bound_held
    assert _wait_for(lambda: log == ["free"])
    assert not _wait_for(lambda: len(log) > 1, timeout=0.1)  # the other two are held
    del in_flight
    assert _wait_for(lambda: log == ["free", "bound-held"])
    # Beyond the limit the oldest waiting (``held``) is forgotten, and one held past its
    # binding's expiry is forgotten too: nothing is released for either.
    keep = [_Stand(log, f"k{i}", expires_at=1010.0) for i in range(3)]
    queue.add(list(keep))
    assert _wait_for(lambda: queue.forgotten == 1 and len(queue) == 3)
    now[0] = 1011.0
    assert _wait_for(lambda: queue.forgotten == 4 and len(queue) == 0)
    last = _Stand(log, "last")
    queue.add([last])
    assert queue.close() == [last]  # the channel releases what still waits
    assert log == ["free", "bound-held"] and queue.released == 2
    queue.add([_Stand(log, "late")])  # closed: nothing queued, nothing runs
    assert len(queue) == 0 and log == ["free", "bound-held"]


class _Counted:
    """A stand-in session that checks, when released, that the cache no longer has it."""

    def __init__(self, cache_ref: list, released: collections.Counter, serial: int) -> None:
        self.current = _Bound(None)
        self.serial = serial
        self._cache_ref, self._released = cache_ref, released

    def release(self) -> None:
        cache = self._cache_ref[0]
        assert all(entry.session is not self for entry in list(cache._entries.values()))
        self._released[self.serial] += 1


_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.integers(0, 5)),
        st.tuples(st.just("tick"), st.floats(0.1, 400.0)),
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=_STEPS, max_callers=st.integers(1, 4))
def test_every_session_made_is_released_or_forgotten_once(
    x509_setup, credential_pool, steps, max_callers
) -> None:
    """Any interleaving of six callers' calls and of time passing (delegations of 1000 s):
    each call gets its own caller's session; every session the cache made is, by the end,
    released once (by the queue or at close) or forgotten, never released while cached."""
    from rpcsec.grpc._cloaking import CallerSessions

    now = [1000.0]
    released: collections.Counter[int] = collections.Counter()
    cache_ref: list = []
    serials = iter(range(10**6))
    cache = CallerSessions(
        _Template(),
        lambda caller: _Counted(cache_ref, released, next(serials)),
        max_callers=max_callers,
        clock=lambda: now[0],
    )
    cache_ref.append(cache)
    owners: dict[int, int] = {}  # session serial -> the caller it was made for
    for kind, value in steps:
        if kind == "tick":
            now[0] += value
            continue
        token = _delegating_token(f"c{value}", credential_pool[value], 2000.0)
        with rpcsec.impersonate(token):
            try:
                serial = cache.select().serial
            except rpcsec.sspi.DelegationPolicyError:
                assert now[0] >= 2000.0
                continue
        assert owners.setdefault(serial, value) == value  # never another caller's session
    for session in cache.close():  # what the channel releases at close
        session.release()
    dropped = cache.dropped
    deadline = time.monotonic() + WAIT
    made = cache.made
    assert made == len(owners)
    while sum(released.values()) + dropped.forgotten < made:
        assert time.monotonic() < deadline, (released, dropped.forgotten, made)
        time.sleep(0.002)
    assert all(count == 1 for count in released.values())
    assert sum(released.values()) + dropped.forgotten == made


class _Template:
    def for_caller(self, credentials, owner):
        return (credentials, owner)


def _delegating_token(principal: str, credentials, expires_at: float | None = None):
    return rpcsec.AccessToken(
        principal=principal,
        package="x509",
        impersonation_level=ImpersonationLevel.DELEGATE,
        expires_at=expires_at,
        delegated_credentials=credentials,
    )


@pytest.fixture
def credential_pool(x509_setup):
    names = [f"pool{i}" for i in range(6)]
    for name in names:
        x509_setup.pki.issue(name)
    return [x509_setup.client(name) for name in names]
