"""The README's two commands, in either order: `make demo` and `make test` both install the
Debian packages first, then make .venv hold every extra, and re-install an extra that is
missing even when the stamp says all is done (the first landing's newcomer bug: `make demo`
before the Debian Kerberos packages left a stamp and no python-gssapi, and `make test` never
recovered).

The fresh-clone test runs the real scripts/ensure-venv.sh through `make venv` on a `git clone`
of this repository, with a venv that sees this venv's packages except python-gssapi, pykrb5
and rpcsec itself (a path file; pip never uninstalls outside its own environment), and a stamp
already written -- exactly the broken state. It runs under CI=true (or RPCSEC_MAKEFILE_TEST=1);
pip installs from its cache, so it takes seconds, not minutes.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def _dry_run(target: str) -> list[str]:
    result = subprocess.run(
        ["make", "-n", "-C", str(REPO), target],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.splitlines()


def _index(lines: list[str], needle: str) -> int:
    for number, line in enumerate(lines):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in: {lines}")


@pytest.mark.parametrize("target", ["test", "demo"])
def test_both_commands_install_system_deps_then_check_the_venv(target: str) -> None:
    lines = _dry_run(target)
    deps = _index(lines, "scripts/system-deps.sh")
    venv = _index(lines, "scripts/ensure-venv.sh")
    run = _index(lines, "pytest" if target == "test" else "rpcsec demo")
    assert deps < venv < run


def test_ci_runs_both_orders() -> None:
    """.ci/run drives the README's commands: demo before test, and demo after test."""
    commands = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip().startswith("make ")
    ]
    assert commands[:3] == ["make demo", "make test", "make demo"]


def test_without_root_system_deps_says_what_to_run(tmp_path: pathlib.Path) -> None:
    """A user without root (or without apt-get) is told the one command, and make goes on."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")  # not root
    (bin_dir / "id").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",  # no krb5kdc in /usr/sbin on this PATH either
        "PYTHON": "/nonexistent/python",  # "no Python headers": something is always missing
    }
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "system-deps.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0
    assert "sudo bash scripts/system-deps.sh" in result.stderr
    assert "run make again" in result.stderr


def _site_packages(prefix: pathlib.Path) -> pathlib.Path:
    relative = pathlib.Path(sysconfig.get_path("purelib")).relative_to(sys.prefix)
    return prefix / relative


_HIDDEN = re.compile(r"^(gssapi|krb5|rpcsec|__editable__[._]rpcsec|_rpcsec)", re.I)


@pytest.mark.skipif(
    os.environ.get("CI", "").lower() != "true" and not os.environ.get("RPCSEC_MAKEFILE_TEST"),
    reason="makes a venv and runs pip (seconds, cached): CI=true or RPCSEC_MAKEFILE_TEST=1",
)
def test_fresh_clone_reinstalls_a_missing_extra_despite_the_stamp(tmp_path: pathlib.Path) -> None:
    try:
        import gssapi  # noqa: F401
    except ImportError:
        pytest.fail("this venv has no python-gssapi: `make venv` should have installed it")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    venv = clone / ".venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    # This venv's packages, minus the kerberos extra and rpcsec itself, through a path file.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    ours = pathlib.Path(sysconfig.get_path("purelib"))
    for entry in ours.iterdir():
        if (
            _HIDDEN.match(entry.name)
            or entry.suffix == ".pth"
            or entry.name in ("pip", "setuptools")
        ):
            continue
        if entry.name.startswith(("pip-", "setuptools-")):
            continue
        (shadow / entry.name).symlink_to(entry)
    (_site_packages(venv) / "zz_outer_packages.pth").write_text(f"{shadow}\n")
    (venv / ".installed").touch()  # the broken state: a stamp, and no gssapi
    python = venv / "bin" / "python"
    assert subprocess.run([python, "-c", "import gssapi"], capture_output=True).returncode != 0

    def make_venv() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "-C", str(clone), "venv", f"PYTHON={base}"],
            capture_output=True,
            text=True,
            timeout=600,
        )

    first = make_venv()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "installing the kerberos extra" in first.stdout
    check = subprocess.run(
        [python, "-c", "import gssapi, krb5, rpcsec; print(rpcsec.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not this checkout: python -c imports from the current directory
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().startswith(str(clone))  # the clone's rpcsec, editable
    assert (venv / ".installed").is_file()
    second = make_venv()  # idempotent: nothing left to install
    assert second.returncode == 0
    assert "installing" not in second.stdout
    shutil.rmtree(clone, ignore_errors=True)
