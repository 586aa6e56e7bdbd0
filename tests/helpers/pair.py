"""Pair a client and a server context in memory (h11's ConnectionPair idea).

Package-agnostic: steps the client first with no token, then passes each produced token to
the other side until both are complete. A side may finish (OK) with a final token that the
other side still has to consume.
"""

from __future__ import annotations

from dataclasses import dataclass

from rpcsec.sspi import ClientContext, SecStatus, ServerContext

__all__ = ["ContextPair", "handshake"]

MAX_LEGS = 16


@dataclass
class ContextPair:
    client: ClientContext
    server: ServerContext
    legs: int = 0


def handshake(client: ClientContext, server: ServerContext) -> ContextPair:
    """Run the whole handshake; returns the pair with the number of tokens exchanged."""
    legs = 0
    result = client.step(None)
    token = result.token
    sender_is_client = True
    while token is not None:
        legs += 1
        if legs > MAX_LEGS:
            raise AssertionError("handshake did not converge")
        receiver = server if sender_is_client else client
        result = receiver.step(token)
        token = result.token
        sender_is_client = not sender_is_client
    assert client.state.value == "established", client.state
    assert server.state.value == "established", server.state
    assert result.status is SecStatus.OK
    return ContextPair(client, server, legs)
