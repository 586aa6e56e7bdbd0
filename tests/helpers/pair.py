"""Pair a client and a server context in memory (h11's ConnectionPair idea).

Package-agnostic (x509, ntlm, kerberos, negotiate alike): steps the client first with no
token, then passes each produced token to the other side until both are complete. A side may
finish (OK) together with a final token that the other side still has to consume. Every token
is recorded, so tests can replay, truncate or corrupt a chosen leg.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rpcsec.sspi import ClientContext, SecStatus, ServerContext

__all__ = ["MAX_LEGS", "ContextPair", "handshake"]

MAX_LEGS = 16


@dataclass
class ContextPair:
    """Two contexts stepped against each other; ``tokens[i]`` is leg i (client's legs even)."""

    client: ClientContext
    server: ServerContext
    tokens: list[bytes] = field(default_factory=list)

    @property
    def legs(self) -> int:
        """How many tokens crossed the wire."""
        return len(self.tokens)

    def run(self) -> ContextPair:
        """Step both sides until each is complete; raises whatever a side raised."""
        client, server = self.client, self.server
        result = client.step(None)
        token = result.token
        sender_is_client = True
        while True:
            if not token:  # None or empty: the sender has nothing more to say
                break
            self.tokens.append(token)
            if len(self.tokens) > MAX_LEGS:
                raise AssertionError("handshake did not converge")
            receiver = server if sender_is_client else client
            if receiver.complete:
                raise AssertionError("a complete context was sent another token")
            result = receiver.step(token)
            token = result.token
            sender_is_client = not sender_is_client
        if not (client.complete and server.complete):
            raise AssertionError(
                f"handshake stalled: client {client.state.value}, server {server.state.value}"
            )
        assert result.status is SecStatus.OK
        return self


def handshake(client: ClientContext, server: ServerContext) -> ContextPair:
    """Run the whole handshake in memory; returns the pair with every token exchanged."""
    return ContextPair(client, server).run()
