"""One negotiate credentials handle, many contexts: successive, concurrent and delegated onward.

A regression suite for a bug where only the first context of a handle used its Kerberos
credential: python-gssapi's ``Credentials(base=raw)`` moves the GSS handle out of ``raw``, so
wrapping the stored handle per context left it as GSS_C_NO_CREDENTIAL and every later context
fell back to the default ccache / keytab (NoCredentialsError in memory, wrong-principal over
gRPC) -- or, with an NTLM password in the handle too, silently downgraded to NTLM. Every
context here must still be Kerberos, name the right principals and protect messages.

Runs against the real KDC of tests/kdc.py; NTLM against the user file of conftest.
"""

from __future__ import annotations

import threading

import pytest
from helpers.pair import handshake

from rpcsec.packages.kerberos._names import display
from rpcsec.packages.kerberos._native import gss
from rpcsec.sspi import (
    ContextReq,
    CredentialUse,
    ImpersonationLevel,
    accept_security_context,
    acquire_credentials_handle,
    initialize_security_context,
)

pytestmark = pytest.mark.kerberos

ALICE = "alice@KRBTEST.COM"
DELEGATE = ContextReq.default() | ContextReq.CONFIDENTIALITY | ContextReq.DELEGATE


def _bind(client_creds, server_creds, target, req=DELEGATE, level=ImpersonationLevel.DELEGATE):
    client = initialize_security_context(client_creds, target, req, impersonation=level)
    server = accept_security_context(server_creds)
    handshake(client, server)
    return client, server


def _check(client, server, service: str, user: str = ALICE) -> None:
    """The context is Kerberos, both ends named right, and messages cross both ways."""
    assert (server.peer.package, client.peer.package) == ("kerberos", "kerberos")
    assert server.peer.principal == user
    assert client.peer.principal == f"{service}/localhost@KRBTEST.COM"
    assert client.attributes & ContextReq.MUTUAL_AUTH
    sealed = bool(client.attributes & ContextReq.CONFIDENTIALITY)
    assert server.unwrap(client.wrap(b"ping", aad=b"/m", encrypt=sealed), aad=b"/m") == b"ping"
    assert client.unwrap(server.wrap(b"pong", encrypt=sealed)) == b"pong"


def _handle_names(credentials) -> tuple[str, str]:
    """What the GSS handles inside a negotiate handle still name (GSS_C_NO_CREDENTIAL fails)."""
    kerberos = credentials.material.kerberos
    names = []
    for handle in (kerberos.initiator, kerberos.acceptor):
        names.append(
            "" if handle is None else display(gss.inquire_cred(handle, lifetime=False).name)
        )
    return names[0], names[1]


@pytest.mark.parametrize("rounds", [2, 3])
def test_successive_contexts_from_the_same_credentials(kerberos_realm, rounds) -> None:
    realm = kerberos_realm
    client_creds = realm.client_credentials("alice", package="negotiate")
    server_creds = realm.server_credentials("documents", package="negotiate")
    for _ in range(rounds):
        client, server = _bind(client_creds, server_creds, realm.hostbased("documents"))
        _check(client, server, "documents")
        assert server.peer.delegated_credentials is not None
    # Neither handle was consumed by the contexts it made.
    assert _handle_names(client_creds)[0] == ALICE
    assert _handle_names(server_creds)[1] == "documents/localhost@KRBTEST.COM"


def test_later_contexts_do_not_fall_back_to_ntlm(kerberos_realm, ntlm_user_file) -> None:
    # With an NTLM half in both handles an emptied Kerberos handle would not fail: SPNEGO would
    # quietly settle on NTLM, losing mutual authentication and delegation.
    realm = kerberos_realm
    client_creds = acquire_credentials_handle(
        "negotiate",
        ALICE,
        CredentialUse.OUTBOUND,
        ccache=realm.ccache("alice"),
        password="Alice-Pa55!",
        ntlm_principal="RPCSEC\\alice",
    )
    server_creds = realm.server_credentials(
        "storage", package="negotiate", user_file=str(ntlm_user_file)
    )
    for _ in range(3):
        client, server = _bind(client_creds, server_creds, realm.hostbased("storage"))
        _check(client, server, "storage")
        assert server.attributes & ContextReq.DELEGATE


def test_one_client_handle_binds_to_several_services(kerberos_realm) -> None:
    realm = kerberos_realm
    client_creds = realm.client_credentials("alice", package="negotiate")
    servers = {
        s: realm.server_credentials(s, package="negotiate") for s in ("documents", "storage")
    }
    for service in ("documents", "storage", "documents", "storage"):
        client, server = _bind(client_creds, servers[service], realm.hostbased(service))
        _check(client, server, service)


def test_one_server_handle_accepts_several_users(kerberos_realm) -> None:
    realm = kerberos_realm
    server_creds = realm.server_credentials("documents", package="negotiate")
    for user in ("alice", "bob", "alice"):
        client_creds = realm.client_credentials(user, package="negotiate")
        client, server = _bind(client_creds, server_creds, realm.hostbased("documents"))
        _check(client, server, "documents", realm.principal(user))


def test_concurrent_contexts_from_one_handle_across_threads(kerberos_realm) -> None:
    realm = kerberos_realm
    client_creds = realm.client_credentials("alice", package="negotiate")
    server_creds = realm.server_credentials("documents", package="negotiate")
    threads, per_thread = 4, 3
    start = threading.Barrier(threads)
    errors: list[BaseException] = []
    done: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            start.wait(timeout=30)
            for _ in range(per_thread):
                client, server = _bind(client_creds, server_creds, realm.hostbased("documents"))
                _check(client, server, "documents")
                with lock:
                    done.append(server.peer.principal)
        except BaseException as exc:  # reported below, with the thread's traceback
            with lock:
                errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in workers)
    if errors:
        raise errors[0]
    assert done == [ALICE] * (threads * per_thread)
    assert _handle_names(client_creds)[0] == ALICE


def test_delegated_credentials_make_several_onward_contexts(kerberos_realm) -> None:
    realm = kerberos_realm
    documents_creds = realm.server_credentials("documents", package="negotiate")
    storage_creds = realm.server_credentials("storage", package="negotiate")
    client_creds = realm.client_credentials("alice", package="negotiate")
    for _ in range(2):  # the documents handle keeps accepting and delegating
        _, documents = _bind(client_creds, documents_creds, realm.hostbased("documents"))
        onward = documents.peer.delegated_credentials
        assert onward is not None and onward.package_name == "negotiate"
        assert onward.principal == ALICE
        for req in (DELEGATE, ContextReq.default(), DELEGATE):
            hop, storage = _bind(onward, storage_creds, realm.hostbased("storage"), req=req)
            _check(hop, storage, "storage")
            assert storage.peer.delegation_chain == ("documents/localhost@KRBTEST.COM",)
        assert _handle_names(onward)[0] == ALICE


def test_delegated_credentials_two_hops_and_concurrently(kerberos_realm) -> None:
    realm = kerberos_realm
    client_creds = realm.client_credentials("alice", package="negotiate")
    storage_creds = realm.server_credentials("storage", package="negotiate")
    archive_creds = realm.server_credentials("archive", package="negotiate")
    _, documents = _bind(
        client_creds,
        realm.server_credentials("documents", package="negotiate"),
        realm.hostbased("documents"),
    )
    onward = documents.peer.delegated_credentials
    storages = []
    errors: list[BaseException] = []

    def hop() -> None:
        try:
            storages.append(_bind(onward, storage_creds, realm.hostbased("storage"))[1])
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=hop) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    if errors:
        raise errors[0]
    assert len(storages) == 3
    # storage, in turn, goes on to archive twice with what alice's ticket delegated to it.
    second = storages[0].peer.delegated_credentials
    assert second is not None
    for _ in range(2):
        hop_client, archive = _bind(second, archive_creds, realm.hostbased("archive"))
        _check(hop_client, archive, "archive")
        assert archive.peer.delegation_chain == (
            "documents/localhost@KRBTEST.COM",
            "storage/localhost@KRBTEST.COM",
        )
