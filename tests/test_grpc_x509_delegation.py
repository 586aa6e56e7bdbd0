"""Delegation across real gRPC hops with the x509 package (RFC 3820 proxy certificates).

alice -> documents -> storage (-> archive), each a real ``grpc.server`` on loopback. A hop's
handler runs as alice and opens its onward channel *without credentials*: the binding's
dynamic cloaking uses alice's delegated credentials, so the next hop sees alice, via the
services she came through (seed: C, C/S1, C/S2). Each policy refusal (targets, depth, expiry)
reaches alice as PERMISSION_DENIED with a reason, and never reaches the next handler.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers.echo import EchoServicer

import rpcsec
from rpcsec.grpc import SecurityInterceptor, reason_of, secure_channel
from rpcsec.sspi import CredentialUse, ImpersonationLevel, ProtectionLevel


class ChainEcho(EchoServicer):
    """The last hop: answers with who it sees, the chain of services and the level."""

    def Say(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoResponse:
        self.counter.hit()
        token = rpcsec.current_token()
        assert token is not None
        return echo_pb2.EchoResponse(
            text=",".join(token.delegation_chain),
            principal=token.principal,
            protection_level=token.impersonation_level.name,
        )


def onward(
    address: str,
    target: str,
    level: ImpersonationLevel = ImpersonationLevel.IMPERSONATE,
    **channel_options: Any,
) -> Callable[[echo_pb2.EchoRequest], echo_pb2.EchoResponse]:
    """A hop's hook: call ``target`` as whoever the handler impersonates (no credentials)."""

    def call(request: echo_pb2.EchoRequest) -> echo_pb2.EchoResponse:
        with secure_channel(
            address,
            None,
            target_name=target,
            impersonation=level,
            protection=ProtectionLevel.PRIVACY,
            **channel_options,
        ) as channel:
            return echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="onward"))

    return call


@pytest.fixture
def pki(x509_setup):
    x509_setup.pki.issue("archive", service=True)
    return x509_setup.pki


def _serve(pki, serve, name: str, servicer: EchoServicer) -> str:
    credentials = pki.credentials(name, CredentialUse.BOTH)
    return serve([SecurityInterceptor(credentials)], [servicer])


def _ask_as_alice(pki, address: str, **options: Any) -> echo_pb2.EchoResponse:
    options.setdefault("impersonation", ImpersonationLevel.DELEGATE)
    with secure_channel(
        address, pki.credentials("alice"), target_name=pki.id("documents"), **options
    ) as channel:
        return echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="onward"))


def _two_hops(pki, serve, **documents_onward: Any) -> tuple[str, ChainEcho]:
    storage = ChainEcho()
    storage_address = _serve(pki, serve, "storage", storage)
    hook = onward(storage_address, pki.id("storage"), **documents_onward)
    return _serve(pki, serve, "documents", EchoServicer(onward=hook)), storage


def _refused(pki, address: str, **options: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        _ask_as_alice(pki, address, **options)
    return raised.value


def test_two_hops_storage_sees_alice_via_documents(pki, serve) -> None:
    address, storage = _two_hops(pki, serve)
    answer = _ask_as_alice(pki, address, package_options={"delegate_to": [pki.id("storage")]})
    assert answer.principal == pki.id("alice")
    assert answer.text == pki.id("documents")
    assert answer.protection_level == "IMPERSONATE"  # what documents allowed storage
    assert storage.calls == 1


def test_three_hops_record_the_whole_chain(pki, serve) -> None:
    archive = ChainEcho()
    archive_address = _serve(pki, serve, "archive", archive)
    storage = EchoServicer(onward=onward(archive_address, pki.id("archive")))
    storage_address = _serve(pki, serve, "storage", storage)
    documents_hook = onward(
        storage_address,
        pki.id("storage"),
        ImpersonationLevel.DELEGATE,  # storage may go on as alice, to archive only
        package_options={"delegate_to": [pki.id("archive")]},
    )
    address = _serve(pki, serve, "documents", EchoServicer(onward=documents_hook))
    answer = _ask_as_alice(
        pki,
        address,
        package_options={
            "delegate_to": [pki.id("storage"), pki.id("archive")],
            "delegation_depth": 1,
        },
    )
    assert answer.principal == pki.id("alice")
    assert answer.text == f"{pki.id('documents')},{pki.id('storage')}"
    assert archive.calls == 1


def test_impersonate_level_cannot_go_onward(pki, serve) -> None:
    """Seed: "If this fails, then the client security context is not delegation level,
    WATCH OUT FOR THIS"."""
    address, storage = _two_hops(pki, serve)
    error = _refused(pki, address, impersonation=ImpersonationLevel.IMPERSONATE)
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) == "delegation-required"
    assert storage.calls == 0


def test_delegation_must_name_its_targets(pki, serve) -> None:
    address, storage = _two_hops(pki, serve)
    error = _refused(pki, address)  # DELEGATE level, but no delegate_to: no target allowed
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) == "delegation-policy"
    error = _refused(pki, address, package_options={"delegate_to": [pki.id("archive")]})
    assert reason_of(error) == "delegation-policy"
    assert storage.calls == 0


def test_depth_is_enforced(pki, serve) -> None:
    """With depth 0, documents may call storage as alice but not pass delegation on."""
    address, storage = _two_hops(
        pki,
        serve,
        level=ImpersonationLevel.DELEGATE,
        package_options={"delegate_to": [pki.id("archive")]},
    )
    error = _refused(
        pki,
        address,
        package_options={
            "delegate_to": [pki.id("storage"), pki.id("archive")],
            "delegation_depth": 0,
        },
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) == "delegation-policy"
    assert storage.calls == 0


def test_an_expired_proxy_is_not_used(pki, serve) -> None:
    """documents' clock is two hours ahead: alice's one-hour proxy has expired for it."""
    address, storage = _two_hops(pki, serve, clock=lambda: time.time() + 7200)
    error = _refused(pki, address, package_options={"delegate_to": [pki.id("storage")]})
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) == "delegation-policy"
    assert storage.calls == 0
