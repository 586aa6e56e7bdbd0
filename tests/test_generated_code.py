"""The committed protobuf / gRPC code is exactly what ``make protos`` generates.

Why generated code is committed at all: users install rpcsec without grpcio-tools (a large
native tool needed only to compile ``.proto`` files), and reviewers read exactly what runs.
This test regenerates everything into a temporary directory with the installed grpcio-tools
and fails on any difference, so the committed code cannot drift from its ``.proto``.
"""

from __future__ import annotations

import pathlib

import pytest

from rpcsec.grpc import _codegen

pytest.importorskip("grpc_tools")


def test_every_job_names_an_existing_proto() -> None:
    handshake = _codegen.ROOT / "protos/rpcsec/v1/handshake.proto"
    assert handshake.is_file()
    assert any(job.proto == "protos/rpcsec/v1/handshake.proto" for job in _codegen.JOBS)


def test_committed_code_matches_a_fresh_generation(tmp_path: pathlib.Path) -> None:
    written = _codegen.generate(tmp_path)
    assert written, "nothing was generated"
    stale = []
    for fresh in written:
        committed = _codegen.ROOT / fresh.relative_to(tmp_path)
        if not committed.is_file() or committed.read_bytes() != fresh.read_bytes():
            stale.append(str(committed.relative_to(_codegen.ROOT)))
    assert not stale, f"stale generated code, run `make protos`: {stale}"


def test_stale_file_is_reported(tmp_path: pathlib.Path) -> None:
    # A copy of the repository's protos with one edited file must be reported as stale.
    root = tmp_path / "repo"
    job = next(j for j in _codegen.JOBS if j.proto == "protos/rpcsec/v1/handshake.proto")
    (root / job.proto).parent.mkdir(parents=True)
    (root / job.proto).write_bytes((_codegen.ROOT / job.proto).read_bytes())
    _codegen.generate(root, jobs=[job], root=root)
    assert _codegen.stale_files(jobs=[job], root=root) == []
    committed = root / job.outputs[0][1]
    committed.write_text(committed.read_text() + "# edited\n")
    assert _codegen.stale_files(jobs=[job], root=root) == [job.outputs[0][1]]


def test_handshake_module_imports_without_grpc_tools() -> None:
    from rpcsec.grpc._proto import handshake_pb2

    source = pathlib.Path(handshake_pb2.__file__).read_text()
    assert "grpc_tools" not in source
    assert handshake_pb2.DESCRIPTOR.name == "rpcsec/v1/handshake.proto"
