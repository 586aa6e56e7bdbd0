"""ExportSecurityContext / ImportSecurityContext: the exporter is retired, a blob opens once per
credentials handle, and the blob parser turns every malformed input into InvalidTokenError
(issue 10 items 2 and 11)."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib

import pytest
from helpers.blobs import replaced
from helpers.pair import handshake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.sspi import (
    ContextExpiredError,
    ContextReq,
    ContextState,
    CredentialUse,
    InvalidTokenError,
    ReplayError,
    SecurityError,
    accept_security_context,
    acquire_credentials_handle,
    import_security_context,
    initialize_security_context,
)
from rpcsec.sspi._export import ExportedContext, ExportedPeer

PRIVATE = ContextReq.REPLAY_DETECT | ContextReq.CONFIDENTIALITY | ContextReq.CONNECTION


def _server_creds(user_file: pathlib.Path):
    return acquire_credentials_handle("ntlm", None, CredentialUse.INBOUND, user_file=str(user_file))


@pytest.fixture
def creds(ntlm_user_file: pathlib.Path):
    client = acquire_credentials_handle(
        "ntlm", "RPCSEC\\alice", CredentialUse.OUTBOUND, password="Alice-Pa55!"
    )
    return client, _server_creds(ntlm_user_file)


def _pair(creds, requested=PRIVATE):
    client = initialize_security_context(creds[0], "host@server", requested)
    return handshake(client, accept_security_context(creds[1]))


def test_exporter_is_retired_and_cannot_protect_messages(creds) -> None:
    pair = _pair(creds)
    blob = pair.server.export()
    assert pair.server.state is ContextState.EXPORTED
    with pytest.raises(ContextExpiredError):
        pair.server.wrap(b"x")
    with pytest.raises(ContextExpiredError):
        pair.server.sign(b"x")
    with pytest.raises(ContextExpiredError):
        pair.server.unwrap(pair.client.wrap(b"x"))
    with pytest.raises(ContextExpiredError):
        pair.server.export()
    imported = import_security_context(blob, creds[1])
    assert pair.client.unwrap(imported.wrap(b"from the importer")) == b"from the importer"
    pair.server.delete()
    assert pair.server.state is ContextState.DELETED


def test_no_two_ciphertexts_under_one_nonce(creds) -> None:
    """Before the fix the exporter and the importer both sealed sequence number N under the
    same key: XOR of the two ciphertexts was XOR of the plaintexts (plaintext recovered)."""
    pair = _pair(creds)
    pair.server.wrap(b"warm up")  # the exporter has sent something: seq 0 is used
    blob = pair.server.export()
    imported = import_security_context(blob, creds[1])
    secret = b"attack at dawn!!"
    known = b"AAAAAAAAAAAAAAAA"
    sealed_secret = imported.wrap(secret)
    assert sealed_secret[1:9] == (1).to_bytes(8, "big")  # continues after the exporter's seq
    with pytest.raises(ContextExpiredError):
        pair.server.wrap(known)  # the would-be second ciphertext under (key, seq 1)
    assert pair.client.unwrap(sealed_secret) == secret


def test_a_blob_opens_once_per_credentials_handle(creds, ntlm_user_file) -> None:
    pair = _pair(creds)
    blob = pair.server.export()
    first = import_security_context(blob, creds[1])
    with pytest.raises(ReplayError):
        import_security_context(blob, creds[1])
    # The documented way for several processes (each with its own handle): once per handle.
    other_process = _server_creds(ntlm_user_file)
    second = import_security_context(blob, other_process)
    message = pair.client.wrap(b"to either")
    assert first.unwrap(message) == b"to either"
    assert second.unwrap(message) == b"to either"
    with pytest.raises(ReplayError):
        import_security_context(blob, other_process)


def test_a_blob_that_failed_to_import_does_not_count(creds) -> None:
    pair = _pair(creds)
    blob = pair.server.export()
    bad = replaced(blob, window=100)  # not a multiple of 64: refused while building the context
    with pytest.raises(InvalidTokenError):
        import_security_context(bad, creds[1])
    assert import_security_context(blob, creds[1]).complete


@pytest.mark.parametrize(
    "blob",
    [
        b"1",
        b"[]",
        b"null",
        b'"v"',
        b"{}",
        b'{"v": 1}',
        b"[" * 5000,
        b"\xff\xfe",
        b"",
        b"RX\x02",
        b"RX\x01" + b"\x00" * 64,  # another version
        b"RX\x02\xff" + b"\x00" * 64,  # unknown flags
    ],
)
def test_malformed_blobs_raise_invalid_token(creds, blob) -> None:
    # Regression (issue 10 item 11): b"1" raised AttributeError.
    with pytest.raises(InvalidTokenError):
        import_security_context(blob, creds[1])


def test_import_misuse_is_a_type_error(creds) -> None:
    pair = _pair(creds)
    blob = pair.server.export()
    with pytest.raises(TypeError):
        import_security_context("not bytes", creds[1])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        import_security_context(blob, "not credentials")  # type: ignore[arg-type]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=256))
def test_arbitrary_bytes_never_escape_as_native_errors(creds, data) -> None:
    with contextlib.suppress(SecurityError):
        import_security_context(data, creds[1])


@pytest.fixture
def template(creds) -> bytes:
    return _pair(creds).server.export()


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_every_damaged_blob_is_a_typed_error_or_a_context(creds, template, data) -> None:
    """A valid blob truncated, extended, or with bytes overwritten anywhere (lengths, counts,
    flags, strings): a typed error or a context, never a native one."""
    blob = bytearray(template)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        kind = data.draw(st.sampled_from(["set", "cut", "insert"]), label="kind")
        at = data.draw(st.integers(0, max(len(blob) - 1, 0)), label="at")
        if kind == "set" and blob:
            blob[at] = data.draw(st.integers(0, 255), label="byte")
        elif kind == "cut":
            del blob[at:]
        else:
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
    try:
        context = import_security_context(bytes(blob), creds[1])
    except SecurityError:
        return
    assert context.complete


_NAME = st.text(max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    client=st.booleans(),
    granted=st.integers(0, (1 << 32) - 1),
    level=st.integers(0, 3),
    send_seq=st.integers(0, (1 << 64) - 1),
    highest=st.integers(-1, (1 << 64) - 1),
    window=st.integers(1, 1 << 20),
    expires=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    secret=st.binary(max_size=64),
    groups=st.lists(_NAME, max_size=4),
    chain=st.lists(_NAME, max_size=3),
    delegation=st.none() | st.binary(max_size=64),
)
def test_the_blob_format_round_trips(
    client, granted, level, send_seq, highest, window, expires, secret, groups, chain, delegation
) -> None:
    """encode then decode gives back every field exactly (the format is injective)."""
    state = ExportedContext(
        blob_id=ExportedContext.new_id(),
        package="x509",
        client=client,
        granted=granted,
        requested=granted ^ 1,
        level=level,
        outbound=secret,
        inbound=secret[::-1],
        send_seq=send_seq,
        highest=highest,
        window=window,
        expires=expires,
        peer=ExportedPeer(
            principal="spiffe://t/user/ä",
            package="x509",
            level=3 - level,
            groups=tuple(groups),
            chain=tuple(chain),
            expires=expires,
        ),
        delegation=delegation,
    )
    assert ExportedContext.decode(state.encode()) == state


def test_values_a_blob_cannot_hold_are_refused_when_encoding() -> None:
    peer = ExportedPeer("p", "ntlm", 1, (), (), None)
    good = ExportedContext(
        ExportedContext.new_id(),
        "ntlm",
        False,
        1,
        1,
        1,
        b"k" * 32,
        b"k" * 32,
        0,
        -1,
        64,
        None,
        peer,
    )
    assert ExportedContext.decode(good.encode()) == good
    for change in (
        {"granted": 1 << 32},
        {"send_seq": -1},
        {"window": 0},
        {"blob_id": b"short"},
        {"package": "p" * 300},
        {"outbound": b"k" * 2000},
    ):
        with pytest.raises(ValueError):
            dataclasses.replace(good, **change).encode()


@pytest.mark.parametrize("package", ["x509", "kerberos", "no-such-package", "NTLM"])
def test_a_blob_naming_another_package_is_refused(creds, package) -> None:
    blob = replaced(_pair(creds).server.export(), package=package)
    with pytest.raises(InvalidTokenError):
        import_security_context(blob, creds[1])


def test_an_x509_blob_does_not_open_with_ntlm_credentials(creds, tmp_path) -> None:
    from helpers.pki import make_authority

    pki = make_authority(tmp_path)
    client = initialize_security_context(pki.credentials("alice"), pki.id("documents"))
    server = accept_security_context(pki.credentials("documents", CredentialUse.INBOUND))
    blob = handshake(client, server).server.export()
    with pytest.raises(InvalidTokenError):
        import_security_context(blob, creds[1])
    assert import_security_context(blob, pki.credentials("documents", CredentialUse.INBOUND))
