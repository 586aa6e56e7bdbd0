"""Identity bundles: ``rpcsec authority issue --bundle`` writes one, ``bundle=`` loads it, and
a service and a client authenticate from bundles with the authority (root.key) gone."""

from __future__ import annotations

import os
import pathlib
import shutil
import stat

import pytest
from helpers.pair import handshake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.cli import main
from rpcsec.sspi import (
    CredentialUse,
    NoCredentialsError,
    UntrustedRootError,
    accept_security_context,
    acquire_credentials_handle,
    initialize_security_context,
)

TD = "bundle.test"


def _issue(tmp_path: pathlib.Path, *names: str, authority: str = "pki", td: str = TD) -> None:
    pki = str(tmp_path / authority)
    assert main(["authority", "init", pki, "--trust-domain", td]) == 0
    for name in names:
        service = ["--service"] if name.startswith("svc-") else []
        out = str(tmp_path / authority / "out" / name)
        assert main(["authority", "issue", pki, name, *service, "--bundle", out]) == 0


def _bundle(tmp_path: pathlib.Path, name: str, authority: str = "pki") -> pathlib.Path:
    """The bundle, moved out of the authority, which is then deleted (root.key included)."""
    target = tmp_path / "bundles" / authority / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.move(tmp_path / authority / "out" / name, target)
    return target


def test_issue_writes_a_bundle_with_private_modes(tmp_path, capsys) -> None:
    _issue(tmp_path, "alice")
    out = tmp_path / "pki" / "out" / "alice"
    assert "bundle:" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["svid.pem", "svid_bundle.pem", "svid_key.pem"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "svid_key.pem").stat().st_mode) == 0o600
    root_key = (tmp_path / "pki" / "root.key").read_bytes()
    for path in out.iterdir():
        assert root_key not in path.read_bytes()
    # the trust bundle is the authority's root certificate, the key the leaf's own key
    assert (out / "svid_bundle.pem").read_bytes() == (tmp_path / "pki" / "root.crt").read_bytes()
    assert (out / "svid_key.pem").read_bytes() == (tmp_path / "pki/user/alice.key").read_bytes()


def test_reissue_replaces_the_bundle(tmp_path) -> None:
    _issue(tmp_path, "alice")
    out = tmp_path / "pki" / "out" / "alice"
    first = (out / "svid_key.pem").read_bytes()
    assert main(["authority", "issue", str(tmp_path / "pki"), "alice", "--bundle", str(out)]) == 0
    assert (out / "svid_key.pem").read_bytes() != first
    assert stat.S_IMODE((out / "svid_key.pem").stat().st_mode) == 0o600


def test_bundle_onto_a_file_is_refused(tmp_path, capsys) -> None:
    _issue(tmp_path)
    target = tmp_path / "a-file"
    target.write_text("x")
    code = main(["authority", "issue", str(tmp_path / "pki"), "alice", "--bundle", str(target)])
    assert code == 1
    assert "not a directory" in capsys.readouterr().err


def test_service_and_client_from_bundles_without_the_authority(tmp_path) -> None:
    _issue(tmp_path, "alice", "svc-storage")
    alice_dir, storage_dir = _bundle(tmp_path, "alice"), _bundle(tmp_path, "svc-storage")
    shutil.rmtree(tmp_path / "pki")
    alice = acquire_credentials_handle("x509", None, CredentialUse.OUTBOUND, bundle=alice_dir)
    storage = acquire_credentials_handle("x509", None, CredentialUse.INBOUND, bundle=storage_dir)
    assert alice.principal == f"spiffe://{TD}/user/alice"
    pair = handshake(
        initialize_security_context(alice, f"spiffe://{TD}/svc/svc-storage"),
        accept_security_context(storage),
    )
    assert pair.server.peer.principal == alice.principal
    assert pair.client.peer.principal == storage.principal


def test_bundle_principal_must_match(tmp_path) -> None:
    _issue(tmp_path, "alice")
    with pytest.raises(NoCredentialsError):
        acquire_credentials_handle(
            "x509",
            f"spiffe://{TD}/user/bob",
            CredentialUse.OUTBOUND,
            bundle=_bundle(tmp_path, "alice"),
        )


def test_trust_override_replaces_the_bundles_anchors(tmp_path) -> None:
    """``trust=`` next to ``bundle=`` is the only anchor: a server of the bundle's own
    authority is then untrusted."""
    _issue(tmp_path, "alice", "svc-storage")
    _issue(tmp_path, authority="other", td="other.test")
    alice = acquire_credentials_handle(
        "x509",
        None,
        CredentialUse.OUTBOUND,
        bundle=_bundle(tmp_path, "alice"),
        trust=tmp_path / "other" / "root.crt",
    )
    storage = acquire_credentials_handle(
        "x509", None, CredentialUse.INBOUND, bundle=_bundle(tmp_path, "svc-storage")
    )
    with pytest.raises(UntrustedRootError):
        handshake(
            initialize_security_context(alice, f"spiffe://{TD}/svc/svc-storage"),
            accept_security_context(storage),
        )


@pytest.mark.parametrize(
    "options",
    [
        {"cert": "x"},
        {"key": "x"},
        {"authority_dir": "x"},
        {"name": "alice"},
    ],
)
def test_bundle_does_not_mix_with_other_sources(tmp_path, options) -> None:
    with pytest.raises(ValueError):
        acquire_credentials_handle("x509", None, CredentialUse.OUTBOUND, bundle=tmp_path, **options)


def test_bundle_must_be_a_path() -> None:
    with pytest.raises(TypeError):
        acquire_credentials_handle("x509", None, CredentialUse.OUTBOUND, bundle=b"pem")


def test_missing_or_incomplete_bundle_is_no_credentials(tmp_path) -> None:
    with pytest.raises(NoCredentialsError):
        acquire_credentials_handle("x509", None, CredentialUse.OUTBOUND, bundle=tmp_path / "no")
    _issue(tmp_path, "alice", "bob")
    alice, bob = _bundle(tmp_path, "alice"), _bundle(tmp_path, "bob")
    os.unlink(alice / "svid_bundle.pem")
    with pytest.raises(NoCredentialsError):
        acquire_credentials_handle("x509", None, CredentialUse.OUTBOUND, bundle=alice)
    shutil.copy(bob / "svid_bundle.pem", alice / "svid_bundle.pem")
    (alice / "svid_key.pem").write_bytes((bob / "svid_key.pem").read_bytes())
    with pytest.raises(NoCredentialsError, match="does not belong"):
        acquire_credentials_handle("x509", None, CredentialUse.OUTBOUND, bundle=alice)


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory) -> dict[str, bytes]:
    tmp_path = tmp_path_factory.mktemp("fuzz")
    _issue(tmp_path, "alice")
    directory = _bundle(tmp_path, "alice")
    return {p.name: p.read_bytes() for p in directory.iterdir()}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.sampled_from(["svid.pem", "svid_key.pem", "svid_bundle.pem"]),
    data=st.one_of(
        st.binary(max_size=2048),
        st.binary(max_size=600).map(
            lambda b: b"-----BEGIN CERTIFICATE-----\n" + b + b"\n-----END CERTIFICATE-----\n"
        ),
        st.binary(max_size=600).map(
            lambda b: b"-----BEGIN PRIVATE KEY-----\n" + b + b"\n-----END PRIVATE KEY-----\n"
        ),
    ),
)
def test_damaged_bundle_files_are_no_credentials(tmp_path, good_bundle, which, data) -> None:
    """Whatever is in a bundle file, loading fails only with NoCredentialsError."""
    directory = tmp_path / f"b{abs(hash((which, data)))}"
    directory.mkdir()
    for name, content in good_bundle.items():
        (directory / name).write_bytes(data if name == which else content)
    with pytest.raises(NoCredentialsError):
        acquire_credentials_handle("x509", None, CredentialUse.OUTBOUND, bundle=directory)
