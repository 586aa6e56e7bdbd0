"""The newcomer's first command: ``rpcsec demo`` tells the whole story and exits 0.

Runs the real thing: services as child processes on loopback, the client, the tampering proxy.
The demo checks each step's outcome itself (delegated read, streaming, ACL refusal,
IMPERSONATE-level refusal, tampered call) and exits non-zero if any step misbehaves.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run_demo(package: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rpcsec", "demo", "--package", package],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.mark.parametrize(
    ("package", "expected"),
    [
        ("x509", "via spiffe://demo.rpcsec/svc/documents"),
        ("ntlm", "refused: PERMISSION_DENIED delegation-required"),
    ],
)
def test_demo_story(package: str, expected: str) -> None:
    result = _run_demo(package)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Demo complete" in result.stdout
    assert expected in result.stdout
    assert "UNAUTHENTICATED message-altered" in result.stdout
    assert "refused: UNAUTHENTICATED context-unknown" in result.stdout  # no rpcsec at all
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.kerberos
@pytest.mark.parametrize("package", ["kerberos", "negotiate"])
def test_demo_story_over_kerberos(package: str, kerberos_realm) -> None:
    """Same story, only the package name changes (seed, "SDK Examples")."""
    result = _run_demo(package)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "via documents/localhost@KRBTEST.COM" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
