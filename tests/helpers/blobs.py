"""Read and rewrite ExportSecurityContext blobs field by field (the binary version 2 format),
for tests that alter one field and check what the importer does."""

from __future__ import annotations

import dataclasses
from typing import Any

from rpcsec.sspi._export import ExportedContext

__all__ = ["blob_state", "replaced"]


def blob_state(blob: bytes) -> ExportedContext:
    """The fields of a blob (``InvalidTokenError`` if it is not one)."""
    return ExportedContext.decode(blob)


def replaced(blob: bytes, *, peer: dict[str, Any] | None = None, **changes: Any) -> bytes:
    """``blob`` with some fields (and some ``peer`` fields) replaced, encoded again."""
    state = ExportedContext.decode(blob)
    if peer:
        changes["peer"] = dataclasses.replace(state.peer, **peer)
    return dataclasses.replace(state, **changes).encode()
