"""Many calls in flight on one channel with REPLAY_DETECT: no false rejections.

Calls multiplexed on one HTTP/2 connection reach the server out of order; the replay window
must accept every one of them exactly once, and every response must verify.
"""

from __future__ import annotations

import asyncio
import threading

import echo_pb2
import echo_pb2_grpc
from helpers.echo import AsyncEchoServicer, EchoServicer

from rpcsec.grpc import SecurityInterceptor, secure_channel
from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.sspi import ContextReq, ProtectionLevel

TOTAL = 10_000


def test_sixteen_threads_one_channel(ntlm_setup, serve) -> None:
    setup = ntlm_setup
    echo = EchoServicer()
    interceptor = SecurityInterceptor(setup.server())
    address = serve([interceptor], [echo], max_workers=16)
    threads, per_thread = 16, TOTAL // 16
    failures: list[BaseException] = []
    verified = [0] * threads
    with secure_channel(
        address, setup.client(), protection=ProtectionLevel.PRIVACY, **setup.channel_options()
    ) as channel:
        assert channel.bind().attributes & ContextReq.REPLAY_DETECT
        stub = echo_pb2_grpc.EchoStub(channel)
        start = threading.Barrier(threads)

        def work(worker: int) -> None:
            start.wait()
            try:
                for index in range(per_thread):
                    text = f"{worker}:{index}"
                    if stub.Say(echo_pb2.EchoRequest(text=text)).text != text:
                        raise AssertionError(f"wrong response for {text}")
                    verified[worker] += 1
            except BaseException as exc:
                failures.append(exc)

        pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    assert not failures, failures[:3]
    assert sum(verified) == threads * per_thread == TOTAL
    assert echo.calls == TOTAL
    assert len(interceptor.contexts) == 0  # released on close


async def test_two_hundred_tasks_one_aio_channel(ntlm_setup, aio_serve) -> None:
    setup = ntlm_setup
    echo = AsyncEchoServicer()
    interceptor = rpcsec_aio.SecurityInterceptor(setup.server())
    address = await aio_serve([interceptor], [echo])
    tasks, per_task = 200, TOTAL // 200
    async with rpcsec_aio.secure_channel(
        address, setup.client(), **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)

        async def work(worker: int) -> int:
            verified = 0
            for index in range(per_task):
                text = f"{worker}:{index}"
                reply = await stub.Say(echo_pb2.EchoRequest(text=text))
                assert reply.text == text
                verified += 1
            return verified

        # All 200 start before the channel is bound: they share its one handshake.
        results = await asyncio.gather(*(work(w) for w in range(tasks)))
        assert sum(results) == TOTAL
        assert len(interceptor.contexts) == 1
    assert echo.calls == TOTAL


async def test_streams_interleaved_with_unary_calls(x509_setup, aio_serve) -> None:
    setup = x509_setup
    address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server())], [AsyncEchoServicer()]
    )
    async with rpcsec_aio.secure_channel(
        address, setup.client(), **setup.channel_options()
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)

        async def stream(worker: int) -> None:
            texts = [f"{worker}-{i}" for i in range(20)]
            replies = [r.text async for r in stub.Repeat(echo_pb2.EchoRequest(text="s", repeat=20))]
            assert replies == [f"s{i}" for i in range(20)]

            async def requests():
                for text in texts:
                    yield echo_pb2.EchoRequest(text=text)

            chat = [r.text async for r in stub.Chat(requests())]
            assert chat == [t.upper() for t in texts]

        async def unary(worker: int) -> None:
            for index in range(20):
                assert (await stub.Say(echo_pb2.EchoRequest(text=str(index)))).text == str(index)

        await asyncio.gather(*(stream(w) for w in range(20)), *(unary(w) for w in range(20)))
