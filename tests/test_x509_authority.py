"""The local authority and its CLI: files, modes, certificate contents, and errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from rpcsec.cli import build_parser, main
from rpcsec.packages.x509 import GROUPS_OID, Authority, parse_spiffe_id
from rpcsec.packages.x509._extensions import certificate_groups


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def ca_dir(tmp_path):
    directory = tmp_path / "ca"
    assert main(["authority", "init", str(directory), "--trust-domain", "corp.test"]) == 0
    return directory


def test_init_creates_an_ed25519_root_with_a_private_key_file(tmp_path, capsys):
    ca_dir = tmp_path / "ca"
    assert main(["authority", "init", str(ca_dir), "--trust-domain", "corp.test"]) == 0
    assert "corp.test" in capsys.readouterr().out
    assert mode(ca_dir / "root.key") == 0o600
    root = load(ca_dir / "root.crt")
    assert isinstance(root.public_key(), ed25519.Ed25519PublicKey)
    basic = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    san = root.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://corp.test"]
    root.verify_directly_issued_by(root)


def test_issue_user_with_groups(ca_dir, capsys):
    capsys.readouterr()
    code = main(["authority", "issue", str(ca_dir), "alice", "--group", "staff", "--group", "eng"])
    assert code == 0
    assert capsys.readouterr().out.splitlines()[0] == "spiffe://corp.test/user/alice"
    assert mode(ca_dir / "user" / "alice.key") == 0o600
    cert = load(ca_dir / "user" / "alice.crt")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://corp.test/user/alice"
    ]
    assert certificate_groups(cert) == frozenset({"staff", "eng"})
    assert not cert.extensions.get_extension_for_oid(GROUPS_OID).critical
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # a user cannot act as a server
    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
    cert.verify_directly_issued_by(load(ca_dir / "root.crt"))


def test_issue_service_and_days(ca_dir):
    assert main(["authority", "issue", str(ca_dir), "documents", "--service", "--days", "2"]) == 0
    cert = load(ca_dir / "svc" / "documents.crt")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://corp.test/svc/documents"
    ]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 2 * 86400 <= lifetime.total_seconds() <= 2 * 86400 + 600
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_oid(GROUPS_OID)


def test_key_files_are_0600_even_with_a_permissive_umask_and_on_reissue(ca_dir):
    key = ca_dir / "user" / "bob.key"
    old = os.umask(0)
    try:
        assert main(["authority", "issue", str(ca_dir), "bob"]) == 0
        assert mode(key) == 0o600
        first = key.read_bytes()
        key.chmod(0o644)  # someone loosened it; re-issuing must not keep that
        assert main(["authority", "issue", str(ca_dir), "bob"]) == 0
        assert mode(key) == 0o600 and key.read_bytes() != first
    finally:
        os.umask(old)
    assert not [p for p in key.parent.iterdir() if p.name.endswith(".tmp")]


def test_cli_errors_exit_one_with_a_message(tmp_path, ca_dir, capsys):
    capsys.readouterr()
    assert main(["authority", "init", str(ca_dir), "--trust-domain", "corp.test"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["authority", "issue", str(ca_dir), "../escape"]) == 1
    assert "invalid name" in capsys.readouterr().err
    assert main(["authority", "issue", str(tmp_path / "nowhere"), "alice"]) == 1
    assert "no authority" in capsys.readouterr().err
    assert main(["authority", "init", str(tmp_path / "x"), "--trust-domain", "Bad Name"]) == 1
    assert main(["authority", "issue", str(ca_dir), "alice", "--group", " padded"]) == 1
    assert not (tmp_path / "x" / "root.key").exists()


def test_cli_usage_errors(capsys):
    for argv in ([], ["authority"], ["authority", "issue"], ["authority", "init", "d"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    capsys.readouterr()


def test_parser_has_room_for_more_commands():
    parser = build_parser()
    args = parser.parse_args(["authority", "issue", "d", "n", "--service", "--group", "g"])
    assert args.command == "authority" and args.action == "issue" and args.service
    assert args.group == ["g"]


def test_python_dash_m_rpcsec(tmp_path):
    directory = tmp_path / "ca"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rpcsec",
            "authority",
            "init",
            str(directory),
            "--trust-domain",
            "t",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (directory / "root.key").exists() and mode(directory / "root.key") == 0o600


def test_authority_api_and_locate(tmp_path):
    ca = Authority.init(tmp_path / "a", "api.test")
    assert Authority.open(tmp_path / "a").trust_domain == "api.test"
    alice = ca.issue("alice", groups=["g1"])
    docs = ca.issue("documents", service=True)
    assert ca.locate("alice") == alice
    assert ca.locate("user/alice") == alice
    assert ca.locate("spiffe://api.test/svc/documents") == docs
    assert ca.spiffe_id("documents", service=True) == docs.spiffe_id
    assert parse_spiffe_id(alice.spiffe_id).path == "/user/alice"
    for missing in ("carol", "svc/alice", "spiffe://other.test/user/alice", "admin/alice"):
        with pytest.raises(LookupError):
            ca.locate(missing)
    with pytest.raises(FileExistsError):
        Authority.init(tmp_path / "a", "api.test")
    with pytest.raises(FileNotFoundError):
        Authority.open(tmp_path / "nothing")
    with pytest.raises(ValueError):
        ca.issue("alice", days=0)
    assert "PRIVATE" not in repr(ca) and "api.test" in repr(ca)


def test_leaf_never_outlives_the_root(tmp_path):
    ca = Authority.init(tmp_path / "short", "short.test", days=1)
    cert = load(ca.issue("alice", days=365).certificate_path)
    assert cert.not_valid_after_utc <= ca.certificate.not_valid_after_utc


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://td/user/alice",
        "spiffe://a.b-c_d/x/y/z",
    ],
)
def test_valid_spiffe_ids(text):
    assert str(parse_spiffe_id(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "https://td/user/alice",
        "spiffe://TD/user/alice",
        "spiffe://td",
        "spiffe://td/",
        "spiffe://td/user//alice",
        "spiffe://td/user/../alice",
        "spiffe://td/user/alice?x=1",
        "spiffe://td:443/user/alice",
        "spiffe://user@td/user/alice",
        "spiffe://td/user/al ice",
    ],
)
def test_invalid_spiffe_ids(text):
    with pytest.raises(ValueError):
        parse_spiffe_id(text)
