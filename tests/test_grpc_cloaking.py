"""Dynamic cloaking (DESIGN §10, EOAC_DYNAMIC_CLOAKING): ONE channel from a delegating front to
storage, made once without credentials, carries every caller's onward calls as that caller.

The back end counts what matters: whom each call ran as, how many ``Negotiate`` streams (one
per caller and delegation, never one per call), and which connection the calls came on (one
HTTP/2 connection: one client address). Negative: a caller who did not delegate is refused
before anything reaches storage; the cache bound evicts and the evicted caller re-binds as
itself; an expired delegation is never used again.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from concurrent import futures

import echo_pb2
import echo_pb2_grpc
import grpc
import grpc.aio
import pytest
from helpers.echo import AsyncEchoServicer, EchoServicer

import rpcsec
from rpcsec.grpc import SecurityInterceptor, reason_of, secure_channel, set_default_credentials
from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.grpc._wire import NEGOTIATE_METHOD, is_ticket
from rpcsec.sspi import ContextReq, ImpersonationLevel

CALLERS = 50
CALLS_EACH = 4  # 200 onward calls
_KERBEROS_CALLERS: dict[int, set[str]] = {}  # principals made, per realm (the lab is shared)


class NegotiateCounter(grpc.ServerInterceptor):
    """In front of storage's SecurityInterceptor: counts handshake streams."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method == NEGOTIATE_METHOD:
            with self._lock:
                self.count += 1
        return continuation(handler_call_details)


class Storage(EchoServicer):
    """Records (principal it ran as, the client address of the connection) per call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []
        self._seen_lock = threading.Lock()

    def Say(self, request, context):
        token = rpcsec.current_token()
        with self._seen_lock:
            self.seen.append((token.principal, context.peer()))
        return super().Say(request, context)


@pytest.fixture(params=["x509", pytest.param("kerberos", marks=pytest.mark.kerberos)])
def delegating_setup(request, tmp_path):
    from helpers import grpc_setup

    if request.param == "x509":
        return grpc_setup.x509_setup(tmp_path)
    realm = request.getfixturevalue("kerberos_realm")
    setup = grpc_setup.kerberos_setup(realm)
    setup.realm = realm  # _callers adds principals to it
    return setup


def _delegating(setup) -> dict:
    options = setup.channel_options(
        impersonation=ImpersonationLevel.DELEGATE,
        requirements=setup.requirements | ContextReq.DELEGATE,
    )
    if setup.package == "x509":
        options["package_options"] = {"delegate_to": [setup.target("storage")]}
    return options


def _storage(setup, serve) -> tuple[str, Storage, NegotiateCounter]:
    storage, counter = Storage(), NegotiateCounter()
    # Storage's default admission: the front is ONE peer binding for many callers at once,
    # and the cloaked channel keeps its handshakes under the per-peer bound (none is refused
    # ``busy``, which would count as an extra Negotiate stream here).
    storage.guard = SecurityInterceptor(setup.server("storage"))
    address = serve([counter, storage.guard], [storage])
    return address, storage, counter


def _front(setup, serve, shared: grpc.Channel) -> str:
    """documents: Say("onward") calls storage on the ONE shared channel and returns what
    storage answered (the principal storage ran as)."""

    def onward(request: echo_pb2.EchoRequest) -> echo_pb2.EchoResponse:
        return echo_pb2_grpc.EchoStub(shared).Say(echo_pb2.EchoRequest(text="via front"))

    return serve([SecurityInterceptor(setup.server("documents"))], [EchoServicer(onward)])


def _onward(channel: grpc.Channel) -> echo_pb2.EchoResponse:
    return echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="onward"))


def _callers(setup, prefix: str = "caller") -> list[str]:
    """CALLERS more users with credentials: x509 certificates, or Kerberos principals (one
    kadmin run; made once per realm)."""
    names = [f"{prefix}{i}" for i in range(CALLERS)]
    if setup.package == "x509":
        for name in names:
            setup.pki.issue(name)
    else:
        realm = setup.realm
        made = _KERBEROS_CALLERS.setdefault(id(realm), set())
        for name in names:
            if name not in made:
                realm.add_user(name)
                made.add(name)
    return names


def _sixteen_threads(setup, serve, *, max_callers: int | None = None):
    """CALLERS callers, CALLS_EACH onward calls each, interleaved across 16 threads through
    the front on one shared channel: (storage, Negotiate counter, shared channel, answers)."""
    names = _callers(setup)
    storage_address, storage, negotiations = _storage(setup, serve)
    bound = {} if max_callers is None else {"max_callers": max_callers}
    shared = secure_channel(storage_address, **bound, **setup.channel_options("storage"))
    front_address = _front(setup, serve, shared)
    clients = {
        name: secure_channel(front_address, setup.client(name), **_delegating(setup))
        for name in names
    }
    work = [name for name in names for _ in range(CALLS_EACH)]
    random.Random(12).shuffle(work)  # callers interleaved

    def call(name: str) -> tuple[str, str]:
        return name, _onward(clients[name]).principal

    try:
        with futures.ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(call, work))
    finally:
        for channel in clients.values():
            channel.close()
    return storage, negotiations, shared, answers


def test_fifty_callers_on_sixteen_threads_share_one_channel(delegating_setup, serve) -> None:
    setup = delegating_setup
    storage, negotiations, shared, answers = _sixteen_threads(setup, serve)
    # Each onward call ran as its own caller, never another.
    assert all(seen == setup.principal(name) for name, seen in answers)
    assert collections.Counter(p for p, _ in storage.seen) == {
        setup.principal(name): CALLS_EACH for name in _callers(setup)
    }
    # One handshake per caller at storage (not one per call), all on one connection.
    assert negotiations.count == CALLERS
    assert len({peer for _, peer in storage.seen}) == 1
    # 50 bindings cached, each on a sealed ticket (the session layer's handles).
    bindings = [session.current for session in shared._session.callers.sessions()]
    assert len(bindings) == CALLERS and all(is_ticket(b.handle) for b in bindings)
    shared.close()


def test_fifty_callers_through_a_cache_of_eight_evict_and_release_safely(
    delegating_setup, serve
) -> None:
    """The bound far below the callers: bindings are evicted (and Released at storage) while
    other threads' calls are in flight on them. No call fails or runs as another caller;
    every dropped binding is released or, never in use again, forgotten; storage ends
    holding only the cached ones."""
    setup = delegating_setup
    storage, negotiations, shared, answers = _sixteen_threads(setup, serve, max_callers=8)
    assert all(seen == setup.principal(name) for name, seen in answers)
    assert len(answers) == CALLERS * CALLS_EACH
    callers = shared._session.callers
    assert callers.evicted > 0 and callers.made == negotiations.count
    assert negotiations.count == callers.evicted + len(callers)  # one per binding made
    deadline = time.monotonic() + 10
    dropped = callers.dropped
    while dropped.released + dropped.forgotten < callers.evicted:
        assert time.monotonic() < deadline, (dropped.released, dropped.forgotten)
        time.sleep(0.005)
    assert dropped.released == callers.evicted and dropped.forgotten == 0
    guard = storage.guard
    assert len(guard.contexts.entries()) == len(callers) == 8
    shared.close()
    assert guard.contexts.entries() == []


def test_each_caller_is_seen_as_itself_x509_and_kerberos(delegating_setup, serve) -> None:
    setup = delegating_setup
    storage_address, storage, negotiations = _storage(setup, serve)
    shared = secure_channel(storage_address, **setup.channel_options("storage"))
    front_address = _front(setup, serve, shared)
    for _ in range(2):
        for name in ("alice", "bob"):
            with secure_channel(front_address, setup.client(name), **_delegating(setup)) as ch:
                assert _onward(ch).principal == setup.principal(name)
    shared.close()
    assert [p for p, _ in storage.seen] == [setup.principal(n) for n in ("alice", "bob")] * 2
    # Four client channels, four delegations: one binding each, never another's.
    assert negotiations.count == 4
    assert len({peer for _, peer in storage.seen}) == 1


def test_a_caller_without_delegation_is_refused_and_nothing_is_sent(x509_setup, serve) -> None:
    setup = x509_setup
    storage_address, storage, negotiations = _storage(setup, serve)
    shared = secure_channel(storage_address, **setup.channel_options("storage"))
    front_address = _front(setup, serve, shared)
    with secure_channel(front_address, setup.client("bob"), **setup.channel_options()) as ch:
        with pytest.raises(grpc.RpcError) as info:
            _onward(ch)  # bob allowed IMPERSONATE only
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(info.value) == "delegation-required"
    assert negotiations.count == 0 and storage.seen == []
    # The channel still serves a caller who did delegate.
    with secure_channel(front_address, setup.client("alice"), **_delegating(setup)) as ch:
        assert _onward(ch).principal == setup.principal("alice")
    assert negotiations.count == 1
    shared.close()


def test_the_cache_bound_evicts_and_the_evicted_caller_binds_again(x509_setup, serve) -> None:
    setup = x509_setup
    setup.pki.issue("carol")
    storage_address, storage, negotiations = _storage(setup, serve)
    shared = secure_channel(storage_address, max_callers=2, **setup.channel_options("storage"))
    front_address = _front(setup, serve, shared)
    clients = {
        name: secure_channel(front_address, setup.client(name), **_delegating(setup))
        for name in ("alice", "bob", "carol")
    }
    order = ["alice", "bob", "alice", "carol", "bob", "alice"]
    try:
        for name in order:
            assert _onward(clients[name]).principal == setup.principal(name)
    finally:
        for channel in clients.values():
            channel.close()
    # alice, bob bind; alice hits; carol evicts bob (least recently used); bob evicts alice;
    # alice binds again: five handshakes for six calls, each as its caller.
    assert negotiations.count == 5
    assert [p for p, _ in storage.seen] == [setup.principal(n) for n in order]
    assert len(shared._session.callers) == 2
    shared.close()


def test_an_expired_delegation_is_never_reused(x509_setup, serve) -> None:
    setup = x509_setup
    now = [time.time()]
    storage_address, storage, negotiations = _storage(setup, serve)
    shared = secure_channel(
        storage_address, clock=lambda: now[0], **setup.channel_options("storage")
    )
    front_address = _front(setup, serve, shared)
    with secure_channel(front_address, setup.client("alice"), **_delegating(setup)) as ch:
        assert _onward(ch).principal == setup.principal("alice")
        assert _onward(ch).principal == setup.principal("alice")  # cached: no handshake
        assert negotiations.count == 1
        now[0] += 2 * 3600  # past the proxy's (one hour) and the caller's context's end
        with pytest.raises(grpc.RpcError) as info:
            _onward(ch)
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(info.value) == "delegation-policy"
    assert negotiations.count == 1 and len(storage.seen) == 2  # nothing sent as the expired
    assert len(shared._session.callers) == 0  # dropped, not kept
    shared.close()


def test_outside_any_handler_the_channel_speaks_as_the_process(x509_setup, serve) -> None:
    setup = x509_setup
    storage_address, storage, negotiations = _storage(setup, serve)
    shared = secure_channel(storage_address, **setup.channel_options("storage"))
    front_address = _front(setup, serve, shared)
    set_default_credentials(setup.client("bob"))  # "bob" plays the front's own identity
    try:
        direct = echo_pb2_grpc.EchoStub(shared)
        assert direct.Say(echo_pb2.EchoRequest(text="me")).principal == setup.principal("bob")
        with secure_channel(front_address, setup.client("alice"), **_delegating(setup)) as ch:
            assert _onward(ch).principal == setup.principal("alice")
        again = direct.Say(echo_pb2.EchoRequest(text="me again"))
        assert again.principal == setup.principal("bob")  # its binding, cached
    finally:
        set_default_credentials(None)
    assert [p for p, _ in storage.seen] == [setup.principal(n) for n in ("bob", "alice", "bob")]
    assert negotiations.count == 2
    shared.close()


def test_cloaking_arguments_are_checked(x509_setup) -> None:
    setup = x509_setup
    options = setup.channel_options("storage")
    with pytest.raises(ValueError):
        secure_channel("127.0.0.1:1", setup.client(), cloaking="dynamic", **options)
    with pytest.raises(ValueError):
        secure_channel("127.0.0.1:1", cloaking="sometimes", **options)
    with pytest.raises(ValueError):
        secure_channel("127.0.0.1:1", max_callers=0, **options)
    with pytest.raises(ValueError):
        rpcsec_aio.secure_channel("127.0.0.1:1", setup.client(), cloaking="dynamic", **options)


async def _two_hundred_tasks(setup, serve, aio_serve, *, max_callers: int | None = None):
    """CALLERS callers, CALLS_EACH onward calls each, as 200 concurrent aio tasks through an
    aio front on one shared aio channel: (storage, Negotiate counter, shared, answers)."""
    names = _callers(setup)
    storage_address, storage, negotiations = _storage(setup, serve)
    bound = {} if max_callers is None else {"max_callers": max_callers}
    shared = rpcsec_aio.secure_channel(storage_address, **bound, **setup.channel_options("storage"))

    async def onward(request: echo_pb2.EchoRequest) -> echo_pb2.EchoResponse:
        return await echo_pb2_grpc.EchoStub(shared).Say(echo_pb2.EchoRequest(text="via front"))

    front_address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server("documents"))], [AsyncEchoServicer(onward)]
    )
    clients = {
        name: rpcsec_aio.secure_channel(front_address, setup.client(name), **_delegating(setup))
        for name in names
    }
    work = [name for name in names for _ in range(CALLS_EACH)]
    random.Random(21).shuffle(work)

    async def call(name: str) -> tuple[str, str]:
        stub = echo_pb2_grpc.EchoStub(clients[name])
        return name, (await stub.Say(echo_pb2.EchoRequest(text="onward"))).principal

    try:
        answers = await asyncio.gather(*(call(name) for name in work))
    finally:
        for channel in clients.values():
            await channel.close()
    return storage, negotiations, shared, answers


async def test_two_hundred_aio_tasks_through_an_aio_front(
    delegating_setup, serve, aio_serve
) -> None:
    setup = delegating_setup
    storage, negotiations, shared, answers = await _two_hundred_tasks(setup, serve, aio_serve)
    assert all(seen == setup.principal(name) for name, seen in answers)
    assert collections.Counter(p for p, _ in storage.seen) == {
        setup.principal(name): CALLS_EACH for name in _callers(setup)
    }
    assert negotiations.count == CALLERS
    assert len({peer for _, peer in storage.seen}) == 1
    await shared.close()


async def test_two_hundred_aio_tasks_through_a_cache_of_eight_evict_and_release_safely(
    delegating_setup, serve, aio_serve
) -> None:
    """The aio twin of the sixteen-thread test: the drain is a task on the front's loop."""
    setup = delegating_setup
    storage, negotiations, shared, answers = await _two_hundred_tasks(
        setup, serve, aio_serve, max_callers=8
    )
    assert all(seen == setup.principal(name) for name, seen in answers)
    assert len(answers) == CALLERS * CALLS_EACH
    callers = shared._session.callers
    assert callers.evicted > 0 and negotiations.count == callers.evicted + len(callers)
    dropped = callers.dropped
    deadline = time.monotonic() + 10
    while dropped.released + dropped.forgotten < callers.evicted:
        assert time.monotonic() < deadline, (dropped.released, dropped.forgotten)
        await asyncio.sleep(0.005)
    assert dropped.released == callers.evicted and dropped.forgotten == 0
    assert len(storage.guard.contexts.entries()) == len(callers) == 8
    await shared.close()
    assert storage.guard.contexts.entries() == []


async def test_aio_caller_without_delegation_is_refused(x509_setup, serve, aio_serve) -> None:
    setup = x509_setup
    storage_address, storage, negotiations = _storage(setup, serve)
    shared = rpcsec_aio.secure_channel(storage_address, **setup.channel_options("storage"))

    async def onward(request: echo_pb2.EchoRequest) -> echo_pb2.EchoResponse:
        return await echo_pb2_grpc.EchoStub(shared).Say(echo_pb2.EchoRequest(text="via front"))

    front_address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server("documents"))], [AsyncEchoServicer(onward)]
    )
    async with rpcsec_aio.secure_channel(
        front_address, setup.client("bob"), **setup.channel_options()
    ) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await echo_pb2_grpc.EchoStub(ch).Say(echo_pb2.EchoRequest(text="onward"))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(info.value) == "delegation-required"
    assert negotiations.count == 0 and storage.seen == []
    await shared.close()


class _Template:
    """Stands in for ChannelSecurity in the sans-IO cache's unit tests."""

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


def test_caller_sessions_never_hand_one_callers_session_to_another(x509_setup) -> None:
    from rpcsec.grpc._cloaking import CallerSessions

    now = [1000.0]
    cache = CallerSessions(_Template(), lambda made: made, max_callers=2, clock=lambda: now[0])
    alice, alice_again, bob = (x509_setup.client(n) for n in ("alice", "alice", "bob"))
    # Same principal, two delegations (two handles): two bindings, never shared.
    with rpcsec.impersonate(_delegating_token("alice", alice, 2000.0)):
        first = cache.select()
        assert cache.select() is first and first[0] is alice
    with rpcsec.impersonate(_delegating_token("alice", alice_again, 2000.0)):
        assert cache.select()[0] is alice_again
    assert cache.made == 2
    with rpcsec.impersonate(_delegating_token("bob", bob, 2000.0)):
        assert cache.select()[0] is bob  # evicts alice's first (least recently used)
    assert cache.evicted == 1 and len(cache) == 2
    with rpcsec.impersonate(_delegating_token("alice", alice, 2000.0)):
        assert cache.select() is not first  # bound again, a new session
    now[0] = 2000.0  # every delegation has ended
    with rpcsec.impersonate(_delegating_token("bob", bob, 2000.0)):
        with pytest.raises(rpcsec.sspi.DelegationPolicyError):
            cache.select()
    assert cache.close() and len(cache) == 0
    with rpcsec.impersonate(_delegating_token("bob", bob)), pytest.raises(ValueError):
        cache.select()  # closed: nothing is made after close
    with pytest.raises(ValueError):
        CallerSessions(_Template(), lambda made: made, max_callers=0)


def test_the_lock_free_lookup_checks_what_the_full_one_does(x509_setup) -> None:
    """A cached caller found without the lock: the same credentials under a token that is
    not delegation level, or that has expired, never get the cached session; interleaved
    callers keep the LRU order exact."""
    from rpcsec.grpc._cloaking import CallerSessions

    now = [1000.0]
    cache = CallerSessions(_Template(), lambda made: made, max_callers=2, clock=lambda: now[0])
    x509_setup.pki.issue("carol")
    alice, bob, carol = (x509_setup.client(n) for n in ("alice", "bob", "carol"))
    with rpcsec.impersonate(_delegating_token("alice", alice, 2000.0)):
        first = cache.select()
        assert cache.select() is first  # the lock-free hit
    lowered = rpcsec.AccessToken(
        principal="alice",
        package="x509",
        impersonation_level=ImpersonationLevel.IMPERSONATE,
        expires_at=2000.0,
        delegated_credentials=alice,
    )
    with rpcsec.impersonate(lowered), pytest.raises(rpcsec.sspi.DelegationRequiredError):
        cache.select()
    with (
        rpcsec.impersonate(_delegating_token("alice", alice, 1500.0)),
        pytest.raises(rpcsec.sspi.DelegationPolicyError),
    ):
        now[0] = 1600.0  # this token ended, the cached entry (until 2000) has not
        cache.select()
    now[0] = 1000.0
    with rpcsec.impersonate(_delegating_token("bob", bob, 2000.0)):
        cache.select()
    with rpcsec.impersonate(_delegating_token("alice", alice, 2000.0)):
        assert cache.select() is first  # alice is the most recent again
    with rpcsec.impersonate(_delegating_token("carol", carol, 2000.0)):
        cache.select()  # evicts bob, the least recently used
    with rpcsec.impersonate(_delegating_token("alice", alice, 2000.0)):
        assert cache.select() is first
    assert cache.made == 3 and cache.evicted == 1
    # Outside any handler: the process's credentials, each default its own session.
    try:
        set_default_credentials(bob)
        own = cache.select()
        assert own[0] is bob and own[1] is None and cache.select() is own
        set_default_credentials(carol)
        assert cache.select()[0] is carol
        set_default_credentials(None)
        with pytest.raises(rpcsec.sspi.NoCredentialsError):
            cache.select()
    finally:
        set_default_credentials(None)
    cache.close()


def test_caller_sessions_refuse_a_caller_who_did_not_delegate(x509_setup) -> None:
    from rpcsec.grpc._cloaking import CallerSessions

    cache = CallerSessions(_Template(), lambda made: made)
    token = rpcsec.AccessToken(
        principal="alice", package="x509", impersonation_level=ImpersonationLevel.IMPERSONATE
    )
    with rpcsec.impersonate(token), pytest.raises(rpcsec.sspi.DelegationRequiredError):
        cache.select()
    assert cache.made == 0 and cache.peek() is None


async def test_aio_each_caller_is_seen_as_itself_x509_and_kerberos(
    delegating_setup, serve, aio_serve
) -> None:
    setup = delegating_setup
    storage_address, storage, negotiations = _storage(setup, serve)
    shared = rpcsec_aio.secure_channel(storage_address, **setup.channel_options("storage"))

    async def onward(request: echo_pb2.EchoRequest) -> echo_pb2.EchoResponse:
        return await echo_pb2_grpc.EchoStub(shared).Say(echo_pb2.EchoRequest(text="via front"))

    front_address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server("documents"))], [AsyncEchoServicer(onward)]
    )
    channels = {
        name: rpcsec_aio.secure_channel(front_address, setup.client(name), **_delegating(setup))
        for name in ("alice", "bob")
    }
    try:
        work = ["alice", "bob"] * 4
        answers = await asyncio.gather(
            *(
                echo_pb2_grpc.EchoStub(channels[name]).Say(echo_pb2.EchoRequest(text="onward"))
                for name in work
            )
        )
    finally:
        for channel in channels.values():
            await channel.close()
    assert [a.principal for a in answers] == [setup.principal(n) for n in work]
    assert negotiations.count == 2  # one per caller, concurrent first calls sharing it
    assert len({peer for _, peer in storage.seen}) == 1
    await shared.close()


def test_a_cloaked_channel_runs_a_bounded_number_of_handshakes(x509_setup, serve) -> None:
    """All bind slots taken (other callers' handshakes in progress): the next caller's bind
    waits, then fails ``BusyError`` within the handshake deadline, sending nothing."""
    from rpcsec.grpc._cloaking import CONCURRENT_BINDS
    from rpcsec.sspi import BusyError

    setup = x509_setup
    storage_address, storage, negotiations = _storage(setup, serve)
    shared = secure_channel(
        storage_address, handshake_timeout=0.3, **setup.channel_options("storage")
    )
    gate = shared._session.gate
    for _ in range(CONCURRENT_BINDS):
        assert gate.acquire(timeout=0)
    set_default_credentials(setup.client("bob"))
    try:
        started = time.monotonic()
        with pytest.raises(BusyError):
            echo_pb2_grpc.EchoStub(shared).Say(echo_pb2.EchoRequest(text="me"))
        assert time.monotonic() - started < 5
        assert negotiations.count == 0 and storage.seen == []
        gate.release()  # one slot free: the bind goes ahead
        assert echo_pb2_grpc.EchoStub(shared).Say(echo_pb2.EchoRequest(text="me")).principal
        assert negotiations.count == 1
    finally:
        set_default_credentials(None)
        for _ in range(CONCURRENT_BINDS - 1):
            gate.release()
    shared.close()
