"""rpcsec (x509) through real proxies to ONE replica: Envoy, nginx ``grpc_pass``, haproxy.

One replica behind a proxy is what works with a context that lives in one process; the proxy
still pools connections, multiplexes every client onto them, and adds headers of its own
(``x-forwarded-for``, a request id, ``x-rpcsec-test-proxy``). Those headers are not signed and
must neither break verification nor be trusted. A proxy that rewrites rpcsec's own metadata is
an attacker on the path: the call fails closed and the handler never runs.

Three replicas behind these proxies are the session layer's tests (issue 9), written on top of
the same helpers (``helpers.replicas``, ``helpers.proxies``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import echo_pb2
import echo_pb2_grpc
import grpc
import grpc.aio
import pytest
from helpers import proxies
from helpers.pki import make_authority
from helpers.replicas import ReplicaGroup, ReplicaSecurity, start_replicas

from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.grpc import call_status, secure_channel
from rpcsec.sspi import ProtectionLevel

PROXIES = ["envoy", "nginx", "haproxy"]
LEVELS = [ProtectionLevel.INTEGRITY, ProtectionLevel.PRIVACY]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return make_authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def replica(pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaGroup]:
    security = ReplicaSecurity.x509(pki, "documents")
    with start_replicas(1, tmp_path_factory.mktemp("replica"), security=security) as group:
        yield group


@pytest.fixture(params=PROXIES)
def proxy(request: pytest.FixtureRequest, replica: ReplicaGroup, tmp_path) -> Iterator:
    proxies.require_proxy(request.param)
    with proxies.start_proxy(request.param, replica.addresses, tmp_path) as running:
        yield running


def _channel(pki, address: str, level: ProtectionLevel = ProtectionLevel.INTEGRITY):
    return secure_channel(
        address,
        pki.credentials("alice"),
        target_name=pki.id("documents"),
        protection=level,
        options=[("grpc.use_local_subchannel_pool", 1)],
    )


def _request(text: str, repeat: int = 0) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(text=text, repeat=repeat)


def _ran(replica: ReplicaGroup, prefix: str) -> list:
    return [e for e in replica.executions() if e.id.startswith(prefix)]


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.name)
def test_all_four_kinds_through_the_proxy(pki, replica, proxy, level) -> None:
    tag = f"sec-{proxy.kind}-{level.name}"
    alice = pki.id("alice")
    with _channel(pki, proxy.address, level) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for index in range(3):
            said = stub.Say(_request(f"{tag}-say-{index}"), timeout=10)
            assert (said.text, said.principal, said.protection_level) == (
                f"{tag}-say-{index}",
                alice,
                level.name,
            )
            repeated = list(stub.Repeat(_request(f"{tag}-rep-{index}", 3), timeout=10))
            assert [r.text for r in repeated] == [f"{tag}-rep-{index}{i}" for i in range(3)]
            assert {r.principal for r in repeated} == {alice}
            parts = [f"{tag}-col-{index}", "x", "y"]
            collected = stub.Collect(iter(_request(p) for p in parts), timeout=10)
            assert (collected.text, collected.principal) == ("".join(parts), alice)
            chat = list(stub.Chat(iter([_request(f"{tag}-chat-{index}")] * 3), timeout=10))
            assert [r.text for r in chat] == [f"{tag}-chat-{index}".upper()] * 3
    ran = _ran(replica, f"{tag}-")
    assert len(ran) == 12 and len({(e.method, e.id) for e in ran}) == 12, "each call ran once"
    assert {e.principal for e in ran} == {alice}


def test_proxy_added_headers_do_not_break_verification(pki, replica, proxy) -> None:
    """Production proxies add request and response headers nobody signed: the calls verify,
    the handler sees the client's signed metadata in ``invocation_metadata()`` and the proxy's
    headers apart (``unverified_metadata``), and the caller is the one the context proved."""
    tag = f"sec-headers-{proxy.kind}"
    with _channel(pki, proxy.address, ProtectionLevel.PRIVACY) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        said, call = stub.Say.with_call(
            _request(tag), timeout=10, metadata=[("x-tenant", "acme"), ("x-tag", "1")]
        )
        assert said.principal == pki.id("alice")
        # the proxy's response header is there, apart from what the server signed
        assert dict(call_status(call).unverified_initial_metadata).get(proxies.TEST_HEADER) == (
            proxy.kind
        )
        assert call_status(call).verified
        chat = stub.Chat(iter([_request(f"{tag}-chat")]), timeout=10)
        assert [r.text for r in chat] == [f"{tag}-chat".upper()]
    (execution,) = [e for e in replica.executions() if e.id == tag]
    assert execution.metadata == {"x-tenant": "acme", "x-tag": "1"}
    assert execution.unverified.get(proxies.TEST_HEADER) == proxy.kind
    assert execution.unverified.get("x-forwarded-for")


async def test_aio_client_through_the_proxy(pki, replica, proxy) -> None:
    tag = f"sec-aio-{proxy.kind}"
    async with rpcsec_aio.secure_channel(
        proxy.address,
        pki.credentials("alice"),
        target_name=pki.id("documents"),
        protection=ProtectionLevel.PRIVACY,
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        said = await stub.Say(_request(f"{tag}-say"), timeout=10)
        assert said.principal == pki.id("alice")
        chat = stub.Chat()
        await chat.write(_request(f"{tag}-chat"))
        assert (await chat.read()).text == f"{tag}-chat".upper()
        await chat.done_writing()
        assert await chat.read() is grpc.aio.EOF
    assert len(_ran(replica, f"{tag}-")) == 2


FORGED_HANDLE = base64.b64encode(bytes(16)).decode()


@pytest.mark.parametrize("kind", PROXIES)
def test_proxy_rewriting_the_context_handle_fails_closed(pki, replica, tmp_path, kind) -> None:
    """A proxy that overwrites ``rpcsec-context-bin`` on every request is an attacker on the
    path: the calls fail UNAUTHENTICATED and the handler never runs."""
    proxies.require_proxy(kind)
    tag = f"sec-forged-{kind}"
    forged = {"rpcsec-context-bin": FORGED_HANDLE}
    with proxies.start_proxy(kind, replica.addresses, tmp_path, extra_headers=forged) as proxy:
        with _channel(pki, proxy.address) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Say(_request(f"{tag}-say"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Chat(iter([_request(f"{tag}-chat")]), timeout=10))
            # haproxy 2.6 resets the client's stream (RST_STREAM CANCEL) when the upstream
            # ends a bidi call while the request stream may still be open, so the server's
            # status does not arrive; what matters is that it fails.
            allowed = {grpc.StatusCode.UNAUTHENTICATED}
            if kind == "haproxy":
                allowed.add(grpc.StatusCode.CANCELLED)
            assert refused.value.code() in allowed
    assert _ran(replica, tag) == []


@pytest.mark.kerberos
def test_kerberos_replica_through_envoy(kerberos_realm, tmp_path) -> None:
    """The launcher's kerberos replicas (a shared keytab, the lab's krb5.conf in the child):
    a real MIT KDC ticket, all four kinds through Envoy, the caller's principal in the
    handler."""
    proxies.require_proxy("envoy")
    security = ReplicaSecurity.kerberos(
        kerberos_realm, "storage", rcache=f"file2:{tmp_path / 'replica.rcache2'}"
    )
    tag = "sec-krb"
    alice = kerberos_realm.principal("alice")
    with start_replicas(1, tmp_path / "group", security=security) as group:
        with proxies.envoy_grpc_proxy(group.addresses, tmp_path) as proxy:
            with secure_channel(
                proxy.address,
                kerberos_realm.client_credentials("alice"),
                target_name=kerberos_realm.hostbased("storage"),
                protection=ProtectionLevel.PRIVACY,
            ) as channel:
                stub = echo_pb2_grpc.EchoStub(channel)
                assert stub.Say(_request(f"{tag}-say"), timeout=10).principal == alice
                assert len(list(stub.Repeat(_request(f"{tag}-rep", 2), timeout=10))) == 2
                collected = stub.Collect(iter([_request(f"{tag}-col")]), timeout=10)
                assert collected.principal == alice
                chat = list(stub.Chat(iter([_request(f"{tag}-chat")]), timeout=10))
                assert [r.principal for r in chat] == [alice]
        ran = _ran(group, tag)
    assert len(ran) == 4 and {e.principal for e in ran} == {alice}
