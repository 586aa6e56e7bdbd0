"""x509 delegation in an exported context (issue 9 item 1): a service that imports the export
of a delegated context -- another replica, another credentials handle -- calls onward as the
caller, within the same policy; the blob holds the proxy chain and the context's fresh proxy
key, never the service's own key, and every malformed, foreign or misdirected blob is refused
with a typed error."""

from __future__ import annotations

import struct
import time

import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from helpers.blobs import blob_state, replaced
from helpers.pair import handshake
from helpers.pki import make_authority
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.packages.x509._delegation import (
    MAGIC,
    MAX_DELEGATION_EXPORT,
    export_x509_delegation,
    import_x509_delegation,
    parse_x509_delegation,
)
from rpcsec.sspi import (
    ContextReq,
    CredentialUse,
    DelegationPolicyError,
    ImpersonationLevel,
    InvalidHandleError,
    InvalidTokenError,
    SecurityError,
    UntrustedRootError,
    accept_security_context,
    get_package,
    import_security_context,
    initialize_security_context,
)

DELEGATE = ContextReq.default() | ContextReq.DELEGATE
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    authority = make_authority(tmp_path_factory.mktemp("pki"))
    authority.issue("archive", service=True)
    return authority


def delegated_export(pki, *, delegate_to=("storage",), depth=1, lifetime=None, clock=None):
    """alice -> documents with delegation; documents' export blob (the ticket's state)."""
    options = {"delegate_to": [pki.id(t) for t in delegate_to], "delegation_depth": depth}
    if lifetime is not None:
        options["proxy_lifetime"] = lifetime
    timing = {"clock": clock} if clock is not None else {}
    client = initialize_security_context(
        pki.credentials("alice"),
        pki.id("documents"),
        DELEGATE,
        impersonation=ImpersonationLevel.DELEGATE,
        options=options,
        **timing,
    )
    server = accept_security_context(pki.credentials("documents", CredentialUse.INBOUND), **timing)
    handshake(client, server)
    return server.export()


def replica(pki, blob, service="documents"):
    """What another replica does with a ticket's state: its own handle, imported once."""
    return import_security_context(blob, pki.credentials(service, CredentialUse.BOTH))


def onward(pki, credentials, target, *, impersonation=ImpersonationLevel.IMPERSONATE, **options):
    client = initialize_security_context(
        credentials,
        pki.id(target),
        DELEGATE if impersonation is ImpersonationLevel.DELEGATE else None,
        impersonation=impersonation,
        options=options,
    )
    server = accept_security_context(pki.credentials(target, CredentialUse.INBOUND))
    return client, server


def delegation_of(blob: bytes) -> bytes:
    delegation = blob_state(blob).delegation
    assert delegation is not None
    return delegation


def test_an_imported_context_calls_onward_as_the_caller(pki) -> None:
    context = replica(pki, delegated_export(pki))
    caller = context.peer
    assert caller.principal == pki.id("alice")
    assert caller.impersonation_level is ImpersonationLevel.DELEGATE
    assert caller.can_delegate and caller.delegated_credentials is not None
    hop, storage = onward(pki, caller.delegated_credentials, "storage")
    handshake(hop, storage)
    assert storage.peer.principal == pki.id("alice")
    assert storage.peer.delegation_chain == (pki.id("documents"),)


def test_the_blob_holds_the_chain_and_the_proxy_key_never_the_services_key(pki) -> None:
    blob = delegated_export(pki)
    raw = delegation_of(blob)
    assert raw.startswith(MAGIC) and len(raw) <= MAX_DELEGATION_EXPORT
    principal, proxies, key = parse_x509_delegation(raw)
    assert [c.subject for c in principal] == [
        pki.credentials("alice").material.identity.certificate.subject
    ]
    assert len(proxies) == 1
    own = pki.credentials("documents").material.identity
    own_key = own.key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    assert own_key not in raw  # the long-term key stays in the replica's own files
    assert own.certificate.public_bytes(Encoding.DER) not in raw
    imported = replica(pki, blob).peer.delegated_credentials
    assert imported is not None
    assert imported.material.identity.spiffe_id == pki.id("documents")
    proxy_key = imported.material.delegated.key
    assert proxy_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()) == raw[-32:]
    assert key.public_key() == proxies[-1].public_key()


def test_a_context_without_delegation_exports_none(pki) -> None:
    client = initialize_security_context(pki.credentials("alice"), pki.id("documents"))
    server = accept_security_context(pki.credentials("documents", CredentialUse.INBOUND))
    handshake(client, server)
    blob = server.export()
    assert blob_state(blob).delegation is None
    assert replica(pki, blob).peer.delegated_credentials is None


def test_another_service_cannot_use_the_delegation(pki) -> None:
    """A ticket opened by a service with another identity (a shared ring misconfigured) does
    not let it act as alice: the chain names documents as its delegate."""
    with pytest.raises(DelegationPolicyError):
        replica(pki, delegated_export(pki), service="storage")


def test_a_replica_trusting_another_authority_refuses_the_chain(pki, tmp_path) -> None:
    other = make_authority(tmp_path, trust_domain="rpcsec.test")  # same names, other root
    blob = delegated_export(pki)
    with pytest.raises(UntrustedRootError):
        import_x509_delegation(delegation_of(blob), other.credentials("documents").material)


def test_the_targets_survive_the_export(pki) -> None:
    caller = replica(pki, delegated_export(pki, delegate_to=("archive",))).peer
    with pytest.raises(DelegationPolicyError):
        handshake(*onward(pki, caller.delegated_credentials, "storage"))


def test_the_depth_survives_the_export(pki) -> None:
    blob = delegated_export(pki, delegate_to=("storage", "archive"), depth=0)
    caller = replica(pki, blob).peer
    with pytest.raises(DelegationPolicyError):  # may call storage as alice, not delegate on
        handshake(
            *onward(
                pki,
                caller.delegated_credentials,
                "storage",
                impersonation=ImpersonationLevel.DELEGATE,
                delegate_to=[pki.id("archive")],
            )
        )
    hop, storage = onward(pki, caller.delegated_credentials, "storage")
    handshake(hop, storage)
    assert storage.peer.principal == pki.id("alice")


def test_an_expired_proxy_imports_but_is_never_used(pki) -> None:
    """Lifetime is judged where the credentials are used, as on the handshake's replica: a
    replica opening the ticket after the proxy expired still gets the chain (the context
    serves alice), and the onward context refuses it before any token."""
    raw = delegation_of(delegated_export(pki, lifetime=60))
    later = time.time() + 3600
    owner = pki.credentials("documents", CredentialUse.BOTH)
    imported = import_x509_delegation(raw, owner.material, clock=lambda: later)
    assert imported.delegated is not None and imported.delegated.delegation.expires_at < later
    credentials = get_package("x509").import_delegation(raw, owner)
    client = initialize_security_context(credentials, pki.id("storage"), None, clock=lambda: later)
    with pytest.raises(DelegationPolicyError, match="expired"):
        client.step(None)


def test_a_swapped_key_is_refused(pki) -> None:
    raw = bytearray(delegation_of(delegated_export(pki)))
    other = delegation_of(delegated_export(pki))
    raw[-32:] = other[-32:]  # a genuine proxy key, of another context
    with pytest.raises(DelegationPolicyError, match="key"):
        import_x509_delegation(bytes(raw), pki.credentials("documents").material)


def test_the_package_needs_the_importers_credentials(pki) -> None:
    raw = delegation_of(delegated_export(pki))
    package = get_package("x509")
    with pytest.raises(ValueError):
        package.import_delegation(raw)
    with pytest.raises(ValueError):
        package.export_delegation(pki.credentials("alice", CredentialUse.OUTBOUND))


def test_structure_is_checked_before_any_certificate_is_trusted(pki) -> None:
    raw = delegation_of(delegated_export(pki))
    owner = pki.credentials("documents").material
    cases = {
        "empty": b"",
        "magic": b"X5E\x02" + raw[4:],
        "trailing": raw + b"\x00",
        "short key": raw[:-1],
        "no principal": MAGIC + b"\x00\x01" + raw[6:],
        "no proxy": MAGIC + bytes((raw[4], 0)) + raw[6:],
        "too many proxies": MAGIC + bytes((raw[4], 9)) + raw[6:],
        "oversized": raw + b"\x00" * MAX_DELEGATION_EXPORT,
    }
    for name, bad in cases.items():
        with pytest.raises(InvalidTokenError):
            import_x509_delegation(bad, owner)
        assert name


def test_a_malformed_delegation_in_an_export_is_refused(pki) -> None:
    blob = delegated_export(pki)
    for bad in (b"!!", b"{}", b"\x00\x00\x00", MAGIC):
        with pytest.raises(InvalidTokenError):
            replica(pki, replaced(blob, delegation=bad))


def test_a_certificate_openssl_cannot_read_is_a_typed_error(pki) -> None:
    """Regression (found by the fuzz test below): a byte of the principal's certificate
    altered so that ``cryptography`` still parses it but OpenSSL's d2i does not escaped as
    ``OpenSSL.crypto.Error`` from the principal's verification."""
    raw = delegation_of(_blob_cache(pki))
    owner = pki.credentials("documents").material
    (length,) = struct.unpack_from(">H", raw, 6)
    for position in range(8, 8 + length):
        altered = bytearray(raw)
        altered[position] ^= 0x20
        with pytest.raises(SecurityError):
            import_x509_delegation(bytes(altered), owner)


@FUZZ
@given(st.binary(max_size=2048))
def test_parser_takes_arbitrary_bytes_with_typed_errors(data) -> None:
    for blob in (data, MAGIC + data):
        try:
            parse_x509_delegation(blob)
        except InvalidTokenError:
            continue
        raise AssertionError("garbage parsed as a delegation")


@FUZZ
@given(data=st.data())
def test_altered_blobs_are_refused_with_security_errors(pki, data) -> None:
    raw = bytearray(delegation_of(_blob_cache(pki)))
    position = data.draw(st.integers(0, len(raw) - 1))
    if data.draw(st.booleans()):
        raw[position] ^= data.draw(st.integers(1, 255))
        altered = bytes(raw)
    else:
        altered = bytes(raw[:position])
    with pytest.raises(SecurityError):
        import_x509_delegation(altered, pki.credentials("documents").material)


_cache: dict[int, bytes] = {}


def _blob_cache(pki) -> bytes:
    key = id(pki)
    if key not in _cache:
        _cache[key] = delegated_export(pki)
    return _cache[key]


def test_export_round_trips(pki) -> None:
    raw = delegation_of(_blob_cache(pki))
    imported = import_x509_delegation(raw, pki.credentials("documents").material)
    assert export_x509_delegation(imported) == raw


def test_a_chain_too_large_for_a_ticket_is_not_exported(pki, monkeypatch) -> None:
    """The export then carries no delegation (other replicas answer delegation-required; the
    handshake's replica keeps the credentials it holds in memory), and nothing fails."""
    import rpcsec.packages.x509._delegation as module

    monkeypatch.setattr(module, "MAX_DELEGATION_EXPORT", 256)
    blob = delegated_export(pki)
    assert blob_state(blob).delegation is None
    assert replica(pki, blob).peer.delegated_credentials is None


def _tickets(pki, service: str, ring):
    import time as clock

    from rpcsec.grpc._tickets import ContextTickets

    credentials = {"x509": pki.credentials(service, CredentialUse.BOTH)}
    return ContextTickets.default(
        credentials, ticket_keys=ring, max_lifetime=None, clock=clock.time
    )


def test_a_sealed_ticket_carries_the_delegation_to_another_replica(pki) -> None:
    """The binding's own path: seal on one replica (``issue``), open on another (``open``)."""
    from rpcsec.session import TicketKeyRing

    ring = TicketKeyRing.generate()
    client = initialize_security_context(
        pki.credentials("alice"),
        pki.id("documents"),
        DELEGATE,
        impersonation=ImpersonationLevel.DELEGATE,
        options={"delegate_to": [pki.id("storage")]},
    )
    documents = accept_security_context(pki.credentials("documents", CredentialUse.INBOUND))
    handshake(client, documents)
    ticket, *_ = _tickets(pki, "documents", ring).issue(documents)
    opened, *_ = _tickets(pki, "documents", ring).open(ticket)
    hop, storage = onward(pki, opened.peer.delegated_credentials, "storage")
    handshake(hop, storage)
    assert storage.peer.principal == pki.id("alice")
    # A service of another identity that (misconfigured) shares the ring: context-unknown.
    with pytest.raises(InvalidHandleError):
        _tickets(pki, "storage", ring).open(ticket)
