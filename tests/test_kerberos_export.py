"""Kerberos contexts keyed from the GSS session key: they export, import and delegate like any
other package's (issue 9 item 1's kerberos part; issue 14's kerberos stream target).

Messages are AES-256-GCM / GMAC under per-direction keys from the GSS session key (MS-SMB2
§3.1.4.2 style), so MIT's context is released after the handshake and ExportSecurityContext
carries the direction secrets; delegated credentials export through gss_export_cred.
"""

from __future__ import annotations

import json

import pytest
from helpers.blobs import blob_state, replaced
from helpers.pair import handshake

from rpcsec.security import impersonate
from rpcsec.sspi import (
    ContextReq,
    CredentialUse,
    ImpersonationLevel,
    InvalidTokenError,
    MessageAlteredError,
    ReplayError,
    SecurityError,
    accept_security_context,
    get_package,
    import_security_context,
    initialize_security_context,
)
from rpcsec.sspi._protection import AeadProtector

pytestmark = pytest.mark.kerberos

PRIVATE = ContextReq.default() | ContextReq.CONFIDENTIALITY
DELEGATE = PRIVATE | ContextReq.DELEGATE


def _pair(realm, service="storage", req=PRIVATE, level=ImpersonationLevel.IMPERSONATE, creds=None):
    client = initialize_security_context(
        creds or realm.client_credentials("alice"),
        realm.hostbased(service),
        req,
        impersonation=level,
    )
    server = accept_security_context(realm.server_credentials(service))
    handshake(client, server)
    return client, server


def test_messages_use_the_core_aead_and_the_gss_context_is_released(kerberos_realm) -> None:
    client, server = _pair(kerberos_realm)
    assert isinstance(client._protector, AeadProtector)
    assert isinstance(server._protector, AeadProtector)
    assert getattr(client._mechanism, "_context", None) is None  # MIT's context is gone
    assert server.unwrap(client.wrap(b"hello")) == b"hello"
    assert client.unwrap(server.wrap(b"world")) == b"world"


def test_every_context_has_its_own_keys(kerberos_realm) -> None:
    """Keys come from the per-context subkey, not from the ticket: two contexts of the same
    client to the same service cannot open each other's messages."""
    client_a, _server_a = _pair(kerberos_realm)
    _client_b, server_b = _pair(kerberos_realm)
    with pytest.raises(MessageAlteredError):
        server_b.unwrap(client_a.wrap(b"for a only"))
    with pytest.raises(MessageAlteredError):
        client_a.unwrap(server_b.wrap(b"for b only"))
    outbound_a, inbound_a = client_a._protector.secrets()
    assert outbound_a != inbound_a  # one key per direction
    assert outbound_a not in server_b._protector.secrets()


def test_server_context_export_import_round_trip(kerberos_realm) -> None:
    client, server = _pair(kerberos_realm)
    assert server.unwrap(client.wrap(b"before")) == b"before"
    blob = server.export()
    assert b"KRBTEST" in blob  # the peer's name travels; the keys are base64 in it
    replica = import_security_context(blob, kerberos_realm.server_credentials("storage"))
    assert replica.peer.principal == "alice@KRBTEST.COM"
    assert replica.peer.package == "kerberos"
    assert replica.attributes & ContextReq.CONFIDENTIALITY
    message = client.wrap(b"after import", aad=b"/svc/M")
    assert replica.unwrap(message, aad=b"/svc/M") == b"after import"
    with pytest.raises(ReplayError):
        replica.unwrap(message, aad=b"/svc/M")
    assert client.unwrap(replica.wrap(b"answer")) == b"answer"
    replica.verify(b"signed", client.sign(b"signed"))


def test_client_context_export_import_round_trip(kerberos_realm) -> None:
    client, server = _pair(kerberos_realm)
    blob = client.export()
    resumed = import_security_context(blob, kerberos_realm.client_credentials("alice"))
    assert server.unwrap(resumed.wrap(b"from the resumed client")) == b"from the resumed client"
    assert resumed.unwrap(server.wrap(b"back")) == b"back"


def test_messages_exported_before_are_replays_after_import(kerberos_realm) -> None:
    client, server = _pair(kerberos_realm)
    seen = client.wrap(b"seen by the exporter")
    assert server.unwrap(seen) == b"seen by the exporter"
    replica = import_security_context(server.export(), kerberos_realm.server_credentials("storage"))
    with pytest.raises(ReplayError):
        replica.unwrap(seen)


def test_a_tampered_export_is_refused(kerberos_realm) -> None:
    client, server = _pair(kerberos_realm)
    blob = server.export()
    swapped = replaced(blob, inbound=blob_state(blob).outbound)  # nothing the client sends opens
    replica = import_security_context(swapped, kerberos_realm.server_credentials("storage"))
    with pytest.raises(MessageAlteredError):
        replica.unwrap(client.wrap(b"x"))
    with pytest.raises(InvalidTokenError):
        import_security_context(b"{not json", kerberos_realm.server_credentials("storage"))


# -- delegation survives export -------------------------------------------------------------


def test_delegation_exports_and_an_imported_copy_calls_onward(kerberos_realm) -> None:
    realm = kerberos_realm
    _, documents = _pair(realm, "documents", DELEGATE, ImpersonationLevel.DELEGATE)
    delegated = documents.peer.delegated_credentials
    assert delegated is not None
    package = get_package("kerberos")
    blob = package.export_delegation(delegated)
    # "another replica": credentials rebuilt from bytes alone.
    onward = package.import_delegation(blob)
    assert onward.principal == "alice@KRBTEST.COM"
    assert onward.use is CredentialUse.OUTBOUND
    hop, storage = _pair(realm, "storage", creds=onward)
    assert storage.peer.principal == "alice@KRBTEST.COM"
    assert storage.peer.delegation_chain == ("documents/localhost@KRBTEST.COM",)
    assert storage.unwrap(hop.wrap(b"as alice, via documents")) == b"as alice, via documents"


def test_imported_delegation_works_inside_impersonation(kerberos_realm) -> None:
    realm = kerberos_realm
    _, documents = _pair(realm, "documents", DELEGATE, ImpersonationLevel.DELEGATE)
    delegated = documents.peer.delegated_credentials  # read before export retires the context
    replica = import_security_context(documents.export(), realm.server_credentials("documents"))
    package = get_package("kerberos")
    onward = package.import_delegation(package.export_delegation(delegated))
    with impersonate(replica.peer):
        _, storage = _pair(realm, "storage", creds=onward)
    assert storage.peer.principal == "alice@KRBTEST.COM"


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"{}",
        b'{"v": 1, "principal": "alice@KRBTEST.COM", "chain": [], "gss": "!!"}',
        b'{"v": 1, "principal": "alice@KRBTEST.COM", "chain": [], "gss": ""}',
        # right shape, another mechanism's OID (NTLM), then garbage for MIT's JSON parser
        b'{"v": 1, "principal": "a@B", "chain": [], "gss": "AAAACisGAQQBgjcCAgpbIksiXQ=="}',
        b'{"v": 1, "principal": "a@B", "chain": [], "gss": "AAAACSqGSIb3EgECAnsi"}',
        b'{"v": 2, "principal": "a@B", "chain": [], "gss": ""}',
        b'{"v": 1, "principal": "", "chain": [], "gss": ""}',
        b'{"v": 1, "principal": "a@B", "chain": [1], "gss": ""}',
    ],
)
def test_malformed_delegation_blobs_are_typed_errors(kerberos_realm, blob: bytes) -> None:
    with pytest.raises(SecurityError):
        get_package("kerberos").import_delegation(blob)


def test_negotiate_delegation_exports_too(kerberos_realm) -> None:
    realm = kerberos_realm
    client = initialize_security_context(
        realm.client_credentials("alice", package="negotiate"),
        realm.hostbased("documents"),
        DELEGATE,
        impersonation=ImpersonationLevel.DELEGATE,
    )
    documents = accept_security_context(realm.server_credentials("documents", package="negotiate"))
    handshake(client, documents)
    package = get_package("negotiate")
    onward = package.import_delegation(
        package.export_delegation(documents.peer.delegated_credentials)
    )
    hop = initialize_security_context(onward, realm.hostbased("storage"), PRIVATE)
    storage = accept_security_context(realm.server_credentials("storage", package="negotiate"))
    handshake(hop, storage)
    assert storage.peer.principal == "alice@KRBTEST.COM"
    assert storage.peer.delegation_chain == ("documents/localhost@KRBTEST.COM",)


@pytest.mark.parametrize(
    "body",
    [b'["K5C1",1]', b'["K5C1"]', b'["K5C1",[1,["a@B",null,null],null,false,false,null]]'],
)
def test_well_framed_but_bogus_credentials_are_refused_by_mit_typed(kerberos_realm, body) -> None:
    import base64
    import struct

    oid = bytes.fromhex("2a864886f712010202")
    token = struct.pack(">I", len(oid)) + oid + struct.pack(">I", len(body)) + body
    blob = json.dumps(
        {"v": 1, "principal": "a@B", "chain": [], "gss": base64.b64encode(token).decode()}
    ).encode()
    with pytest.raises(SecurityError):
        get_package("kerberos").import_delegation(blob)


@pytest.mark.parametrize("package", ["kerberos", "negotiate"])
def test_an_exported_context_keeps_its_delegation(kerberos_realm, package) -> None:
    """What a replica that opens the ticket needs to call onward as the client."""
    realm = kerberos_realm
    client = initialize_security_context(
        realm.client_credentials("alice", package=package),
        realm.hostbased("documents"),
        DELEGATE,
        impersonation=ImpersonationLevel.DELEGATE,
    )
    documents = accept_security_context(realm.server_credentials("documents", package=package))
    handshake(client, documents)
    blob = documents.export()
    replica = import_security_context(blob, realm.server_credentials("documents", package=package))
    caller = replica.peer
    assert caller.impersonation_level is ImpersonationLevel.DELEGATE
    assert caller.delegated_credentials is not None and caller.can_delegate
    with impersonate(caller) as token:
        hop = initialize_security_context(
            token.delegated_credentials, realm.hostbased("storage"), PRIVATE
        )
        storage = accept_security_context(realm.server_credentials("storage", package=package))
        handshake(hop, storage)
    assert storage.peer.principal == "alice@KRBTEST.COM"
    assert storage.peer.delegation_chain == ("documents/localhost@KRBTEST.COM",)


def test_an_exported_context_without_delegation_carries_none(kerberos_realm) -> None:
    _, server = _pair(kerberos_realm)
    blob = server.export()  # once: ExportSecurityContext retires the exporter
    assert blob_state(blob).delegation is None
    replica = import_security_context(blob, kerberos_realm.server_credentials("storage"))
    assert replica.peer.delegated_credentials is None


def test_a_malformed_delegation_in_an_export_is_refused(kerberos_realm) -> None:
    _, documents = _pair(kerberos_realm, "documents", DELEGATE, ImpersonationLevel.DELEGATE)
    blob = documents.export()
    for bad in (b"!!", b"{}", b"\x00\x00\x00"):
        with pytest.raises(InvalidTokenError):
            import_security_context(
                replaced(blob, delegation=bad), kerberos_realm.server_credentials("documents")
            )
