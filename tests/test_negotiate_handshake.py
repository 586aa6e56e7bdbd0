"""The negotiate package: SPNEGO picks Kerberos with a realm and falls back to NTLM without.

Kerberos runs against the real KDC of tests/kdc.py; NTLM against the user file of conftest.
"""

from __future__ import annotations

import pytest
from helpers.pair import handshake

from rpcsec.sspi import (
    ContextReq,
    CredentialUse,
    ImpersonationLevel,
    NoCredentialsError,
    PackageCapability,
    ReplayError,
    accept_security_context,
    acquire_credentials_handle,
    enumerate_security_packages,
    initialize_security_context,
    query_security_package_info,
)

ALL = ContextReq.default() | ContextReq.CONFIDENTIALITY | ContextReq.DELEGATE


def client_creds(realm=None, *, ntlm=True, user="alice"):
    """alice's negotiate credentials: her Kerberos ccache (with a realm) and NTLM password."""
    options = {}
    if ntlm:
        options.update(password="Alice-Pa55!", ntlm_principal=f"RPCSEC\\{user}")
    if realm is not None:
        options["ccache"] = realm.ccache(user)
        principal = realm.principal(user)
    else:
        principal = f"RPCSEC\\{user}"
    return acquire_credentials_handle("negotiate", principal, CredentialUse.OUTBOUND, **options)


def server_creds(realm=None, *, user_file=None, service="storage"):
    options = {}
    if realm is not None:
        options.update(keytab=realm.keytab(service), rcache=realm.rcache(service))
    if user_file is not None:
        options["user_file"] = str(user_file)
    return acquire_credentials_handle("negotiate", None, CredentialUse.INBOUND, **options)


def _bind(client, server, target="storage@localhost", req=ALL, level=ImpersonationLevel.DELEGATE):
    c = initialize_security_context(client, target, req, impersonation=level)
    s = accept_security_context(server)
    pair = handshake(c, s)
    return c, s, pair.legs


def test_package_info() -> None:
    info = query_security_package_info("negotiate")
    assert info.available
    assert info.capabilities & PackageCapability.MUTUAL_AUTH
    assert info.capabilities & PackageCapability.DELEGATION
    assert "negotiate" in {p.name for p in enumerate_security_packages()}


def test_picks_kerberos_when_both_sides_can(kerberos_realm, ntlm_user_file) -> None:
    client, server, legs = _bind(
        client_creds(kerberos_realm), server_creds(kerberos_realm, user_file=ntlm_user_file)
    )
    assert legs == 2  # NegTokenInit(AP-REQ) + offer, NegTokenResp(AP-REP) + grant
    assert server.peer.package == "kerberos"
    assert server.peer.principal == "alice@KRBTEST.COM"
    assert client.peer.package == "kerberos"
    assert client.peer.principal == "storage/localhost@KRBTEST.COM"
    assert client.attributes & ContextReq.MUTUAL_AUTH
    assert client.attributes & ContextReq.DELEGATE
    assert server.attributes == client.attributes
    assert server.impersonation_level is ImpersonationLevel.DELEGATE
    assert server.unwrap(client.wrap(b"over kerberos")) == b"over kerberos"


def test_falls_back_to_ntlm_without_a_realm(ntlm_user_file, kerberos_realm) -> None:
    client, server, legs = _bind(
        client_creds(None), server_creds(kerberos_realm, user_file=ntlm_user_file)
    )
    assert legs == 4  # NEGOTIATE, CHALLENGE, AUTHENTICATE, accept-complete + grant
    assert server.peer.package == "ntlm"
    assert client.peer.package == "ntlm"
    assert server.peer.principal == "RPCSEC\\alice"
    # NTLM proves nothing about the server and cannot delegate.
    assert not client.attributes & ContextReq.MUTUAL_AUTH
    assert not client.attributes & ContextReq.DELEGATE
    assert server.peer.delegated_credentials is None
    assert server.impersonation_level is ImpersonationLevel.IMPERSONATE
    assert client.unwrap(server.wrap(b"over ntlm")) == b"over ntlm"


def test_ntlm_alone_needs_no_kdc(ntlm_user_file) -> None:
    client, server, legs = _bind(client_creds(None), server_creds(user_file=ntlm_user_file))
    assert legs == 4
    assert (server.peer.package, server.peer.principal) == ("ntlm", "RPCSEC\\alice")
    assert server.unwrap(client.wrap(b"no realm anywhere")) == b"no realm anywhere"


def test_falls_back_to_ntlm_when_the_server_has_no_keytab(kerberos_realm, ntlm_user_file) -> None:
    # The client's optimistic Kerberos token is dropped and SPNEGO switches to NTLM.
    _client, server, legs = _bind(
        client_creds(kerberos_realm), server_creds(user_file=ntlm_user_file)
    )
    assert legs == 6
    assert server.peer.package == "ntlm"
    assert server.peer.principal == "RPCSEC\\alice"


def test_falls_back_to_ntlm_when_no_ticket_for_the_target(kerberos_realm, ntlm_user_file) -> None:
    _client, server, _ = _bind(
        client_creds(kerberos_realm),
        server_creds(kerberos_realm, user_file=ntlm_user_file),
        target="unregistered@localhost",
    )
    assert server.peer.package == "ntlm"


def test_kerberos_only_on_both_sides(kerberos_realm) -> None:
    _client, server, _ = _bind(
        client_creds(kerberos_realm, ntlm=False), server_creds(kerberos_realm)
    )
    assert server.peer.package == "kerberos"


def test_delegation_through_negotiate(kerberos_realm, ntlm_user_file) -> None:
    realm = kerberos_realm
    _, documents, _ = _bind(
        client_creds(realm),
        server_creds(realm, user_file=ntlm_user_file, service="documents"),
        target="documents@localhost",
    )
    onward = documents.peer.delegated_credentials
    assert onward is not None and onward.package_name == "negotiate"
    assert onward.principal == "alice@KRBTEST.COM"
    _, storage, _ = _bind(onward, server_creds(realm), req=ContextReq.default())
    assert storage.peer.package == "kerberos"
    assert storage.peer.principal == "alice@KRBTEST.COM"
    assert storage.peer.delegation_chain == ("documents/localhost@KRBTEST.COM",)


def test_no_delegation_below_the_delegate_level(kerberos_realm) -> None:
    _client, server, _ = _bind(
        client_creds(kerberos_realm, ntlm=False),
        server_creds(kerberos_realm),
        level=ImpersonationLevel.IMPERSONATE,
    )
    assert not server.attributes & ContextReq.DELEGATE
    assert server.peer.delegated_credentials is None


def test_messages_both_ways_in_order_and_out_of_order(kerberos_realm, ntlm_user_file) -> None:
    for creds in (client_creds(kerberos_realm), client_creds(None)):
        client, server, _ = _bind(creds, server_creds(kerberos_realm, user_file=ntlm_user_file))
        tokens = [client.wrap(f"{i}".encode(), aad=b"/m") for i in range(4)]
        for i in (2, 0, 3, 1):
            assert server.unwrap(tokens[i], aad=b"/m") == f"{i}".encode()
        with pytest.raises(ReplayError):
            server.unwrap(tokens[0], aad=b"/m")
        client.verify(b"reply", server.sign(b"reply"))


def test_credentials_need_one_mechanism(kerberos_realm, monkeypatch) -> None:
    for name in ("NTLM_USER_FILE", "KRB5_KTNAME", "KRB5CCNAME"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(NoCredentialsError):
        acquire_credentials_handle("negotiate", "RPCSEC\\alice", CredentialUse.OUTBOUND)
    with pytest.raises(NoCredentialsError):
        acquire_credentials_handle("negotiate", None, CredentialUse.INBOUND)
    with pytest.raises(TypeError):
        acquire_credentials_handle("negotiate", None, CredentialUse.INBOUND, cert="x")
