"""Kerberos contexts are tickets too (issue 9 item 1): three replicas of ``documents`` sharing a
ticket key ring and a replay store serve one round-robin channel, and each of them can act for
the caller, because the ticket seals the context's export with the forwarded TGT in it
(``SecurityPackage.export_delegation``). Real KDC, real gRPC servers on loopback.
"""

from __future__ import annotations

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers.echo import EchoServicer
from helpers.wiretap import Wiretap
from test_kerberos_grpc import ChainEcho

from rpcsec.grpc import SecurityInterceptor, reason_of, secure_channel
from rpcsec.grpc._wire import is_ticket
from rpcsec.session import MemoryReplayStore, TicketKeyRing
from rpcsec.sspi import ImpersonationLevel, ProtectionLevel

pytestmark = pytest.mark.kerberos

NEGOTIATE = "/rpcsec.v1.SecurityHandshake/Negotiate"
ROUND_ROBIN = [("grpc.lb_policy_name", "round_robin")]


class _Onward:
    """documents' hook: call storage as whoever the replica is impersonating now."""

    def __init__(self, realm, storage_address: str) -> None:
        self.realm = realm
        self.storage_address = storage_address

    def __call__(self, request: echo_pb2.EchoRequest) -> echo_pb2.EchoResponse:
        with secure_channel(
            self.storage_address,
            None,  # cloaking: the caller's delegated credentials, opened from the ticket
            target_name=self.realm.hostbased("storage"),
            impersonation=ImpersonationLevel.IMPERSONATE,
            protection=ProtectionLevel.PRIVACY,
        ) as channel:
            return echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="via replica"))


def _cluster(realm, serve, ring_dir, count: int = 3):
    storage = ChainEcho()
    storage_address = serve([SecurityInterceptor(realm.server_credentials("storage"))], [storage])
    store = MemoryReplayStore()
    replicas = [EchoServicer(onward=_Onward(realm, storage_address)) for _ in range(count)]
    addresses = [
        serve(
            [
                SecurityInterceptor(
                    realm.server_credentials("documents"),
                    ticket_keys=TicketKeyRing.load(ring_dir, refresh_interval=0),
                    replay_store=store,
                )
            ],
            [replica],
        )
        for replica in replicas
    ]
    return "ipv4:" + ",".join(addresses), replicas, storage


@pytest.fixture
def ring_dir(tmp_path):
    directory = tmp_path / "ring"
    TicketKeyRing.create(directory)
    return directory


def _channel(realm, target: str, tap: Wiretap, impersonation: ImpersonationLevel):
    raw = grpc.intercept_channel(grpc.insecure_channel(target, options=ROUND_ROBIN), tap)
    return secure_channel(
        raw,
        realm.client_credentials("alice"),
        target_name=realm.hostbased("documents"),
        impersonation=impersonation,
        protection=ProtectionLevel.PRIVACY,
    )


def test_every_replica_acts_for_the_caller_from_the_ticket(kerberos_realm, serve, ring_dir):
    realm = kerberos_realm
    target, replicas, storage = _cluster(realm, serve, ring_dir)
    tap = Wiretap()
    with _channel(realm, target, tap, ImpersonationLevel.DELEGATE) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(9):
            answer = stub.Say(echo_pb2.EchoRequest(text="onward"))
            assert answer.principal == "alice@KRBTEST.COM"  # storage saw alice ...
            assert answer.text == "documents/localhost@KRBTEST.COM"  # ... via documents
    assert all(replica.calls > 0 for replica in replicas)  # every replica delegated
    assert storage.calls == 9
    negotiations = [call for call in tap.calls if call.method == NEGOTIATE]
    assert len(negotiations) == 1  # one handshake with documents for the whole channel
    handles = {
        value
        for call in tap.calls
        if call.method != NEGOTIATE
        for key, value in call.metadata
        if key == "rpcsec-context-bin"
    }
    assert len(handles) == 1 and is_ticket(next(iter(handles)))  # a ticket, not a local handle


def test_without_delegation_no_replica_can_call_onward(kerberos_realm, serve, ring_dir):
    realm = kerberos_realm
    target, replicas, storage = _cluster(realm, serve, ring_dir)
    with _channel(realm, target, Wiretap(), ImpersonationLevel.IMPERSONATE) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Say(echo_pb2.EchoRequest(text="onward"))
            assert reason_of(caught.value) == "delegation-required"
    assert sum(replica.calls for replica in replicas) == 3  # the handlers ran and refused
    assert storage.calls == 0  # nothing reached storage from any replica
