"""Delegation by forwarded TGT: the next hop sees the original client, and the chain of services.

The seed's picture: the client C binds to S1 (C), S1 impersonates it and binds onward to S2
(C/S1 there). Without a forwardable ticket, without DELEGATE, or without the DELEGATE level
there is nothing to call onward with.
"""

from __future__ import annotations

import pytest
from helpers.pair import handshake

from rpcsec.security import impersonate
from rpcsec.sspi import (
    BadBindingsError,
    ContextOffer,
    ContextReq,
    Credentials,
    CredentialUse,
    ImpersonationLevel,
    InvalidTokenError,
    MessageAlteredError,
    accept_security_context,
    initialize_security_context,
)

DELEGATE = ContextReq.default() | ContextReq.CONFIDENTIALITY | ContextReq.DELEGATE


def _bind(realm, credentials, service, req=DELEGATE, level=ImpersonationLevel.DELEGATE):
    client = initialize_security_context(
        credentials, realm.hostbased(service), req, impersonation=level
    )
    server = accept_security_context(realm.server_credentials(service))
    handshake(client, server)
    return client, server


def test_delegated_credentials_reach_the_next_hop_as_the_client(kerberos_realm) -> None:
    realm = kerberos_realm
    client, documents = _bind(realm, realm.client_credentials("alice"), "documents")
    assert client.attributes & ContextReq.DELEGATE
    assert documents.attributes & ContextReq.DELEGATE
    assert documents.impersonation_level is ImpersonationLevel.DELEGATE
    caller = documents.peer
    assert caller.can_delegate
    onward = caller.delegated_credentials
    assert isinstance(onward, Credentials)
    assert onward.package_name == "kerberos"
    assert onward.use is CredentialUse.OUTBOUND
    assert onward.principal == "alice@KRBTEST.COM"

    # documents, impersonating alice, binds to storage with alice's forwarded TGT.
    with impersonate(caller) as token:
        hop_client, storage = _bind(
            realm,
            token.delegated_credentials,
            "storage",
            ContextReq.default() | ContextReq.CONFIDENTIALITY,
            ImpersonationLevel.IMPERSONATE,
        )
    assert storage.peer.principal == "alice@KRBTEST.COM"
    assert storage.peer.delegation_chain == ("documents/localhost@KRBTEST.COM",)
    assert str(storage.peer).startswith("alice@KRBTEST.COM/documents/localhost@KRBTEST.COM")
    assert storage.peer.delegated_credentials is None  # IMPERSONATE only: no TGT onward
    assert not storage.attributes & ContextReq.DELEGATE
    # The delegated context protects messages like any other.
    assert storage.unwrap(hop_client.wrap(b"on behalf of alice"), aad=b"") == (
        b"on behalf of alice"
    )


def test_delegation_can_go_two_hops(kerberos_realm) -> None:
    realm = kerberos_realm
    _, documents = _bind(realm, realm.client_credentials("alice"), "documents")
    _, storage = _bind(realm, documents.peer.delegated_credentials, "storage")
    assert storage.peer.delegation_chain == ("documents/localhost@KRBTEST.COM",)
    _, archive = _bind(realm, storage.peer.delegated_credentials, "archive")
    assert archive.peer.principal == "alice@KRBTEST.COM"
    assert archive.peer.delegation_chain == (
        "documents/localhost@KRBTEST.COM",
        "storage/localhost@KRBTEST.COM",
    )


def test_no_delegation_without_the_delegate_flag(kerberos_realm) -> None:
    realm = kerberos_realm
    _client, server = _bind(
        realm, realm.client_credentials("alice"), "documents", ContextReq.default()
    )
    assert not server.attributes & ContextReq.DELEGATE
    assert server.peer.delegated_credentials is None
    assert server.impersonation_level is ImpersonationLevel.IMPERSONATE
    assert not server.peer.can_delegate


def test_no_tgt_leaves_below_the_delegate_level(kerberos_realm) -> None:
    realm = kerberos_realm
    client, server = _bind(
        realm,
        realm.client_credentials("alice"),
        "documents",
        DELEGATE,
        ImpersonationLevel.IMPERSONATE,
    )
    assert not client.attributes & ContextReq.DELEGATE
    assert server.peer.delegated_credentials is None
    assert server.impersonation_level is ImpersonationLevel.IMPERSONATE


def test_no_delegation_without_a_forwardable_ticket(kerberos_realm) -> None:
    realm = kerberos_realm
    creds = realm.client_credentials("alice", forwardable=False)
    client, server = _bind(realm, creds, "documents")
    assert client.requested & ContextReq.DELEGATE
    assert not client.attributes & ContextReq.DELEGATE  # caller sees what it did not get
    assert not server.attributes & ContextReq.DELEGATE
    assert server.peer.delegated_credentials is None
    assert server.impersonation_level is ImpersonationLevel.IMPERSONATE


def test_the_chain_is_bound_into_the_authenticator(kerberos_realm) -> None:
    """A man in the middle cannot rewrite the claimed chain (or the offer) in transit."""
    realm = kerberos_realm
    _, documents = _bind(realm, realm.client_credentials("alice"), "documents")
    client = initialize_security_context(
        documents.peer.delegated_credentials, realm.hostbased("storage")
    )
    token = client.step().token
    assert b"documents/localhost@KRBTEST.COM" in token
    forged = token.replace(b"documents/localhost@KRBTEST.COM", b"documents/localhost@KRBTEST.CON")
    server = accept_security_context(realm.server_credentials("storage"))
    with pytest.raises(BadBindingsError):
        server.step(forged)


def test_the_offer_cannot_be_upgraded_in_transit(kerberos_realm) -> None:
    """IMPERSONATE changed to DELEGATE on the wire: the bindings no longer match."""
    realm = kerberos_realm
    client = initialize_security_context(
        realm.client_credentials("alice"),
        realm.hostbased("storage"),
        ContextReq.default(),
        impersonation=ImpersonationLevel.IDENTIFY,
    )
    token = client.step().token
    requested = ContextReq.default().normalized()
    offer = ContextOffer(requested, ImpersonationLevel.IDENTIFY).encode()
    assert offer in token
    forged = token.replace(offer, ContextOffer(requested, ImpersonationLevel.DELEGATE).encode())
    server = accept_security_context(realm.server_credentials("storage"))
    with pytest.raises(BadBindingsError):
        server.step(forged)


def test_a_forged_grant_is_rejected_by_the_client(kerberos_realm) -> None:
    realm = kerberos_realm
    client = initialize_security_context(
        realm.client_credentials("alice"), realm.hostbased("storage")
    )
    server = accept_security_context(realm.server_credentials("storage"))
    reply = server.step(client.step().token).token
    with pytest.raises((MessageAlteredError, InvalidTokenError)):
        client.step(reply[:-1] + bytes([reply[-1] ^ 1]))


def test_a_delegate_cannot_pass_for_the_client(kerberos_realm) -> None:
    """A delegate that claims no chain is still seen as one: the KDC marked its ticket
    FORWARDED (RFC 4120 §2.6)."""
    from rpcsec.packages.kerberos import KerberosCredentials
    from rpcsec.packages.kerberos._handshake import UNNAMED_DELEGATE

    realm = kerberos_realm
    _, documents = _bind(realm, realm.client_credentials("alice"), "documents")
    honest = documents.peer.delegated_credentials
    hiding = Credentials(
        package=honest.package,
        principal=honest.principal,
        use=CredentialUse.OUTBOUND,
        material=KerberosCredentials(
            principal=honest.principal, initiator=honest.material.initiator, delegation_chain=()
        ),
    )
    _, storage = _bind(realm, hiding, "storage")
    assert storage.peer.principal == "alice@KRBTEST.COM"
    assert storage.peer.delegation_chain == (UNNAMED_DELEGATE,)
    # A direct call from alice's own (forwardable, not forwarded) TGT has no chain.
    _, direct = _bind(realm, realm.client_credentials("alice"), "storage")
    assert direct.peer.delegation_chain == ()
