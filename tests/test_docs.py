"""The docs say what the code does: every reason code is documented with the status the code
maps it to, the x509 key-share statement matches the OpenSSL installed, the ANONYMOUS row of
docs/packages.md matches each package's behaviour, and every relative link resolves."""

from __future__ import annotations

import contextlib
import pathlib
import re

import pytest
from helpers.pair import handshake

from rpcsec.grpc import status_for
from rpcsec.sspi import (
    ContextReq,
    CredentialUse,
    ImpersonationLevel,
    SecStatus,
    accept_security_context,
    acquire_credentials_handle,
    error_for_status,
    initialize_security_context,
)

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _reasons_table() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in (REPO / "docs" / "reasons.md").read_text().splitlines():
        match = re.match(r"^\| `([a-z-]+)` \| ([A-Z_]+) \| `(\w+)` \|", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def test_every_reason_is_documented_with_its_status() -> None:
    rows = _reasons_table()
    for status in SecStatus:
        if not status.is_error:
            continue
        error = error_for_status(status)
        assert status.value in rows, f"docs/reasons.md lacks the reason {status.value!r}"
        documented_code, documented_class = rows[status.value]
        assert documented_code == status_for(error).name, status.value
        assert documented_class == type(error).__name__, status.value
    errors = {s.value for s in SecStatus if s.is_error}
    assert set(rows) <= errors, (
        f"docs/reasons.md lists reasons the code has not: {set(rows) - errors}"
    )


def test_relative_links_resolve() -> None:
    for document in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", document.read_text()):
            assert (document.parent / target).exists(), f"{document.name} links to {target}"


def test_x509_key_share_is_what_openssl_negotiates(tmp_path: pathlib.Path) -> None:
    """docs/x509.md: no groups are set; the installed OpenSSL negotiates X25519MLKEM768 between
    two rpcsec ends (X25519 with an OpenSSL before 3.5)."""
    from OpenSSL import SSL

    from rpcsec.cli import main
    from rpcsec.packages.x509._credential import load_credential

    assert main(["authority", "init", str(tmp_path / "pki"), "--trust-domain", "doc.test"]) == 0
    for name, kind in (("alice", []), ("storage", ["--service"])):
        assert (
            main(
                [
                    "authority",
                    "issue",
                    str(tmp_path / "pki"),
                    name,
                    *kind,
                    "--bundle",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
    client = SSL.Connection(load_credential(None, {"bundle": tmp_path / "alice"}).ssl_context())
    server = SSL.Connection(load_credential(None, {"bundle": tmp_path / "storage"}).ssl_context())
    client.set_connect_state()
    server.set_accept_state()
    for _ in range(8):
        for conn in (client, server):
            with contextlib.suppress(SSL.WantReadError):
                conn.do_handshake()
        for source, sink in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                sink.bio_write(source.bio_read(1 << 16))
    version = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    major, minor = (int(part) for part in re.search(r"OpenSSL (\d+)\.(\d+)", version).groups())
    expected = "X25519MLKEM768" if (major, minor) >= (3, 5) else "X25519"
    assert client.get_group_name() == expected == server.get_group_name(), version
    text = (REPO / "docs" / "x509.md").read_text()
    assert "X25519MLKEM768" in text and "sets no groups" in text


def _anonymous_row() -> dict[str, str]:
    for line in (REPO / "docs" / "packages.md").read_text().splitlines():
        if line.startswith("| ANONYMOUS level |"):
            cells = [cell.strip() for cell in line.strip("|").split("|")][1:]
            return dict(zip(["x509", "ntlm", "kerberos", "negotiate"], cells, strict=True))
    raise AssertionError("docs/packages.md has no ANONYMOUS row")


def _anonymous_hidden(client_creds, server_creds, target: str, requested=None) -> bool:
    pair = handshake(
        initialize_security_context(
            client_creds, target, requested, impersonation=ImpersonationLevel.ANONYMOUS
        ),
        accept_security_context(server_creds),
    )
    return pair.server.peer.principal != client_creds.principal


@pytest.mark.parametrize("package", ["x509", "ntlm"])
def test_anonymous_row_matches_the_package(package: str, tmp_path: pathlib.Path) -> None:
    """The doc says which packages hide the client at ANONYMOUS; the package agrees."""
    if package == "x509":
        from rpcsec.cli import main

        main(["authority", "init", str(tmp_path / "pki"), "--trust-domain", "doc.test"])
        for name, flags in (("alice", []), ("storage", ["--service"])):
            main(
                [
                    "authority",
                    "issue",
                    str(tmp_path / "pki"),
                    name,
                    *flags,
                    "--bundle",
                    str(tmp_path / name),
                ]
            )
        alice = acquire_credentials_handle(
            "x509", None, CredentialUse.OUTBOUND, bundle=tmp_path / "alice"
        )
        storage = acquire_credentials_handle(
            "x509", None, CredentialUse.INBOUND, bundle=tmp_path / "storage"
        )
        hidden = _anonymous_hidden(alice, storage, "spiffe://doc.test/svc/storage")
    else:
        users = tmp_path / "users"
        users.write_text("RPCSEC:alice:Alice-Pa55!\n")
        alice = acquire_credentials_handle(
            "ntlm", "RPCSEC\\alice", CredentialUse.OUTBOUND, password="Alice-Pa55!"
        )
        server = acquire_credentials_handle(
            "ntlm", None, CredentialUse.INBOUND, user_file=str(users)
        )
        requested = ContextReq.default() & ~ContextReq.MUTUAL_AUTH
        hidden = _anonymous_hidden(alice, server, "storage@localhost", requested)
    cell = _anonymous_row()[package]
    says_hidden = cell.startswith("honoured")
    assert says_hidden == hidden, (
        f"docs/packages.md says ANONYMOUS is {cell!r} for {package}, the package "
        f"{'hides' if hidden else 'does not hide'} the client: update the doc"
    )


@pytest.mark.parametrize("document", ["README.md", "docs/guide.md"])
def test_identity_commands_in_the_docs_run(document: str, tmp_path, monkeypatch) -> None:
    """The first ``rpcsec authority`` shell block of the document, run as written (the
    command's own ``main``, in a scratch directory)."""
    import shlex

    from rpcsec.cli import main

    text = (REPO / document).read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "authority init" in b)
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    commands = [c for c in commands if c.startswith("rpcsec authority")]
    assert len(commands) >= 3
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command
    for bundle in (tmp_path / "bundles").iterdir():
        acquire_credentials_handle("x509", None, CredentialUse.BOTH, bundle=bundle)
