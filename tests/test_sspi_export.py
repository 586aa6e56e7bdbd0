"""ExportSecurityContext / ImportSecurityContext: the exporter is retired, a blob opens once per
credentials handle, and the blob parser turns every malformed input into InvalidTokenError
(issue 10 items 2 and 11)."""

from __future__ import annotations

import contextlib
import json
import pathlib

import pytest
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
    state = json.loads(blob)
    state["window"] = 100  # not a multiple of 64: refused while building the context
    with pytest.raises(InvalidTokenError):
        import_security_context(json.dumps(state).encode(), creds[1])
    assert import_security_context(blob, creds[1]).complete


@pytest.mark.parametrize(
    "blob",
    [b"1", b"[]", b"null", b'"v"', b"{}", b'{"v": 1}', b"[" * 5000, b"\xff\xfe", b""],
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


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=256))
def test_arbitrary_bytes_never_escape_as_native_errors(creds, data) -> None:
    with contextlib.suppress(SecurityError):
        import_security_context(data, creds[1])


@pytest.fixture
def template(creds):
    return json.loads(_pair(creds).server.export())


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_every_field_replaced_by_any_json_is_typed(creds, template, data) -> None:
    """Each field (or a peer field) swapped for arbitrary JSON: a typed error or a context."""
    state = json.loads(json.dumps(template))
    target = state
    if data.draw(st.booleans(), label="in peer"):
        target = state["peer"]
    key = data.draw(st.sampled_from(sorted(target)), label="field")
    if data.draw(st.booleans(), label="delete"):
        del target[key]
    else:
        target[key] = data.draw(_JSON, label="value")
    blob = json.dumps(state).encode()
    try:
        context = import_security_context(blob, creds[1])
    except SecurityError:
        return
    assert context.complete


@pytest.mark.parametrize("package", ["x509", "kerberos", "no-such-package", "NTLM"])
def test_a_blob_naming_another_package_is_refused(creds, package) -> None:
    state = json.loads(_pair(creds).server.export())
    state["package"] = package
    with pytest.raises(InvalidTokenError):
        import_security_context(json.dumps(state).encode(), creds[1])


def test_an_x509_blob_does_not_open_with_ntlm_credentials(creds, tmp_path) -> None:
    from helpers.pki import make_authority

    pki = make_authority(tmp_path)
    client = initialize_security_context(pki.credentials("alice"), pki.id("documents"))
    server = accept_security_context(pki.credentials("documents", CredentialUse.INBOUND))
    blob = handshake(client, server).server.export()
    with pytest.raises(InvalidTokenError):
        import_security_context(blob, creds[1])
    assert import_security_context(blob, pki.credentials("documents", CredentialUse.INBOUND))
