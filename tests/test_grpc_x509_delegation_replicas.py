"""x509 delegation when the onward call is served by another replica than the handshake
(issue 9 item 1): alice -> documents (3 replicas on loopback, one ticket key ring directory,
one replay store, gRPC's ``round_robin``) -> storage. Alice binds once; whichever replica
serves her call opens the ticket, which carries the proxy chain and the context's proxy key,
and calls storage as alice. The chain's policy -- targets, depth, lifetime -- is enforced the
same way on every replica, and again by storage, and a refusal never reaches storage's
handler. The ticket's growth with delegation is measured (and bounded) here too.
"""

from __future__ import annotations

import time
from typing import Any

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers.echo import EchoServicer
from helpers.wiretap import Wiretap
from test_grpc_x509_delegation import ChainEcho, onward

from rpcsec.grpc import SecurityInterceptor, reason_of, secure_channel
from rpcsec.grpc._wire import CONTEXT_KEY
from rpcsec.session import MemoryReplayStore, TicketKeyRing
from rpcsec.sspi import CredentialUse, ImpersonationLevel, ProtectionLevel

NEGOTIATE = "/rpcsec.v1.SecurityHandshake/Negotiate"
ROUND_ROBIN = [("grpc.lb_policy_name", "round_robin")]
REPLICAS = 3
CALLS = 4 * REPLICAS


@pytest.fixture
def pki(x509_setup):
    x509_setup.pki.issue("archive", service=True)
    return x509_setup.pki


@pytest.fixture
def ring_dir(tmp_path):
    directory = tmp_path / "ring"
    TicketKeyRing.create(directory)
    return directory


class Front:
    """``documents`` as REPLICAS replicas sharing the ring and the store; storage behind it."""

    def __init__(self, pki, serve, ring_dir, *, storage_clock=None, **documents_onward: Any):
        self.pki = pki
        self.storage = ChainEcho()
        storage_options = {} if storage_clock is None else {"clock": storage_clock}
        storage_address = serve(
            [
                SecurityInterceptor(
                    pki.credentials("storage", CredentialUse.BOTH), **storage_options
                )
            ],
            [self.storage],
        )
        hook = onward(storage_address, pki.id("storage"), **documents_onward)
        store = MemoryReplayStore()
        self.replicas = [EchoServicer(onward=hook) for _ in range(REPLICAS)]
        self.addresses = [
            serve(
                [
                    SecurityInterceptor(
                        pki.credentials("documents", CredentialUse.BOTH),
                        ticket_keys=TicketKeyRing.load(ring_dir, refresh_interval=0),
                        replay_store=store,
                    )
                ],
                [replica],
            )
            for replica in self.replicas
        ]

    def channel(self, tap: Wiretap, **options: Any) -> grpc.Channel:
        raw = grpc.intercept_channel(
            grpc.insecure_channel("ipv4:" + ",".join(self.addresses), options=ROUND_ROBIN), tap
        )
        options.setdefault("impersonation", ImpersonationLevel.DELEGATE)
        return secure_channel(
            raw,
            self.pki.credentials("alice"),
            target_name=self.pki.id("documents"),
            protection=ProtectionLevel.PRIVACY,
            **options,
        )


def _onward_calls(front: Front, **options: Any) -> tuple[list[Any], Wiretap]:
    """CALLS onward calls as alice on one channel: each answer, or the refusal."""
    tap = Wiretap()
    outcomes: list[Any] = []
    with front.channel(tap, **options) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(CALLS):
            try:
                outcomes.append(stub.Say(echo_pb2.EchoRequest(text="onward")))
            except grpc.RpcError as error:
                outcomes.append(error)
    return outcomes, tap


def _handshakes(tap: Wiretap) -> int:
    return sum(1 for call in tap.calls if call.method == NEGOTIATE)


def test_every_replica_calls_onward_as_alice(pki, serve, ring_dir) -> None:
    front = Front(pki, serve, ring_dir)
    answers, tap = _onward_calls(front, package_options={"delegate_to": [pki.id("storage")]})
    assert all(isinstance(a, echo_pb2.EchoResponse) for a in answers), answers
    assert {a.principal for a in answers} == {pki.id("alice")}
    assert {a.text for a in answers} == {pki.id("documents")}  # the chain: C/S1
    assert all(replica.calls > 0 for replica in front.replicas)  # two of them never saw
    assert sum(replica.calls for replica in front.replicas) == CALLS  # the handshake
    assert front.storage.calls == CALLS
    assert _handshakes(tap) == 1


def _refused_everywhere(front: Front, reason: str, **options: Any) -> None:
    refusals, tap = _onward_calls(front, **options)
    assert all(isinstance(r, grpc.RpcError) for r in refusals), refusals
    assert {r.code() for r in refusals} == {grpc.StatusCode.PERMISSION_DENIED}
    assert {reason_of(r) for r in refusals} == {reason}
    assert all(replica.calls > 0 for replica in front.replicas)  # refused by every replica
    assert front.storage.calls == 0
    assert _handshakes(tap) == 1  # a refusal of policy is no reason to re-bind


def test_targets_are_enforced_on_every_replica(pki, serve, ring_dir) -> None:
    front = Front(pki, serve, ring_dir)
    _refused_everywhere(
        front, "delegation-policy", package_options={"delegate_to": [pki.id("archive")]}
    )


def test_depth_is_enforced_on_every_replica(pki, serve, ring_dir) -> None:
    """Depth 0: documents may call storage as alice, but not hand delegation on."""
    front = Front(
        pki,
        serve,
        ring_dir,
        level=ImpersonationLevel.DELEGATE,
        package_options={"delegate_to": [pki.id("archive")]},
    )
    _refused_everywhere(
        front,
        "delegation-policy",
        package_options={
            "delegate_to": [pki.id("storage"), pki.id("archive")],
            "delegation_depth": 0,
        },
    )


def test_lifetime_is_enforced_on_every_replica(pki, serve, ring_dir) -> None:
    """The replicas' onward clock is two hours ahead: alice's one-hour proxy has expired."""
    front = Front(pki, serve, ring_dir, clock=lambda: time.time() + 7200)
    _refused_everywhere(
        front, "delegation-policy", package_options={"delegate_to": [pki.id("storage")]}
    )


def test_lifetime_is_enforced_again_downstream(pki, serve, ring_dir) -> None:
    """Storage does not trust the replicas' judgement: with its clock two hours ahead it
    refuses the chain every replica presents, though each replica still thinks it valid."""
    front = Front(pki, serve, ring_dir, storage_clock=lambda: time.time() + 7200)
    _refused_everywhere(
        front, "delegation-policy", package_options={"delegate_to": [pki.id("storage")]}
    )


def test_ticket_growth_with_delegation_is_bounded(pki, serve, ring_dir) -> None:
    """Measured: the handle every call carries, with one proxy (alice -> documents) and
    without. The chain and the proxy key add about 1.5 KB; a ticket stays far below 16 KiB."""
    front = Front(pki, serve, ring_dir)
    sizes = {}
    for name, options in {
        "plain": {"impersonation": ImpersonationLevel.IMPERSONATE},
        "delegated": {"package_options": {"delegate_to": [pki.id("storage")]}},
    }.items():
        _, tap = _onward_calls(front, **options)
        handles = {bytes(call.value(CONTEXT_KEY)) for call in tap.app_calls()}
        assert len(handles) == 1  # one ticket for the channel, whichever replica served
        sizes[name] = len(handles.pop())
    growth = sizes["delegated"] - sizes["plain"]
    print(f"ticket bytes: plain {sizes['plain']}, delegated {sizes['delegated']} (+{growth})")
    assert 500 < growth < 2500
    assert sizes["delegated"] < 4096


def test_without_the_delegation_in_the_ticket_only_the_handshakes_replica_can(
    pki, serve, ring_dir, monkeypatch
) -> None:
    """The state before this change (and a chain too large for a ticket today): the other
    replicas open the ticket without delegated credentials and answer delegation-required.
    Shows the test above exercises the replicas that never saw the handshake."""
    from rpcsec.packages.x509 import X509Package
    from rpcsec.sspi import UnsupportedFunctionError

    def refuse(self, credentials):
        raise UnsupportedFunctionError("not exported")

    monkeypatch.setattr(X509Package, "export_delegation", refuse)
    front = Front(pki, serve, ring_dir)
    outcomes, tap = _onward_calls(front, package_options={"delegate_to": [pki.id("storage")]})
    served = [o for o in outcomes if isinstance(o, echo_pb2.EchoResponse)]
    refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert served and {a.principal for a in served} == {pki.id("alice")}
    assert refused and {reason_of(r) for r in refused} == {"delegation-required"}
    assert len(served) < CALLS  # round robin: mostly refused (by two replicas in three)
    assert _handshakes(tap) == 1


async def test_aio_replicas_call_onward_as_alice(pki, aio_serve, ring_dir) -> None:
    """The same with ``grpc.aio`` replicas, async handlers and an aio client."""
    from helpers.echo import AsyncEchoServicer

    from rpcsec.grpc import aio as rpcsec_aio

    storage = AsyncEchoServicer()
    storage_address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(pki.credentials("storage", CredentialUse.BOTH))],
        [storage],
    )

    async def hook(request: echo_pb2.EchoRequest) -> echo_pb2.EchoResponse:
        async with rpcsec_aio.secure_channel(
            storage_address, target_name=pki.id("storage"), protection=ProtectionLevel.PRIVACY
        ) as channel:
            return await echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="x"))

    store = MemoryReplayStore()
    replicas = [AsyncEchoServicer(onward=hook) for _ in range(REPLICAS)]
    addresses = [
        await aio_serve(
            [
                rpcsec_aio.SecurityInterceptor(
                    pki.credentials("documents", CredentialUse.BOTH),
                    ticket_keys=TicketKeyRing.load(ring_dir, refresh_interval=0),
                    replay_store=store,
                )
            ],
            [replica],
        )
        for replica in replicas
    ]
    raw = grpc.aio.insecure_channel("ipv4:" + ",".join(addresses), options=ROUND_ROBIN)
    async with rpcsec_aio.secure_channel(
        raw,
        pki.credentials("alice"),
        target_name=pki.id("documents"),
        impersonation=ImpersonationLevel.DELEGATE,
        package_options={"delegate_to": [pki.id("storage")]},
    ) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        answers = [await stub.Say(echo_pb2.EchoRequest(text="onward")) for _ in range(CALLS)]
    assert {a.principal for a in answers} == {pki.id("alice")}
    assert all(replica.calls > 0 for replica in replicas)
    assert storage.calls == CALLS
