"""Admission a proxy or a flood cannot defeat (issue 9 item 6): the per-client handshake limit
keys on the client host, or on the address a *trusted* proxy forwards.
"""

from __future__ import annotations

import queue
import threading
import time

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers.echo import EchoServicer
from helpers.wiretap import Wiretap

from rpcsec.grpc import SecurityInterceptor, reason_of, secure_channel
from rpcsec.grpc._admission import AdmissionKey, peer_host

NEGOTIATE = "/rpcsec.v1.SecurityHandshake/Negotiate"


def test_peer_host() -> None:
    assert peer_host("ipv4:10.1.2.3:5555") == "10.1.2.3"
    assert peer_host("ipv6:[::1]:5555") == "::1"
    assert peer_host("ipv6:[2001:db8::7]:1") == "2001:db8::7"
    assert peer_host("unix:/tmp/socket") == "unix:/tmp/socket"


def test_admission_key() -> None:
    direct = AdmissionKey()
    # Two connections of one host are one client; a forwarded header from an untrusted peer
    # is ignored (a client cannot pick its own key).
    assert direct("ipv4:10.0.0.5:1111") == direct("ipv4:10.0.0.5:2222") == "10.0.0.5"
    assert direct("ipv4:10.0.0.5:1", [("x-forwarded-for", "10.9.9.9")]) == "10.0.0.5"

    proxied = AdmissionKey(["10.0.0.0/24", "::1"])
    forwarded = [("x-forwarded-for", "203.0.113.9, 10.0.0.8")]
    assert proxied("ipv4:10.0.0.1:1", forwarded) == "203.0.113.9"  # right-most untrusted
    spoofed = [("x-forwarded-for", "198.51.100.1, 203.0.113.9")]  # client-supplied left part
    assert proxied("ipv4:10.0.0.1:1", spoofed) == "203.0.113.9"
    envoy = [("x-envoy-external-address", "203.0.113.20"), ("x-forwarded-for", "1.2.3.4")]
    assert proxied("ipv6:[::1]:9", envoy) == "203.0.113.20"
    assert proxied("ipv4:10.0.0.1:1", [("x-forwarded-for", "not an address")]) == "10.0.0.1"
    assert proxied("ipv4:10.0.0.1:1", [("x-forwarded-for", "x" * 5000)]) == "10.0.0.1"
    assert proxied("ipv4:10.0.0.1:1") == "10.0.0.1"  # nothing forwarded: the proxy itself
    assert proxied("ipv4:192.0.2.1:1", forwarded) == "192.0.2.1"  # not a trusted proxy
    with pytest.raises(TypeError):
        AdmissionKey("10.0.0.1")
    with pytest.raises(ValueError):
        AdmissionKey(["not a network"])


class _HalfOpen:
    """Handshakes that send nothing after opening: each holds a server slot until reaped."""

    def __init__(self, address: str, connections: int, per_connection: int, forwarded: str):
        self.channels = [
            grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(connections)
        ]
        self.calls = []
        self._never: queue.Queue[bytes] = queue.Queue()
        for channel in self.channels:
            negotiate = channel.stream_stream(NEGOTIATE)
            for _ in range(per_connection):
                self.calls.append(
                    negotiate(
                        iter(self._never.get, None),
                        metadata=(("x-forwarded-for", forwarded),),
                        timeout=30,
                    )
                )

    def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for channel in self.channels:
            channel.close()


def test_a_client_binds_within_two_seconds_during_a_handshake_flood(x509_setup, serve) -> None:
    setup = x509_setup
    echo = EchoServicer()
    interceptor = SecurityInterceptor(
        setup.server(), trusted_proxies=["127.0.0.1"], handshake_timeout=30.0
    )
    address = serve([interceptor], [echo], max_workers=32)
    flood = _HalfOpen(address, connections=64, per_connection=8, forwarded="203.0.113.66")
    try:
        # The flood holds what one client may hold, no more.
        deadline = time.monotonic() + 10
        while interceptor.handshakes.pending_for("203.0.113.66") < 8:
            assert time.monotonic() < deadline, "the flood never reached the server"
            time.sleep(0.01)
        tap = Wiretap()
        tap.metadata = lambda method, metadata: (*metadata, ("x-forwarded-for", "198.51.100.7"))
        raw = grpc.intercept_channel(grpc.insecure_channel(address), tap)
        started = time.monotonic()
        with secure_channel(raw, setup.client(), **setup.channel_options()) as channel:
            reply = echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="hi"))
        elapsed = time.monotonic() - started
        assert reply.text == "hi"
        assert elapsed < 2.0, f"bound after {elapsed:.2f} s"
        assert interceptor.handshakes.pending_for("203.0.113.66") <= 8
        assert interceptor.handshakes.refused >= 64 * 8 - 8 - 1
    finally:
        flood.close()


def test_busy_handshakes_are_retried_within_the_deadline(x509_setup, serve) -> None:
    # One client host may hold 1 handshake; a second channel of the same host finds it busy,
    # backs off with jitter and binds as soon as the first is done.
    setup = x509_setup
    interceptor = SecurityInterceptor(setup.server(), max_handshakes_per_peer=1)
    address = serve([interceptor], [EchoServicer()])
    never: queue.Queue[bytes | None] = queue.Queue()
    holder_call = grpc.insecure_channel(address).stream_stream(NEGOTIATE)(
        iter(never.get, None), timeout=10
    )
    deadline = time.monotonic() + 10
    while interceptor.handshakes.pending_for("127.0.0.1") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    releaser = threading.Timer(0.3, lambda: holder_call.cancel())
    releaser.start()
    with secure_channel(address, setup.client(), **setup.channel_options()) as channel:
        assert echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="x")).text == "x"
    assert interceptor.handshakes.refused >= 1  # it was refused busy first, then retried
    never.put(None)
    releaser.join()


def test_eviction_never_kills_a_stream_in_flight(x509_setup, serve) -> None:
    # A ticket's table entry is a cache: evicting it (the table is full) forgets nothing, so a
    # call already admitted on it carries on, and its next call opens the ticket again.
    setup = x509_setup
    echo = EchoServicer()
    interceptor = SecurityInterceptor(setup.server(), max_contexts=1)
    address = serve([interceptor], [echo])
    with secure_channel(address, setup.client(), **setup.channel_options()) as first:
        stub = echo_pb2_grpc.EchoStub(first)
        sent: queue.Queue[echo_pb2.EchoRequest | None] = queue.Queue()
        replies = stub.Chat(iter(sent.get, None))
        sent.put(echo_pb2.EchoRequest(text="a"))
        assert next(replies).text == "A"
        with secure_channel(address, setup.client("bob"), **setup.channel_options()) as other:
            echo_pb2_grpc.EchoStub(other).Say(echo_pb2.EchoRequest(text="evicts the first"))
            assert interceptor.contexts.evictions >= 1
            sent.put(echo_pb2.EchoRequest(text="b"))
            assert next(replies).text == "B"  # the stream in flight goes on
            sent.put(None)
            assert list(replies) == []
        # Its next call opens the ticket again on the same replica and the same credentials
        # handle (tickets import with once=False): no refusal, no new handshake.
        bound = first.security_context
        assert stub.Say(echo_pb2.EchoRequest(text="again")).text == "again"
        assert first.security_context is bound


def test_a_slow_stream_reader_is_never_taken_for_a_replay(x509_setup, serve) -> None:
    # The client sealed the stream's messages early (gRPC pulled them); the handler reads them
    # only after 200 other calls on the same context passed the replay window (64). They are
    # checked by their (call, index) position, not by the window: the stream succeeds.
    setup = x509_setup
    gate = threading.Event()
    first_read = threading.Event()

    class SlowReader(EchoServicer):
        def Collect(self, request_iterator, context):
            texts = [next(request_iterator).text]
            first_read.set()
            gate.wait(20)
            texts.extend(request.text for request in request_iterator)
            return echo_pb2.EchoResponse(text="".join(texts))

    interceptor = SecurityInterceptor(setup.server(), replay_window=64)
    address = serve([interceptor], [SlowReader()])
    with secure_channel(address, setup.client(), **setup.channel_options()) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        stub.Say(echo_pb2.EchoRequest(text="bind"))
        requests = [echo_pb2.EchoRequest(text=str(i % 10)) for i in range(20)]
        future = stub.Collect.future(iter(requests))
        assert first_read.wait(10)
        for index in range(200):
            assert stub.Say(echo_pb2.EchoRequest(text=str(index))).text == str(index)
        gate.set()
        assert future.result(timeout=20).text == "".join(r.text for r in requests)


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_max_lifetime_ends_an_admitted_stream_at_a_message_boundary(x509_setup, serve) -> None:
    from rpcsec.sspi import ContextExpiredError

    setup = x509_setup
    clock = _Clock()
    echo = EchoServicer()
    interceptor = SecurityInterceptor(setup.server(), max_lifetime=60.0, clock=clock)
    address = serve([interceptor], [echo])
    with secure_channel(address, setup.client(), **setup.channel_options()) as channel:
        sent: queue.Queue[echo_pb2.EchoRequest | None] = queue.Queue()
        replies = echo_pb2_grpc.EchoStub(channel).Chat(iter(sent.get, None))
        sent.put(echo_pb2.EchoRequest(text="a"))
        assert next(replies).text == "A"
        clock.now += 61  # the context's lifetime ends while the stream is open
        sent.put(echo_pb2.EchoRequest(text="b"))
        with pytest.raises(grpc.RpcError) as info:
            next(replies)
        sent.put(None)
    assert isinstance(info.value, ContextExpiredError)  # typed, not UNKNOWN
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(info.value) == "expired"
    assert echo.calls == 1


async def test_aio_max_lifetime_ends_an_admitted_stream(x509_setup, aio_serve) -> None:
    from helpers.echo import AsyncEchoServicer

    from rpcsec.grpc import aio as rpcsec_aio
    from rpcsec.sspi import ContextExpiredError

    setup = x509_setup
    clock = _Clock()
    interceptor = rpcsec_aio.SecurityInterceptor(setup.server(), max_lifetime=60.0, clock=clock)
    address = await aio_serve([interceptor], [AsyncEchoServicer()])
    async with rpcsec_aio.secure_channel(
        address, setup.client(), **setup.channel_options()
    ) as channel:
        call = echo_pb2_grpc.EchoStub(channel).Chat()
        await call.write(echo_pb2.EchoRequest(text="a"))
        assert (await call.read()).text == "A"
        clock.now += 61
        await call.write(echo_pb2.EchoRequest(text="b"))
        with pytest.raises(grpc.RpcError) as info:
            await call.read()
    assert isinstance(info.value, ContextExpiredError)
    assert reason_of(info.value) == "expired"
