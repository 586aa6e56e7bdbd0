"""Sealed context tickets (rpcsec.session, RFC 5077 §4 layout with AES-256-GCM).

What matters: a ticket opens to exactly what was sealed; anything else a peer can send --
arbitrary bytes, a real ticket with any bit flipped, truncated or extended, a header moved
to another key, another service's ticket -- is refused as ``context-unknown`` (or ``expired``)
and nothing else, without a traceback carrying its bytes.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.session import MAX_TICKET_SIZE, OpenedTicket, TicketKeyRing
from rpcsec.session._ticket import MIN_TICKET_SIZE, TICKET_VERSION
from rpcsec.sspi import ContextExpiredError, InvalidHandleError, SecurityError

NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def ring() -> TicketKeyRing:
    return TicketKeyRing.generate(clock=Clock())


@pytest.fixture(scope="module")
def ticket(ring: TicketKeyRing) -> bytes:
    return ring.seal(b"some sealed state" * 4, ticket_id=b"T" * 16, expires_at=NOW + 3600)


def _refused(ring: TicketKeyRing, data: object) -> SecurityError:
    with pytest.raises((InvalidHandleError, ContextExpiredError)) as info:
        ring.open(data)  # type: ignore[arg-type]
    return info.value


def test_roundtrip_returns_exactly_what_was_sealed(ring: TicketKeyRing) -> None:
    ticket_id = os.urandom(16)
    state = os.urandom(300)
    sealed = ring.seal(state, ticket_id=ticket_id, expires_at=NOW + 60.5, issued_at=NOW - 1)
    opened = ring.open(sealed)
    assert opened == OpenedTicket(
        ticket_id=ticket_id,
        expires_at=NOW + 60.5,
        state=state,
        key_name=ring.key_names[0],
        issued_at=NOW - 1,
    )
    assert len(sealed) == MIN_TICKET_SIZE + len(state)
    assert sealed[0] == TICKET_VERSION and sealed[1:17] == ring.key_names[0]


def test_issued_at_defaults_to_the_ring_clock(ring: TicketKeyRing) -> None:
    opened = ring.open(ring.seal(b"", ticket_id=b"i" * 16, expires_at=NOW + 5))
    assert opened.issued_at == NOW and opened.state == b""


def test_state_is_encrypted_and_ivs_are_fresh(ring: TicketKeyRing) -> None:
    state = b"secret-direction-key-material-0123456789"
    one = ring.seal(state, ticket_id=b"x" * 16, expires_at=NOW + 60)
    two = ring.seal(state, ticket_id=b"x" * 16, expires_at=NOW + 60)
    assert state not in one and b"x" * 16 not in one
    assert one[17:29] != two[17:29] and one != two  # a random IV per ticket


def test_expired_ticket_is_refused_as_expired_with_the_rings_clock() -> None:
    clock = Clock()
    ring = TicketKeyRing.generate(clock=clock)
    sealed = ring.seal(b"s", ticket_id=b"e" * 16, expires_at=NOW + 10)
    clock.now = NOW + 9.999
    assert ring.open(sealed).state == b"s"
    clock.now = NOW + 10
    error = _refused(ring, sealed)
    assert isinstance(error, ContextExpiredError) and error.reason == "expired"


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2 * MIN_TICKET_SIZE + 64))
def test_arbitrary_bytes_raise_only_the_typed_refusal(ring: TicketKeyRing, data: bytes) -> None:
    error = _refused(ring, data)
    assert isinstance(error, InvalidHandleError) and error.reason == "context-unknown"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(min_size=MIN_TICKET_SIZE - 17, max_size=400))
def test_bytes_behind_a_real_header_reach_the_aead_and_are_refused(
    ring: TicketKeyRing, body: bytes
) -> None:
    data = bytes([TICKET_VERSION]) + ring.key_names[0] + body
    assert isinstance(_refused(ring, data), InvalidHandleError)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_bit_flip_anywhere_is_refused(
    ring: TicketKeyRing, ticket: bytes, position: int, bit: int
) -> None:
    position %= len(ticket)
    altered = bytearray(ticket)
    altered[position] ^= 1 << bit
    error = _refused(ring, bytes(altered))
    assert isinstance(error, InvalidHandleError)
    assert ticket.hex() not in str(error) and bytes(altered).hex() not in str(error)


def test_every_truncation_and_any_extension_is_refused(ring: TicketKeyRing, ticket: bytes) -> None:
    for length in range(len(ticket)):
        assert isinstance(_refused(ring, ticket[:length]), InvalidHandleError)
    for tail in (b"\x00", b"\x01" * 16, ticket):
        assert isinstance(_refused(ring, ticket + tail), InvalidHandleError)


def test_header_moved_to_another_key_of_the_ring_is_refused() -> None:
    # AAD = version | key_name: re-labelling a ticket for another key cannot verify.
    first = TicketKeyRing.from_secrets([os.urandom(32), os.urandom(32)], clock=Clock())
    sealed = first.seal(b"s", ticket_id=b"k" * 16, expires_at=NOW + 60)
    relabelled = sealed[:1] + first.key_names[1] + sealed[17:]
    assert isinstance(_refused(first, relabelled), InvalidHandleError)


def test_another_services_ticket_is_unknown() -> None:
    ours = TicketKeyRing.generate(clock=Clock())
    theirs = TicketKeyRing.generate(clock=Clock())
    sealed = theirs.seal(b"s", ticket_id=b"o" * 16, expires_at=NOW + 60)
    assert isinstance(_refused(ours, sealed), InvalidHandleError)


def test_wrong_version_is_refused_even_with_a_valid_rest(
    ring: TicketKeyRing, ticket: bytes
) -> None:
    for version in (0, 2, 255):
        assert isinstance(_refused(ring, bytes([version]) + ticket[1:]), InvalidHandleError)


def test_oversized_ticket_is_refused_before_any_cryptography(
    ring: TicketKeyRing, ticket: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rpcsec.session import _ticket

    calls = []
    original = _ticket.TicketKey.open
    monkeypatch.setattr(_ticket.TicketKey, "open", lambda *a: calls.append(a) or original(*a))
    huge = ticket + b"\x00" * (MAX_TICKET_SIZE + 1 - len(ticket))
    assert isinstance(_refused(ring, huge), InvalidHandleError)
    assert calls == []
    ring.open(ticket)
    assert len(calls) == 1


@pytest.mark.parametrize("value", [None, "ticket", 12, bytearray(b"x" * 80), [b"x"]])
def test_non_bytes_are_refused_as_unknown(ring: TicketKeyRing, value: object) -> None:
    assert isinstance(_refused(ring, value), InvalidHandleError)


def test_seal_refuses_caller_mistakes(ring: TicketKeyRing) -> None:
    with pytest.raises(ValueError):
        ring.seal(b"s", ticket_id=b"short", expires_at=NOW + 60)
    with pytest.raises(ValueError):
        ring.seal(b"s", ticket_id=b"t" * 16, expires_at=NOW)  # not in the future
    with pytest.raises(ValueError):
        ring.seal(b"s", ticket_id=b"t" * 16, expires_at=NOW + ring.max_ticket_lifetime + 1)
    with pytest.raises(ValueError):
        ring.seal(b"s", ticket_id=b"t" * 16, expires_at=float("nan"))
    with pytest.raises(ValueError):
        ring.seal(b"s" * MAX_TICKET_SIZE, ticket_id=b"t" * 16, expires_at=NOW + 60)
    with pytest.raises(TypeError):
        ring.seal("text", ticket_id=b"t" * 16, expires_at=NOW + 60)  # type: ignore[arg-type]


def test_largest_state_fits_the_bound(ring: TicketKeyRing) -> None:
    state = os.urandom(MAX_TICKET_SIZE - MIN_TICKET_SIZE)
    sealed = ring.seal(state, ticket_id=b"L" * 16, expires_at=NOW + 60)
    assert len(sealed) == MAX_TICKET_SIZE and ring.open(sealed).state == state


def test_an_authentic_ticket_with_a_short_plaintext_is_refused_by_the_size_bound(
    ring: TicketKeyRing,
) -> None:
    # Only a sealer bug could make one (seal() always writes the fixed fields). The size bound
    # refuses it before any cryptography, and padding it up to the bound breaks the tag.
    key = ring._snap.keys[0]
    header = bytes([TICKET_VERSION]) + key.name
    iv = os.urandom(12)
    sealed = header + iv + key._aead.encrypt(iv, b"y" * 20, header)
    assert len(sealed) < MIN_TICKET_SIZE
    assert isinstance(_refused(ring, sealed), InvalidHandleError)
    padded = sealed + b"\x00" * (MIN_TICKET_SIZE - len(sealed))
    assert isinstance(_refused(ring, padded), InvalidHandleError)


def test_expiry_in_the_clear_cannot_be_extended(ring: TicketKeyRing) -> None:
    # The times are inside the ciphertext; rewriting where they would sit fails the tag.
    sealed = ring.seal(b"s", ticket_id=b"t" * 16, expires_at=NOW + 1)
    offset = 1 + 16 + 12 + 16 + 8
    forged = sealed[:offset] + struct.pack("!Q", 2**63) + sealed[offset + 8 :]
    assert isinstance(_refused(ring, forged), InvalidHandleError)


# -- issue / open with real contexts (rpcsec.grpc._tickets) ----------------------------------


def _issued(tmp_path):
    import time

    from helpers.pair import handshake
    from helpers.pki import make_authority

    from rpcsec.grpc._tickets import ContextTickets
    from rpcsec.sspi import CredentialUse, accept_security_context, initialize_security_context

    pki = make_authority(tmp_path)
    server_creds = pki.credentials("documents", CredentialUse.INBOUND)
    client = initialize_security_context(pki.credentials("alice"), pki.id("documents"))
    pair = handshake(client, accept_security_context(server_creds))
    ring = TicketKeyRing.generate()
    tickets = ContextTickets.default(
        {"x509": server_creds}, ticket_keys=ring, max_lifetime=None, clock=time.time
    )
    replica = ContextTickets.default(
        {"x509": pki.credentials("documents", CredentialUse.INBOUND)},
        ticket_keys=ring,
        max_lifetime=None,
        clock=time.time,
    )
    caller = pair.server.peer
    issued = tickets.issue(pair.server)
    return pki, pair, caller, issued, replica


def test_an_issued_ticket_is_small_and_the_context_continues_live(tmp_path) -> None:
    """Regression guard for the first call and the idle context: an x509 ticket is the
    binary export sealed (263 B here; it was 540 B as JSON), and the process that issued it
    serves the live context moved over, with the caller's own token (no re-import)."""
    pki, pair, caller, issued, _replica = _issued(tmp_path)
    ticket, continued, ticket_id, expires_at, issued_at = issued
    assert len(ticket) < 300
    assert len(ticket_id) == 16 and expires_at > issued_at
    assert continued.peer is caller
    assert continued.peer.principal == pki.id("alice")
    message = pair.client.wrap(b"first call", encrypt=False)
    assert continued.unwrap(message) == b"first call"


def test_another_replica_opens_the_issued_ticket_to_the_same_context(tmp_path) -> None:
    _pki, pair, _caller, issued, replica = _issued(tmp_path)
    ticket, continued, ticket_id, expires_at, _issued_at = issued
    opened, opened_id, opened_expires, _ = replica.open(ticket)
    assert opened_id == ticket_id and opened_expires == pytest.approx(expires_at, abs=0.001)
    assert opened.peer.principal == continued.peer.principal
    assert opened.peer.groups == continued.peer.groups
    assert opened.attributes == continued.attributes
    message = pair.client.wrap(b"to any replica", encrypt=False)
    assert opened.unwrap(message) == continued.unwrap(message) == b"to any replica"
