"""Regenerate the committed protobuf / gRPC code (``make protos``).

Why the generated code is committed: users install rpcsec from a wheel and must not need
grpcio-tools (a large native build-time tool) to import it, and a reviewer can read exactly what
runs. ``tests/test_generated_code.py`` regenerates everything into a temporary directory and
fails when a committed file differs, so the committed code never drifts from the ``.proto``.

Each job names one ``.proto``, the include root it is compiled from (which fixes the import
paths inside the output) and where each generated file is committed. The binding's handshake
gets messages only (``handshake_pb2``): its two methods are served and called through generic
handlers, so the library does not depend on the grpcio version a ``_pb2_grpc`` module pins.

Run as ``python -m rpcsec.grpc._codegen``; ``--check`` compares instead of writing.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["JOBS", "ROOT", "CodegenJob", "generate", "main", "stale_files"]

ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class CodegenJob:
    """One ``.proto`` compiled from ``include`` (relative to the repository root).

    ``outputs`` maps a generated file (path protoc writes, relative to its output directory) to
    the committed path (relative to the repository root).
    """

    proto: str
    include: str
    outputs: tuple[tuple[str, str], ...]
    grpc: bool = False


JOBS: tuple[CodegenJob, ...] = (
    CodegenJob(
        proto="protos/rpcsec/v1/handshake.proto",
        include="protos",
        outputs=(
            ("rpcsec/v1/handshake_pb2.py", "rpcsec/grpc/_proto/handshake_pb2.py"),
            ("rpcsec/v1/handshake_pb2.pyi", "rpcsec/grpc/_proto/handshake_pb2.pyi"),
        ),
    ),
    CodegenJob(
        proto="tests/protos/echo.proto",
        include="tests/protos",
        outputs=(
            ("echo_pb2.py", "tests/echo_pb2.py"),
            ("echo_pb2.pyi", "tests/echo_pb2.pyi"),
            ("echo_pb2_grpc.py", "tests/echo_pb2_grpc.py"),
        ),
        grpc=True,
    ),
    CodegenJob(
        proto="protos/demo/v1/documents.proto",
        include=".",
        outputs=(
            ("protos/demo/v1/documents_pb2.py", "protos/demo/v1/documents_pb2.py"),
            ("protos/demo/v1/documents_pb2.pyi", "protos/demo/v1/documents_pb2.pyi"),
            ("protos/demo/v1/documents_pb2_grpc.py", "protos/demo/v1/documents_pb2_grpc.py"),
        ),
        grpc=True,
    ),
)


def _protoc(job: CodegenJob, root: pathlib.Path, out: pathlib.Path) -> None:
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # a developer tool, never needed at run time
        raise SystemExit("make protos needs grpcio-tools (pip install -e '.[test]')") from exc
    import importlib.resources

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    include = root / job.include
    proto = (root / job.proto).relative_to(include)
    args = [
        "grpc_tools.protoc",
        f"-I{include}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
    ]
    if job.grpc:
        args.append(f"--grpc_python_out={out}")
    args.append(str(proto))
    # protoc resolves the .proto relative to its include path; run it from the include root.
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {job.proto}")


def generate(
    destination: pathlib.Path | None = None,
    *,
    jobs: Sequence[CodegenJob] = JOBS,
    root: pathlib.Path = ROOT,
) -> list[pathlib.Path]:
    """Compile every job whose ``.proto`` exists; write into ``destination`` (default: the
    repository itself) at the committed paths. Returns the files written."""
    destination = root if destination is None else destination
    written: list[pathlib.Path] = []
    for job in jobs:
        if not (root / job.proto).is_file():
            continue
        with tempfile.TemporaryDirectory(prefix="rpcsec-codegen-") as tmp:
            out = pathlib.Path(tmp)
            _protoc(job, root, out)
            for produced, committed in job.outputs:
                target = destination / committed
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out / produced, target)
                written.append(target)
    return written


def stale_files(*, jobs: Sequence[CodegenJob] = JOBS, root: pathlib.Path = ROOT) -> list[str]:
    """Committed files that differ from a fresh generation (or are missing)."""
    stale: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rpcsec-codegen-check-") as tmp:
        fresh_root = pathlib.Path(tmp)
        generate(fresh_root, jobs=jobs, root=root)
        for job in jobs:
            if not (root / job.proto).is_file():
                continue
            for _, committed in job.outputs:
                current = root / committed
                fresh = fresh_root / committed
                if not current.is_file() or current.read_bytes() != fresh.read_bytes():
                    stale.append(committed)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpcsec.grpc._codegen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="report stale files, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: {name}", file=sys.stderr)
        return 1 if stale else 0
    for path in generate():
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
