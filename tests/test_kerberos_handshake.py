"""The kerberos package against a real MIT KDC: handshake, granted flags, names, options."""

from __future__ import annotations

import logging

import pytest
from helpers.pair import handshake

from rpcsec.sspi import (
    BadBindingsError,
    ContextAttribute,
    ContextReq,
    CredentialUse,
    ImpersonationLevel,
    InsufficientAttributesError,
    PackageCapability,
    ProtectionLevel,
    accept_security_context,
    acquire_credentials_handle,
    enumerate_security_packages,
    initialize_security_context,
    query_security_package_info,
)

PRIVATE = ContextReq.default() | ContextReq.CONFIDENTIALITY


def _pair(realm, *, user="alice", service="storage", target=None, req=PRIVATE, **kwargs):
    server_req = kwargs.pop("server_req", None)
    client = initialize_security_context(
        realm.client_credentials(user), target or realm.hostbased(service), req, **kwargs
    )
    server = accept_security_context(realm.server_credentials(service), server_req)
    return client, server


def test_package_is_listed_with_its_capabilities(kerberos_realm) -> None:
    info = query_security_package_info("kerberos")
    assert info.available, info.unavailable_reason
    for capability in (
        PackageCapability.MUTUAL_AUTH,
        PackageCapability.DELEGATION,
        PackageCapability.INTEGRITY,
        PackageCapability.PRIVACY,
    ):
        assert info.capabilities & capability
    assert "kerberos" in {p.name for p in enumerate_security_packages()}


def test_one_round_trip_authenticates_both_sides(kerberos_realm) -> None:
    client, server = _pair(kerberos_realm)
    pair = handshake(client, server)
    assert pair.legs == 2  # AP-REQ + offer, AP-REP + grant: no extra round trip
    assert server.peer.principal == "alice@KRBTEST.COM"
    assert server.peer.package == "kerberos"
    assert server.peer.delegation_chain == ()
    assert server.peer.delegated_credentials is None
    assert client.peer.principal == "storage/localhost@KRBTEST.COM"
    assert client.peer.impersonation_level is ImpersonationLevel.IDENTIFY
    assert client.attributes == server.attributes
    expected = PRIVATE.normalized()
    assert client.attributes == expected
    assert client.attributes & ContextReq.MUTUAL_AUTH
    assert server.impersonation_level is ImpersonationLevel.IMPERSONATE
    assert server.peer.protection_level is ProtectionLevel.PRIVACY
    assert client.protection_level is ProtectionLevel.PRIVACY


def test_target_may_be_a_kerberos_principal(kerberos_realm) -> None:
    target = kerberos_realm.service_principal("documents")
    client, server = _pair(kerberos_realm, service="documents", target=target)
    handshake(client, server)
    assert client.peer.principal == target


def test_without_mutual_auth_it_is_not_granted(kerberos_realm) -> None:
    req = ContextReq.INTEGRITY | ContextReq.REPLAY_DETECT
    client, server = _pair(kerberos_realm, req=req)
    pair = handshake(client, server)
    assert pair.legs == 2  # the grant still comes back, wrapped
    assert not client.attributes & ContextReq.MUTUAL_AUTH
    assert client.attributes == req.normalized()
    assert client.protection_level is ProtectionLevel.INTEGRITY


def test_identify_level_is_carried_and_granted_as_asked(kerberos_realm) -> None:
    client, server = _pair(kerberos_realm, impersonation=ImpersonationLevel.IDENTIFY)
    handshake(client, server)
    assert server.impersonation_level is ImpersonationLevel.IDENTIFY
    assert server.peer.impersonation_level is ImpersonationLevel.IDENTIFY
    assert client.impersonation_level is ImpersonationLevel.IDENTIFY


def test_server_requirement_not_offered_fails_the_handshake(kerberos_realm) -> None:
    client, server = _pair(
        kerberos_realm, req=ContextReq.default(), server_req=ContextReq.CONFIDENTIALITY
    )
    with pytest.raises(InsufficientAttributesError):
        handshake(client, server)


def test_query_attributes(kerberos_realm) -> None:
    client, server = _pair(kerberos_realm)
    handshake(client, server)
    names = server.query_attributes(ContextAttribute.NAMES)
    assert names.peer == "alice@KRBTEST.COM"
    assert names.local == "storage/localhost@KRBTEST.COM"
    sizes = client.query_attributes(ContextAttribute.SIZES)
    # core header + AES-GCM tag: messages are keyed from the GSS session key, not GSS tokens
    assert sizes.max_signature == 9 + 16
    assert sizes.security_trailer == 9 + 16
    key_c = client.query_attributes(ContextAttribute.SESSION_KEY).key
    key_s = server.query_attributes(ContextAttribute.SESSION_KEY).key
    assert key_c == key_s and len(key_c) == 32
    assert key_c.hex() not in repr(client.query_attributes(ContextAttribute.SESSION_KEY))
    lifespan = client.query_attributes(ContextAttribute.LIFESPAN)
    assert lifespan.expiry is not None and lifespan.expiry > lifespan.start + 3600
    # Both end with the ticket; MIT's acceptor adds its clock-skew allowance (300 s).
    assert 0 <= server.expires_at - client.expires_at <= 305
    assert server.peer.expires_at == server.expires_at


def test_credentials_from_the_usual_environment(kerberos_realm, monkeypatch) -> None:
    monkeypatch.setenv("KRB5CCNAME", kerberos_realm.ccache("bob"))
    monkeypatch.setenv("KRB5_KTNAME", kerberos_realm.keytab("documents"))
    client_creds = acquire_credentials_handle("kerberos", None, CredentialUse.OUTBOUND)
    assert client_creds.material.principal == "bob@KRBTEST.COM"
    server_creds = acquire_credentials_handle(
        "kerberos", None, CredentialUse.INBOUND, rcache=kerberos_realm.rcache("documents")
    )
    client = initialize_security_context(client_creds, kerberos_realm.hostbased("documents"))
    server = accept_security_context(server_creds)
    handshake(client, server)
    assert server.peer.principal == "bob@KRBTEST.COM"


def test_two_realms_side_by_side_in_one_process(kerberos_lab) -> None:
    other = kerberos_lab.other
    client = initialize_security_context(
        other.client_credentials("carol"), other.service_principal("storage")
    )
    server = accept_security_context(other.server_credentials("storage"))
    handshake(client, server)
    assert server.peer.principal == "carol@OTHER.TEST"
    client, server = _pair(kerberos_lab.main, user="bob")
    handshake(client, server)
    assert server.peer.principal == "bob@KRBTEST.COM"


def test_password_credentials_get_a_ticket_in_memory(kerberos_realm) -> None:
    creds = acquire_credentials_handle(
        "kerberos",
        kerberos_realm.principal("bob"),
        CredentialUse.OUTBOUND,
        password=kerberos_realm.password("bob"),
    )
    assert "password" not in repr(creds) and kerberos_realm.password("bob") not in repr(creds)
    client = initialize_security_context(creds, kerberos_realm.hostbased("storage"))
    server = accept_security_context(kerberos_realm.server_credentials("storage"))
    handshake(client, server)
    assert server.peer.principal == "bob@KRBTEST.COM"


def test_client_keytab_credentials(kerberos_realm) -> None:
    # A service calling another as itself: OUTBOUND from its own keytab.
    creds = acquire_credentials_handle(
        "kerberos",
        kerberos_realm.service_principal("documents"),
        CredentialUse.OUTBOUND,
        keytab=kerberos_realm.keytab("documents"),
    )
    client = initialize_security_context(creds, kerberos_realm.hostbased("storage"))
    server = accept_security_context(kerberos_realm.server_credentials("storage"))
    handshake(client, server)
    assert server.peer.principal == "documents/localhost@KRBTEST.COM"


def test_external_channel_bindings_must_match(kerberos_realm) -> None:
    realm = kerberos_realm
    client = initialize_security_context(
        realm.client_credentials("alice"),
        realm.hostbased("storage"),
        options={"channel_bindings": b"tls-exporter:one"},
    )
    server = accept_security_context(
        realm.server_credentials("storage"), options={"channel_bindings": b"tls-exporter:one"}
    )
    handshake(client, server)
    client = initialize_security_context(
        realm.client_credentials("alice"),
        realm.hostbased("storage"),
        options={"channel_bindings": b"tls-exporter:one"},
    )
    server = accept_security_context(
        realm.server_credentials("storage"), options={"channel_bindings": b"tls-exporter:two"}
    )
    with pytest.raises(BadBindingsError):
        server.step(client.step().token)


def test_disabled_replay_cache_in_the_environment_is_warned_about(
    kerberos_realm, monkeypatch, caplog
) -> None:
    monkeypatch.setenv("KRB5RCACHETYPE", "none")
    with caplog.at_level(logging.WARNING, logger="rpcsec.packages.kerberos"):
        acquire_credentials_handle(
            "kerberos", None, CredentialUse.INBOUND, keytab=kerberos_realm.keytab("storage")
        )
    assert "replay" in caplog.text


def test_caller_misuse_raises_at_once(kerberos_realm) -> None:
    with pytest.raises(TypeError):
        acquire_credentials_handle("kerberos", None, CredentialUse.OUTBOUND, cert="x.pem")
    with pytest.raises(ValueError):
        acquire_credentials_handle("kerberos", None, CredentialUse.OUTBOUND, password="pw")
    with pytest.raises(ValueError):  # the core: server contexts need INBOUND credentials
        accept_security_context(kerberos_realm.client_credentials("alice"))


def test_credentials_repr_hides_material(kerberos_realm) -> None:
    creds = kerberos_realm.server_credentials("storage")
    assert repr(creds) == (
        "Credentials(package='kerberos', principal='storage/localhost@KRBTEST.COM', use=INBOUND)"
    )
    assert "Creds" not in repr(creds.material)
