"""Turn the caller's AccessToken into the demo's Identity message."""

from __future__ import annotations

from protos.demo.v1 import documents_pb2 as pb
from rpcsec.security import AccessToken, current_token

__all__ = ["caller_identity"]


def caller_identity(token: AccessToken | None = None) -> pb.Identity:
    token = token or current_token()
    if token is None:
        return pb.Identity(principal="(process)")
    return pb.Identity(
        principal=token.principal,
        delegation_chain=list(token.delegation_chain),
        impersonation_level=token.impersonation_level.name,
        package=token.package,
        protection_level=token.protection_level.name,
    )
