"""Multi-hop over gRPC with Kerberos: alice -> documents -> storage, each a real grpc.server.

documents' handler runs as alice and opens a channel to storage *without credentials*: the
binding's cloaking picks alice's forwarded TGT (``delegated_credentials``) and storage sees
alice, via documents (seed: C, C/S1, C/S2). Without delegation the onward call fails with
DELEGATION_REQUIRED before anything is sent.
"""

from __future__ import annotations

from typing import Any

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers.echo import EchoServicer

import rpcsec
from rpcsec.grpc import SecurityInterceptor, reason_of, secure_channel
from rpcsec.sspi import ImpersonationLevel, ProtectionLevel

pytestmark = pytest.mark.kerberos


class ChainEcho(EchoServicer):
    """Answers with the caller's principal and, as text, the services it came through."""

    def Say(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoResponse:
        self.counter.hit()
        token = rpcsec.current_token()
        assert token is not None
        return echo_pb2.EchoResponse(
            text=",".join(token.delegation_chain),
            principal=token.principal,
            protection_level=token.protection_level.name,
        )


def _onward(realm, address: str, service: str, level: ImpersonationLevel):
    """documents' hook: call ``service`` as whoever documents is impersonating now."""

    def call(request: echo_pb2.EchoRequest) -> echo_pb2.EchoResponse:
        with secure_channel(
            address,
            None,  # cloaking: the impersonated caller's delegated credentials
            target_name=realm.hostbased(service),
            impersonation=level,
            protection=ProtectionLevel.PRIVACY,
        ) as channel:
            return echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="from documents"))

    return call


def _front(realm, serve, level=ImpersonationLevel.IMPERSONATE) -> tuple[str, ChainEcho]:
    storage = ChainEcho()
    storage_address = serve([SecurityInterceptor(realm.server_credentials("storage"))], [storage])
    documents = EchoServicer(onward=_onward(realm, storage_address, "storage", level))
    address = serve([SecurityInterceptor(realm.server_credentials("documents"))], [documents])
    return address, storage


def test_two_hops_storage_sees_alice_via_documents(kerberos_realm, serve) -> None:
    realm = kerberos_realm
    address, storage = _front(realm, serve)
    with secure_channel(
        address,
        realm.client_credentials("alice"),
        target_name=realm.hostbased("documents"),
        impersonation=ImpersonationLevel.DELEGATE,
        protection=ProtectionLevel.PRIVACY,
    ) as channel:
        answer = echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="onward"))
    assert answer.principal == "alice@KRBTEST.COM"
    assert answer.text == "documents/localhost@KRBTEST.COM"
    assert answer.protection_level == "PRIVACY"
    assert storage.calls == 1


def test_three_hops_record_the_whole_chain(kerberos_realm, serve) -> None:
    realm = kerberos_realm
    archive = ChainEcho()
    archive_address = serve([SecurityInterceptor(realm.server_credentials("archive"))], [archive])
    storage = EchoServicer(
        onward=_onward(realm, archive_address, "archive", ImpersonationLevel.IMPERSONATE)
    )
    storage_address = serve([SecurityInterceptor(realm.server_credentials("storage"))], [storage])

    def documents_hook(request: echo_pb2.EchoRequest) -> echo_pb2.EchoResponse:
        with secure_channel(
            storage_address,
            None,
            target_name=realm.hostbased("storage"),
            impersonation=ImpersonationLevel.DELEGATE,  # storage may go on as alice
        ) as channel:
            return echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="onward"))

    documents = EchoServicer(onward=documents_hook)
    address = serve([SecurityInterceptor(realm.server_credentials("documents"))], [documents])
    with secure_channel(
        address,
        realm.client_credentials("alice"),
        target_name=realm.hostbased("documents"),
        impersonation=ImpersonationLevel.DELEGATE,
    ) as channel:
        answer = echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="onward"))
    assert answer.principal == "alice@KRBTEST.COM"
    assert answer.text == "documents/localhost@KRBTEST.COM,storage/localhost@KRBTEST.COM"
    assert archive.calls == 1


@pytest.mark.parametrize("forwardable", [True, False], ids=["impersonate-level", "no-fwd-tgt"])
def test_without_delegation_the_onward_call_is_refused(kerberos_realm, serve, forwardable) -> None:
    realm = kerberos_realm
    address, storage = _front(realm, serve)
    level = ImpersonationLevel.IMPERSONATE if forwardable else ImpersonationLevel.DELEGATE
    with secure_channel(
        address,
        realm.client_credentials("alice", forwardable=forwardable),
        target_name=realm.hostbased("documents"),
        impersonation=level,
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        assert stub.Say(echo_pb2.EchoRequest(text="hello")).principal == "alice@KRBTEST.COM"
        with pytest.raises(grpc.RpcError) as raised:
            stub.Say(echo_pb2.EchoRequest(text="onward"))
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(raised.value) == "delegation-required"
    assert storage.calls == 0
