"""The delegated hop: a warm two-hop delegated unary call vs a warm direct one (issue 12).

``client -> front -> storage``, the front impersonating the client and calling storage on ONE
dynamically cloaked channel made at its start (``secure_channel`` without credentials), vs
``client -> storage`` directly. The baseline in the same run, paired round by round: plain
gRPC direct, and plain gRPC two hops (a front forwarding each call to storage on one
channel) -- what two hops cost with no security at all, so the issue's ratio (rpcsec two hops
/ rpcsec direct) can be read against plain two hops / plain direct, and rpcsec two hops /
plain two hops is the cost of security over the same path. Also measured, to separate the
cost of the second hop from the cost of cloaking: the same two hops with the front calling
as itself (``revert_to_self``) on the same channel; and, for the record, what the demo's front
did before: a new channel (connection, handshake, Release) per handler call. x509, PRIVACY,
loopback, warm (bound) channels, sequential calls; medians over rotated rounds.

Storage and the front each run in a child process of their own (as in ``_server``: one
interpreter per service, so neither's Python delays the other's), each serving a plain gRPC
port beside its rpcsec one; the client runs here. The children are this module:
``python -m benchmarks.delegated_hop --serve storage|front``, the spec as JSON on stdin,
``READY <port> <plain port>`` on stdout, stopped by closing stdin.

Run alone: ``python -m benchmarks.delegated_hop [--quick] [--json out.json]``; the suite
(``make bench``) runs it after the main configurations and stores it as ``delegated_hop``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

__all__ = ["TARGET_RATIO", "run_delegated_hop"]

TARGET_RATIO = 1.5  # issue 12: two-hop delegated <= 1.5x direct
STORAGE, FRONT, CLIENT = "storage", "front", "alice"
TRUST_DOMAIN = "hop.rpcsec.test"
UNARY = "/rpcsec.bench.v1.Hop/Unary"  # front: as the caller; storage: echo
AS_SELF = "/rpcsec.bench.v1.Hop/AsSelf"  # front: as itself
PER_CALL = "/rpcsec.bench.v1.Hop/PerCall"  # front: as the caller, a new channel per call
START_TIMEOUT = 60.0
PAYLOAD = b"x" * 64
BLOCK = 50  # calls of one way measured back to back before the next way's turn


def _serve(role: str, spec: dict[str, Any]) -> None:
    """A child: storage (echo, any authenticated caller) or the front."""
    import threading
    from concurrent import futures

    import grpc

    from rpcsec.grpc import SecurityInterceptor, secure_channel, set_default_credentials
    from rpcsec.security import revert_to_self
    from rpcsec.sspi import CredentialUse, ProtectionLevel, acquire_credentials_handle

    authority = spec["authority"]
    use = CredentialUse.BOTH if role == FRONT else CredentialUse.INBOUND
    credentials = acquire_credentials_handle("x509", None, use, authority_dir=authority, name=role)
    handlers: dict[str, grpc.RpcMethodHandler]
    closing: list[Any] = []
    plain_handlers: dict[str, grpc.RpcMethodHandler]
    if role == STORAGE:
        handlers = {"Unary": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}
        plain_handlers = handlers
    else:
        plain_storage = grpc.insecure_channel(spec["plain_storage"])  # one channel, forwarded
        closing.append(plain_storage)
        plain_onward = plain_storage.unary_unary(UNARY)
        plain_handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(lambda req, ctx: plain_onward(req))
        }
        set_default_credentials(credentials)  # the front's own identity, for AsSelf
        shared = secure_channel(  # made once, no credentials: dynamic cloaking
            spec["storage"],
            target_name=spec["storage_id"],
            protection=ProtectionLevel.PRIVACY,
        )
        closing.append(shared)
        onward = shared.unary_unary(UNARY)

        def as_caller(request: bytes, context: Any) -> bytes:
            return onward(request)

        def as_self(request: bytes, context: Any) -> bytes:
            with revert_to_self():
                return onward(request)

        def per_call(request: bytes, context: Any) -> bytes:
            # What the demo did before: a channel, a connection, a handshake and a Release
            # for every handler call.
            with secure_channel(
                spec["storage"],
                target_name=spec["storage_id"],
                protection=ProtectionLevel.PRIVACY,
                cloaking="static",
            ) as channel:
                return channel.unary_unary(UNARY)(request)

        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(as_caller),
            "AsSelf": grpc.unary_unary_rpc_method_handler(as_self),
            "PerCall": grpc.unary_unary_rpc_method_handler(per_call),
        }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[SecurityInterceptor(credentials)],
        options=[("grpc.so_reuseport", 0)],
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("rpcsec.bench.v1.Hop", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    plain = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)]
    )
    plain.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("rpcsec.bench.v1.Hop", plain_handlers),)
    )
    plain_port = plain.add_insecure_port("127.0.0.1:0")
    server.start()
    plain.start()
    print(f"READY {port} {plain_port}", flush=True)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    for channel in closing:
        channel.close()
    server.stop(None).wait()
    plain.stop(None).wait()


class _Child:
    """One service process; ``port`` once it printed READY."""

    def __init__(self, role: str, spec: dict[str, Any]) -> None:
        root = pathlib.Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.delegated_hop", "--serve", role],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
            env=env,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(spec) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()  # blocks until READY (or the child died)
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{role} did not start: {line!r}")
        self.port, self.plain_port = (int(part) for part in line.split()[1:3])

    def stop(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _per_call_us(call: Any, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call(PAYLOAD)
    return (time.perf_counter() - start) / calls * 1e6


# (numerator, denominator) of each ratio reported per round as well as of the medians.
_PAIRS = {
    "delegated_to_direct": ("two_hop_delegated", "direct"),
    "plain_two_hop_to_plain_direct": ("plain_two_hop", "plain_direct"),
    "delegated_to_plain_two_hop": ("two_hop_delegated", "plain_two_hop"),
    "direct_to_plain_direct": ("direct", "plain_direct"),
    "delegated_to_as_front": ("two_hop_delegated", "two_hop_as_front"),
}


def _paired_ratios(samples: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Each ratio round by round (both ways measured back to back in one round), and the
    median of those: less exposed to the machine's load drifting between rounds."""
    paired: dict[str, dict[str, Any]] = {}
    for name, (top, bottom) in _PAIRS.items():
        rounds = [a / b for a, b in zip(samples[top], samples[bottom], strict=True)]
        paired[name] = {"median": statistics.median(rounds), "rounds": rounds}
    return paired


def run_delegated_hop(*, quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    """Measure; returns medians (us per call), min/max, and the ratios."""
    import grpc

    from rpcsec.grpc import secure_channel
    from rpcsec.packages.x509 import Authority
    from rpcsec.sspi import (
        ContextReq,
        CredentialUse,
        ImpersonationLevel,
        ProtectionLevel,
        acquire_credentials_handle,
    )

    rounds = rounds or (1 if quick else 5)
    calls = 50 if quick else 400
    with tempfile.TemporaryDirectory(prefix="rpcsec-hop-") as tmp:
        authority = Authority.init(pathlib.Path(tmp) / "authority", TRUST_DOMAIN)
        authority.issue(CLIENT)
        authority.issue(STORAGE, service=True)
        authority.issue(FRONT, service=True)
        storage_id = authority.spiffe_id(STORAGE, service=True)
        front_id = authority.spiffe_id(FRONT, service=True)
        spec = {"authority": str(authority.directory), "storage_id": storage_id}
        storage = _Child(STORAGE, spec)
        front = None
        channels = []
        try:
            spec["storage"] = f"127.0.0.1:{storage.port}"
            spec["plain_storage"] = f"127.0.0.1:{storage.plain_port}"
            front = _Child(FRONT, spec)
            alice = acquire_credentials_handle(
                "x509",
                None,
                CredentialUse.OUTBOUND,
                authority_dir=str(authority.directory),
                name=CLIENT,
            )
            direct = secure_channel(
                f"127.0.0.1:{storage.port}",
                alice,
                target_name=storage_id,
                protection=ProtectionLevel.PRIVACY,
            )
            hop = secure_channel(
                f"127.0.0.1:{front.port}",
                alice,
                target_name=front_id,
                protection=ProtectionLevel.PRIVACY,
                impersonation=ImpersonationLevel.DELEGATE,
                requirements=ContextReq.default() | ContextReq.DELEGATE,
                package_options={"delegate_to": [storage_id]},
            )
            plain_direct = grpc.insecure_channel(f"127.0.0.1:{storage.plain_port}")
            plain_hop = grpc.insecure_channel(f"127.0.0.1:{front.plain_port}")
            channels = [direct, hop, plain_direct, plain_hop]
            ways = {
                "plain_direct": plain_direct.unary_unary(UNARY),
                "plain_two_hop": plain_hop.unary_unary(UNARY),
                "direct": direct.unary_unary(UNARY),
                "two_hop_delegated": hop.unary_unary(UNARY),
                "two_hop_as_front": hop.unary_unary(AS_SELF),
                "two_hop_channel_per_call": hop.unary_unary(PER_CALL),
            }
            counts = {name: calls for name in ways}
            counts["two_hop_channel_per_call"] = max(5, calls // 10)  # ~10 ms each
            for call in ways.values():  # warm: every binding made, caches filled
                for _ in range(20):
                    assert call(PAYLOAD) == PAYLOAD
            samples: dict[str, list[float]] = {name: [] for name in ways}
            names = list(ways)
            blocks = max(1, calls // BLOCK)
            for index in range(rounds):
                # One round: every way in blocks of BLOCK calls, interleaved (rotated), so a
                # change of load on the shared machine hits every way of the round alike.
                spent = dict.fromkeys(names, 0.0)
                for block in range(blocks):
                    turn = index + block
                    for name in names[turn % len(names) :] + names[: turn % len(names)]:
                        size = max(1, counts[name] // blocks)
                        spent[name] += _per_call_us(ways[name], size) * size
                for name in names:
                    samples[name].append(spent[name] / (max(1, counts[name] // blocks) * blocks))
        finally:
            for channel in channels:
                channel.close()
            if front is not None:
                front.stop()
            storage.stop()
    result: dict[str, Any] = {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v), "samples": v}
        for name, v in samples.items()
    }
    base = result["direct"]["median"]
    paired = _paired_ratios(samples)
    result["paired_ratios"] = paired
    result["ratio_delegated_to_direct"] = result["two_hop_delegated"]["median"] / base
    result["ratio_plain_two_hop_to_plain_direct"] = (
        result["plain_two_hop"]["median"] / result["plain_direct"]["median"]
    )
    result["ratio_delegated_to_plain_two_hop"] = (
        result["two_hop_delegated"]["median"] / result["plain_two_hop"]["median"]
    )
    result["ratio_direct_to_plain_direct"] = base / result["plain_direct"]["median"]
    result["ratio_as_front_to_direct"] = result["two_hop_as_front"]["median"] / base
    result["ratio_delegated_to_as_front"] = (
        result["two_hop_delegated"]["median"] / result["two_hop_as_front"]["median"]
    )
    result["ratio_channel_per_call_to_direct"] = result["two_hop_channel_per_call"]["median"] / base
    result["target_ratio"] = TARGET_RATIO
    result["target_met"] = result["ratio_delegated_to_direct"] <= TARGET_RATIO
    result["calls_per_sample"] = calls
    return result


def describe(result: dict[str, Any]) -> str:
    """One paragraph for the console."""
    return (
        f"delegated hop (x509 PRIVACY, warm, sequential): plain gRPC direct "
        f"{result['plain_direct']['median']:.0f} us, plain two hops "
        f"{result['plain_two_hop']['median']:.0f} us "
        f"({result['ratio_plain_two_hop_to_plain_direct']:.2f}x plain direct: what two hops "
        f"cost anyway); rpcsec direct "
        f"{result['direct']['median']:.0f} us, two hops as the caller "
        f"{result['two_hop_delegated']['median']:.0f} us "
        f"({result['ratio_delegated_to_direct']:.2f}x rpcsec direct; target <= "
        f"{result['target_ratio']}x: {'met' if result['target_met'] else 'MISSED'}; "
        f"{result['ratio_delegated_to_plain_two_hop']:.2f}x plain two hops), two hops "
        f"as the front {result['two_hop_as_front']['median']:.0f} us "
        f"({result['ratio_as_front_to_direct']:.2f}x); cloaking's own cost "
        f"{result['ratio_delegated_to_as_front']:.2f}x; before (a channel per call) "
        f"{result['two_hop_channel_per_call']['median']:.0f} us "
        f"({result['ratio_channel_per_call_to_direct']:.1f}x)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.delegated_hop")
    parser.add_argument("--serve", choices=[STORAGE, FRONT], help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve, json.loads(sys.stdin.readline()))
        return 0
    result = run_delegated_hop(quick=args.quick, rounds=args.rounds)
    print(describe(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
