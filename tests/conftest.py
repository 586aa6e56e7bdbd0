"""Shared fixtures. Servers start on 127.0.0.1 port 0; nothing waits by sleeping."""

from __future__ import annotations

import pathlib

import pytest


@pytest.fixture
def ntlm_user_file(tmp_path: pathlib.Path) -> pathlib.Path:
    """A pyspnego / gss-ntlmssp user file with alice and bob in domain RPCSEC."""
    path = tmp_path / "ntlm-users"
    path.write_text("RPCSEC:alice:Alice-Pa55!\nRPCSEC:bob:Bob-Pa55!\n")
    return path
