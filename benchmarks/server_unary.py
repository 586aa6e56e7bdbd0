"""The sync server's unary behavior in process: µs per call, no network, no gRPC server.

``python -m benchmarks.server_unary [--calls N] [--rounds R]``: one real x509 context pair
(the benchmark PKI), the server side registered as a sealed ticket (so every call goes through
the ticket cache, the replay store's claim, the policy, the impersonation and the response
sealing, exactly as ``secure_server()`` runs it), then R rounds of N distinct correct unary
calls (100 B, a fresh sequence number each) into ``sync_handler``'s behavior with a stand-in
for grpc's servicer context. Timed with the thread's CPU clock (other processes on a shared
machine do not count), best and median of the rounds. The requests are made before each
round, outside the timing. This isolates rpcsec's server glue; the end-to-end ratios to plain
gRPC are ``python -m benchmarks``'s.
"""

from __future__ import annotations

import argparse
import gc
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

__all__ = ["measure"]

_METHOD = "/echo.Echo/Unary"


class _ServicerContext:
    """What the unary behavior asks of grpc's servicer context on a successful call."""

    __slots__ = ("_metadata",)

    def __init__(self, metadata: Any) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> Any:
        return self._metadata

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"call refused: {code} {details}")


def measure(calls: int = 2000, rounds: int = 7) -> dict[str, dict[str, float]]:
    """{"INTEGRITY"|"PRIVACY": {"best_us", "median_us"}} per call."""
    import grpc

    tests = pathlib.Path(__file__).resolve().parent.parent / "tests"
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    from helpers.wiretap import craft_call

    from rpcsec.grpc._binding import ChannelSecurity
    from rpcsec.grpc._server import sync_handler
    from rpcsec.grpc._server_core import ServerMethod, ServerSecurity
    from rpcsec.sspi import ContextReq, ImpersonationLevel, ProtectionLevel

    from ._configs import _x509_identity
    from ._pki import make_pki

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        identity = _x509_identity(make_pki(pathlib.Path(directory)))
        client = ChannelSecurity(
            identity.client(),
            target_name=identity.target,
            requirements=ContextReq(identity.requirements) | ContextReq.CONFIDENTIALITY,
            impersonation=ImpersonationLevel.IMPERSONATE,
            protection=ProtectionLevel.INTEGRITY,
            package_options=None,
        )
        security = ServerSecurity(identity.server())
        negotiation = client.negotiation()
        accept = security.negotiation("ipv4:127.0.0.1:1")
        message: Any = negotiation.start()
        while message is not None:
            reply, _done = accept.receive(message)
            message = negotiation.receive(reply)
        (entry,) = security.table.entries()
        if entry.ticket_id is None:
            raise AssertionError("the x509 context was not sealed into a ticket")
        behavior = sync_handler(
            security,
            ServerMethod(_METHOD, None, None),
            grpc.unary_unary_rpc_method_handler(lambda request, context: request),
        ).unary_unary
        payload = b"x" * 100
        for level in (ProtectionLevel.INTEGRITY, ProtectionLevel.PRIVACY):
            per_call = []
            for _ in range(rounds):
                requests = []
                for _ in range(calls):
                    metadata, token, _seq = craft_call(
                        negotiation.context, entry.handle, _METHOD, payload, level
                    )
                    requests.append((token, _ServicerContext(metadata)))
                gc.collect()
                gc.disable()
                try:
                    start = time.thread_time_ns()
                    for token, context in requests:
                        behavior(token, context)
                    spent = time.thread_time_ns() - start
                finally:
                    gc.enable()
                per_call.append(spent / calls / 1000)
            results[level.name] = {
                "best_us": min(per_call),
                "median_us": statistics.median(per_call),
            }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    for level, numbers in measure(args.calls, args.rounds).items():
        print(
            f"{level:<10} best {numbers['best_us']:6.2f} µs  median {numbers['median_us']:6.2f} µs"
            " per call"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
