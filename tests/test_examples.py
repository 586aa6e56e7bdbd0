"""Every program in examples/ runs, as a user runs it, and does what its header says.

Identities come from examples/make_identities.sh (the CLI, bundles), and the authority's
directory, root.key included, is deleted before any service starts: services and clients run
from their bundles alone. Servers are real processes on loopback; each test waits for the
READY line. The README's code is checked against the regions of the examples it quotes.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest
from helpers.example_processes import EXAMPLES, REPO, ExampleServer, run_example

TD = "example.test"
NOTES = f"spiffe://{TD}/svc/notes"
FRONT = f"spiffe://{TD}/svc/front"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """examples/make_identities.sh, then the authority (and its root.key) removed."""
    root = tmp_path_factory.mktemp("example-pki")
    result = subprocess.run(
        ["bash", str(EXAMPLES / "make_identities.sh"), str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RPCSEC": f"{sys.executable} -m rpcsec"},
    )
    assert result.returncode == 0, result.stderr
    assert (root / "authority" / "root.key").is_file()
    shutil.rmtree(root / "authority")
    return root


def bundle(pki: pathlib.Path, name: str) -> str:
    return str(pki / "bundles" / name)


def client(pki: pathlib.Path, user: str, address: str, target: str, *args: str):
    return run_example(
        "client",
        "--bundle",
        bundle(pki, user),
        "--target",
        address,
        "--target-name",
        target,
        *args,
        cwd=pki,
    )


def test_bundles_hold_no_authority_key(pki: pathlib.Path) -> None:
    """Each bundle is exactly certificate, key (0600) and trust bundle, in a 0700 directory;
    nothing of the authority's key is anywhere in it."""
    assert not (pki / "authority").exists()
    for directory in (pki / "bundles").iterdir():
        names = sorted(p.name for p in directory.iterdir())
        assert names == ["svid.pem", "svid_bundle.pem", "svid_key.pem"], directory
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE((directory / "svid_key.pem").stat().st_mode) == 0o600
        assert b"CERTIFICATE" in (directory / "svid_bundle.pem").read_bytes()


def test_sync_service_and_client(pki: pathlib.Path) -> None:
    with ExampleServer("server", "--bundle", bundle(pki, "notes"), cwd=pki) as server:
        wrote = client(pki, "alice", server.address, NOTES, "write", "hello", "first note")
        assert wrote.returncode == 0, wrote.stderr
        assert f"hello: 'first note' (server saw spiffe://{TD}/user/alice)" in wrote.stdout
        read = client(pki, "bob", server.address, NOTES, "read", "hello")
        assert f"(server saw spiffe://{TD}/user/bob)" in read.stdout, read.stderr
        listed = client(pki, "bob", server.address, NOTES, "--protection", "integrity", "list")
        assert "hello: 'first note'" in listed.stdout, listed.stderr
        # The server proves notes, not front: the client refuses it before sending anything.
        impostor = client(pki, "alice", server.address, FRONT, "write", "x", "y")
        assert impostor.returncode == 1
        assert "refused by this client: wrong-principal" in impostor.stderr
        missing = client(pki, "alice", server.address, NOTES, "read", "nothing")
        assert missing.returncode == 1 and "refused: NOT_FOUND" in missing.stderr


def test_aio_service_and_clients(pki: pathlib.Path) -> None:
    """The grpc.aio pair, and the sync client against the aio server (same wire)."""
    with ExampleServer("aio_server", "--bundle", bundle(pki, "notes"), cwd=pki) as server:
        args = ["--bundle", bundle(pki, "alice"), "--target", server.address]
        result = run_example("aio_client", *args, "--target-name", NOTES, cwd=pki)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count(f"as spiffe://{TD}/user/alice") == 2
        assert "read a: 'one'" in result.stdout
        assert "listed a\nlisted b\n" in result.stdout
        wrong = run_example("aio_client", *args, "--target-name", FRONT, cwd=pki)
        assert wrong.returncode == 1 and "wrong-principal" in wrong.stderr
        sync = client(pki, "bob", server.address, NOTES, "read", "b")
        assert f"b: 'two' (server saw spiffe://{TD}/user/bob)" in sync.stdout, sync.stderr


def test_policy_and_security_descriptor(pki: pathlib.Path) -> None:
    with ExampleServer("policy_server", "--bundle", bundle(pki, "notes"), cwd=pki) as server:
        at = server.address
        assert client(pki, "alice", at, NOTES, "write", "secret", "mine").returncode == 0
        assert client(pki, "alice", at, NOTES, "write", "pub", "shared: hi").returncode == 0
        # descriptor: bob is staff (the policy admits him) but the note is alice's
        denied = client(pki, "bob", at, NOTES, "read", "secret")
        assert denied.returncode == 1
        assert "refused: PERMISSION_DENIED access-denied" in denied.stderr
        shared = client(pki, "bob", at, NOTES, "read", "pub")
        assert "pub: 'shared: hi'" in shared.stdout, shared.stderr
        listed = client(pki, "bob", at, NOTES, "list")
        assert "pub:" in listed.stdout and "secret:" not in listed.stdout
        overwrite = client(pki, "bob", at, NOTES, "write", "secret", "bob was here")
        assert "PERMISSION_DENIED access-denied" in overwrite.stderr
        # policy: carol is not in group staff; Write needs PRIVACY
        carol = client(pki, "carol", at, NOTES, "read", "pub")
        assert "PERMISSION_DENIED access-denied" in carol.stderr
        signed_only = client(
            pki, "alice", at, NOTES, "--protection", "integrity", "write", "a", "b"
        )
        assert "PERMISSION_DENIED access-denied" in signed_only.stderr
        still = client(pki, "alice", at, NOTES, "read", "secret")
        assert "secret: 'mine'" in still.stdout, still.stderr


def test_delegating_front(pki: pathlib.Path) -> None:
    """client -> front -> storage: the storage sees alice via the front; without delegation,
    or delegating somewhere else, the onward call is refused."""
    with ExampleServer("policy_server", "--bundle", bundle(pki, "notes"), cwd=pki) as storage:
        front_args = ["--bundle", bundle(pki, "front"), "--storage", storage.address]
        with ExampleServer("front_server", *front_args, "--storage-name", NOTES, cwd=pki) as front:
            at = front.address
            wrote = client(pki, "alice", at, FRONT, "--delegate-to", NOTES, "write", "n", "v")
            assert f"(server saw spiffe://{TD}/user/alice via {FRONT})" in wrote.stdout, (
                wrote.stderr
            )
            plain = client(pki, "alice", at, FRONT, "read", "n")
            assert plain.returncode == 1
            assert "refused: PERMISSION_DENIED delegation-required" in plain.stderr
            elsewhere = client(pki, "alice", at, FRONT, "--delegate-to", FRONT, "read", "n")
            assert elsewhere.returncode == 1
            assert "PERMISSION_DENIED delegation-policy" in elsewhere.stderr
            # bob delegates properly, and the storage's descriptor still refuses him
            bob = client(pki, "bob", at, FRONT, "--delegate-to", NOTES, "read", "n")
            assert "PERMISSION_DENIED access-denied" in bob.stderr


def test_http_binding(pki: pathlib.Path) -> None:
    with ExampleServer("http_server", "--bundle", bundle(pki, "notes"), cwd=pki) as server:
        args = ["--bundle", bundle(pki, "alice")]
        ok = run_example(
            "http_client", *args, "--target-name", NOTES, f"{server.address}/x", cwd=pki
        )
        assert ok.returncode == 0, ok.stderr
        assert f"200 from {NOTES} (signature verified: True)" in ok.stdout
        assert f"hello spiffe://{TD}/user/alice, you asked for /x" in ok.stdout
        wrong = run_example("http_client", *args, "--target-name", FRONT, server.address, cwd=pki)
        assert wrong.returncode == 1 and "refused: wrong-principal" in wrong.stderr


@pytest.mark.kerberos
def test_kerberos_instead_of_x509(kerberos_realm, tmp_path: pathlib.Path) -> None:
    """The same server.py and client.py; only the credentials arguments change."""
    realm = kerberos_realm
    env = {"KRB5_CONFIG": os.environ["KRB5_CONFIG"]}
    service = [
        "--keytab",
        realm.keytab("storage"),
        "--principal",
        realm.service_principal("storage"),
    ]
    with ExampleServer("server", *service, cwd=tmp_path, env=env) as server:
        common = ["--ccache", realm.ccache("alice"), "--target", server.address]
        wrote = run_example(
            "client",
            *common,
            "--target-name",
            realm.hostbased("storage"),
            "write",
            "k",
            "kerberos note",
            cwd=tmp_path,
            env=env,
        )
        assert wrote.returncode == 0, wrote.stderr
        assert f"(server saw {realm.principal('alice')})" in wrote.stdout
        wrong = run_example(
            "client",
            *common,
            "--target-name",
            realm.hostbased("documents"),
            "read",
            "k",
            cwd=tmp_path,
            env=env,
        )
        assert wrong.returncode == 1


@pytest.mark.kerberos
def test_kerberos_delegating_front(kerberos_realm, tmp_path: pathlib.Path) -> None:
    """The same front and storage with Kerberos: alice forwards her TGT, the storage sees her
    via the front; without --delegate the front cannot call onward."""
    realm = kerberos_realm
    env = {"KRB5_CONFIG": os.environ["KRB5_CONFIG"]}

    def service(name: str) -> list[str]:
        return ["--keytab", realm.keytab(name), "--principal", realm.service_principal(name)]

    with ExampleServer("server", *service("storage"), cwd=tmp_path, env=env) as storage:
        onward = ["--storage", storage.address, "--storage-name", realm.hostbased("storage")]
        with ExampleServer(
            "front_server", *service("documents"), *onward, cwd=tmp_path, env=env
        ) as front:
            common = ["--ccache", realm.ccache("alice"), "--target", front.address]
            common += ["--target-name", realm.hostbased("documents")]
            wrote = run_example(
                "client", *common, "--delegate", "write", "k", "v", cwd=tmp_path, env=env
            )
            assert wrote.returncode == 0, wrote.stderr
            via = realm.service_principal("documents")
            assert f"(server saw {realm.principal('alice')} via {via})" in wrote.stdout
            plain = run_example("client", *common, "read", "k", cwd=tmp_path, env=env)
            assert plain.returncode == 1
            assert "PERMISSION_DENIED delegation-required" in plain.stderr


# -- the README quotes the examples --------------------------------------------------------

_QUOTE = re.compile(r"<!-- from (examples/[\w.]+)#([\w-]+) -->\n```python\n(.*?)```", re.S)


def _region(path: pathlib.Path, name: str) -> str:
    text = path.read_text()
    match = re.search(
        rf"^[ \t]*# \[readme:{name}\]\n(.*?)^[ \t]*# \[/readme:{name}\]\n", text, re.S | re.M
    )
    assert match, f"{path.name} has no region {name}"
    return textwrap.dedent(match.group(1))


@pytest.mark.parametrize("document", ["README.md", "docs/guide.md"])
def test_doc_snippets_are_the_examples(document: str) -> None:
    """Every python block a document marks as quoted is exactly that region of the example."""
    quotes = _QUOTE.findall((REPO / document).read_text())
    assert len(quotes) >= 5
    for path, name, body in quotes:
        assert body == _region(REPO / path, name), f"{document}'s quote of {path}#{name} is stale"


def test_every_example_has_a_header_and_is_run_here() -> None:
    """No example escapes this file: each program is started by a test above."""
    source = pathlib.Path(__file__).read_text()
    index = (EXAMPLES / "README.md").read_text()
    for path in EXAMPLES.glob("*.py"):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        assert path.read_text().startswith('"""'), f"{path.name} needs a header docstring"
        assert f'"{path.stem}"' in source, f"{path.name} is not run by tests/test_examples.py"
        assert f"`{path.name}`" in index, f"{path.name} is not listed in examples/README.md"
