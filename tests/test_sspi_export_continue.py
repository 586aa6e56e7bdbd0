"""``export_and_continue``: the exporter's own process keeps serving the context without
re-importing the blob it just wrote (the gRPC tickets' issue path). The continued context must
be the blob's state exactly -- same keys, same counters, the replay window carried over -- and
the exporter must be retired as by ``export()``."""

from __future__ import annotations

import pytest
from helpers.pair import handshake
from helpers.pki import make_authority

from rpcsec.sspi import (
    ContextExpiredError,
    ContextReq,
    ContextState,
    CredentialUse,
    InvalidStateError,
    InvalidTokenError,
    ReplayError,
    ServerContext,
    accept_security_context,
    acquire_credentials_handle,
    import_security_context,
    initialize_security_context,
)

PRIVATE = ContextReq.REPLAY_DETECT | ContextReq.CONFIDENTIALITY | ContextReq.CONNECTION


@pytest.fixture(params=["x509", "ntlm"])
def pair(request, tmp_path, ntlm_user_file):
    if request.param == "x509":
        pki = make_authority(tmp_path)
        client = initialize_security_context(pki.credentials("alice"), pki.id("documents"), PRIVATE)
        server_creds = pki.credentials("documents", CredentialUse.INBOUND)
    else:
        alice = acquire_credentials_handle(
            "ntlm", "RPCSEC\\alice", CredentialUse.OUTBOUND, password="Alice-Pa55!"
        )
        client = initialize_security_context(alice, "host@server", PRIVATE)
        server_creds = acquire_credentials_handle(
            "ntlm", None, CredentialUse.INBOUND, user_file=str(ntlm_user_file)
        )
    return handshake(client, accept_security_context(server_creds))


def test_the_exporter_is_retired(pair) -> None:
    server = pair.server
    _blob, continued = server.export_and_continue()
    assert server.state is ContextState.EXPORTED
    assert continued.state is ContextState.ESTABLISHED
    for call in (lambda: server.wrap(b"x"), lambda: server.sign(b"x"), server.export):
        with pytest.raises(ContextExpiredError):
            call()
    with pytest.raises(ContextExpiredError):
        server.unwrap(pair.client.wrap(b"x"))


def test_the_continued_context_is_what_an_import_of_the_blob_would_be(pair) -> None:
    pair.server.wrap(b"sent before the export")  # the counter has moved: seq 0 is used
    blob, continued = pair.server.export_and_continue()
    imported = import_security_context(blob, pair.server.credentials, once=False)
    assert isinstance(continued, ServerContext)
    assert continued.attributes == imported.attributes
    assert continued.impersonation_level == imported.impersonation_level
    assert continued.expires_at == imported.expires_at
    assert continued.peer.principal == imported.peer.principal
    assert continued.peer.groups == imported.peer.groups
    # Same keys and the same next sequence number (the blob's): the very same token.
    # (Two live copies sending is what once=False callers must prevent; here it proves the
    # continued counter is exactly the blob's, never one the exporter already used.)
    token = continued.wrap(b"after the export")
    assert token == imported.wrap(b"after the export")
    assert token[1:9] == (1).to_bytes(8, "big")
    assert pair.client.unwrap(token) == b"after the export"
    message = pair.client.wrap(b"to the continued context")
    assert continued.unwrap(message) == b"to the continued context"


def test_the_replay_window_moves_with_the_context(pair) -> None:
    """A request the exporter accepted is a replay for the continued context too."""
    first = pair.client.wrap(b"accepted before the export")
    assert pair.server.unwrap(first) == b"accepted before the export"
    _blob, continued = pair.server.export_and_continue()
    with pytest.raises(ReplayError):
        continued.unwrap(first)
    assert continued.unwrap(pair.client.wrap(b"fresh")) == b"fresh"


def test_the_caller_token_is_the_live_one(pair) -> None:
    """No second token is built for the same caller (memory per idle context)."""
    caller = pair.server.peer
    _blob, continued = pair.server.export_and_continue()
    assert continued.peer is caller


def test_a_context_not_established_cannot_be_continued(tmp_path) -> None:
    pki = make_authority(tmp_path)
    server = accept_security_context(pki.credentials("documents", CredentialUse.INBOUND))
    with pytest.raises(InvalidStateError):
        server.export_and_continue()
    assert server.state is ContextState.NEW


def test_a_peer_too_large_for_a_blob_is_a_typed_error(pair) -> None:
    """A principal longer than a blob holds (1 KiB; SPIFFE allows 2 KiB) is the peer's doing:
    ``InvalidTokenError`` from export (the tickets then refuse the handshake), never a bare
    ValueError escaping into the binding."""
    import dataclasses

    server = pair.server
    result = server._result
    server._result = dataclasses.replace(
        result, peer=result.peer.replace(principal="spiffe://t/user/" + "a" * 2000)
    )
    with pytest.raises(InvalidTokenError):
        server.export_and_continue()
    with pytest.raises(ContextExpiredError):
        server.export()  # retired: nothing may send under its keys any more


def test_a_client_context_continues_too(tmp_path) -> None:
    pki = make_authority(tmp_path)
    client = initialize_security_context(pki.credentials("alice"), pki.id("documents"), PRIVATE)
    server = accept_security_context(pki.credentials("documents", CredentialUse.INBOUND))
    pair = handshake(client, server)
    blob, continued = pair.client.export_and_continue()
    assert continued.is_client and continued.target_name == pki.id("documents")
    assert continued.peer.principal == pki.id("documents")
    assert server.unwrap(continued.wrap(b"from the continued client")) == (
        b"from the continued client"
    )
    imported = import_security_context(blob, pair.client.credentials, once=False)
    assert imported.is_client and imported.attributes == continued.attributes
