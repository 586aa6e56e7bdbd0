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


# -- scripts/ensure-venv.sh's decisions, with a recording stand-in for the venv's python --------

_FAKE_PYTHON = """#!/bin/sh
# Stands in for .venv/bin/python: logs every call; imports succeed unless named in $MISSING.
echo "$*" >> "$CALLS"
case "$*" in
  *"import gssapi"*) case " $MISSING " in *" gssapi "*) exit 1;; esac ;;
  *"import importlib"*) case " $MISSING " in *" core "*) exit 1;; esac ;;
  *"-m pip install"*"[kerberos"*) [ -n "$FIXED_BY_PIP" ] && : > "$FIXED_BY_PIP" ;;
esac
exit 0
"""


def _ensure(tmp_path: pathlib.Path, *, missing: str, krb5_config: bool, stamp: bool):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    python = venv / "bin" / "python"
    python.write_text(_FAKE_PYTHON)
    python.chmod(0o755)
    (venv / ".installed").unlink(missing_ok=True)
    if stamp:
        (venv / ".installed").touch()
        os.utime(venv / ".installed", (2**31, 2**31))  # newer than pyproject.toml
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    for tool in ("rm", "touch", "dirname"):
        target = shutil.which(tool)
        assert target
        if not (tools / tool).exists():
            (tools / tool).symlink_to(target)
    if krb5_config:
        (tools / "krb5-config").write_text("#!/bin/sh\nexit 0\n")
        (tools / "krb5-config").chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    result = subprocess.run(
        [shutil.which("bash"), str(REPO / "scripts" / "ensure-venv.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(tools), "VENV": str(venv), "CALLS": str(calls), "MISSING": missing},
    )
    return result, calls.read_text().splitlines(), (venv / ".installed").exists()


def test_stamp_is_not_trusted_when_the_kerberos_extra_is_missing(tmp_path) -> None:
    result, calls, stamped = _ensure(tmp_path, missing="gssapi", krb5_config=True, stamp=True)
    assert result.returncode == 0, result.stderr
    assert any("-m pip install -q -e .[kerberos,interop]" in call for call in calls)
    assert not any("[test,bench" in call for call in calls)  # the core was fine
    assert not stamped  # gssapi still does not import (the stand-in says so): no stamp


def test_without_libkrb5_the_extra_is_not_tried_and_the_user_is_told(tmp_path) -> None:
    result, calls, stamped = _ensure(tmp_path, missing="gssapi", krb5_config=False, stamp=True)
    assert result.returncode == 0
    assert "needs libkrb5-dev" in result.stdout and "run make again" in result.stdout
    assert not any("pip install" in call for call in calls)
    assert not stamped


def test_a_broken_core_is_reinstalled(tmp_path) -> None:
    result, calls, stamped = _ensure(tmp_path, missing="core", krb5_config=True, stamp=True)
    assert any("-m pip install -q -e .[test,bench,http]" in call for call in calls)
    assert result.returncode == 1  # still broken after the install: say so, fail
    assert "cannot import rpcsec" in result.stderr
    assert not stamped


def test_everything_importable_is_a_no_op_that_stamps(tmp_path) -> None:
    result, calls, stamped = _ensure(tmp_path, missing="", krb5_config=True, stamp=True)
    assert result.returncode == 0 and result.stdout == ""
    assert not any("pip" in call for call in calls)
    assert stamped
    result, calls, stamped = _ensure(tmp_path, missing="", krb5_config=True, stamp=False)
    assert any("[test,bench,http]" in call for call in calls)  # no stamp: install once, then stamp
    assert stamped
