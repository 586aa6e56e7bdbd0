"""``python -m benchmarks.stream``: only the 64 MiB server stream, paired, several rounds.

The suite's ``stream_MBps`` workload (same service, same server process, same allocator
settings, ``--streams`` streams per configuration per round taken in turn with the other
configurations', the round's sample their median), without the other workloads around it. Also
the CPU each MiB cost both ends -- this whole client process (gRPC's threads included) and the
server's worker threads -- which a busy machine disturbs far less than MB/s. For issue #14's
"PRIVACY 64 MiB stream >= 0.80x plain": the report is each configuration's median and its ratio
to plain gRPC's median in the same run. Rows of the decomposition (``--only
ladder_plain,ladder_noop_x509_privacy,ladder_x509_privacy``: rpcsec with its AEAD calls a no-op,
each with its client in a process of its own) split what is left between rpcsec's glue and the
AES-GCM passes; their client CPU is not counted here (another process).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import sys
import tempfile
import time

from ._env import ensure_allocator_settings
from ._workloads import Budget, MiB, stream_mbps

__all__ = ["main"]

DEFAULT = "plain,x509_privacy,kerberos_privacy"


def main(argv: list[str] | None = None) -> int:
    ensure_allocator_settings()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stream", description=__doc__)
    parser.add_argument("--only", default=DEFAULT, help=f"configurations (default {DEFAULT})")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=Budget.full().interleave_stream)
    parser.add_argument("--mib", type=int, default=64, help="stream size (1 MiB messages)")
    parser.add_argument("--default-allocator", action="store_true")
    args = parser.parse_args(argv)
    names = [name for name in args.only.split(",") if name]
    budget = dataclasses.replace(Budget.full(), stream_bytes=args.mib * MiB)
    from ._configs import start_lab

    with tempfile.TemporaryDirectory(prefix="rpcsec-stream-") as tmp:
        lab = start_lab(
            pathlib.Path(tmp),
            kerberos=any(name.startswith("kerberos") for name in names),
            alternatives=False,
            decomposition=any(name.startswith("ladder_") for name in names),
        )
        try:
            configs = [c for c in lab.configs if c.name in names]
            missing = set(names) - {c.name for c in configs}
            if missing:
                print(f"unknown or unavailable configurations: {sorted(missing)}", file=sys.stderr)
                return 2
            for config in configs:
                if config.remote is not None:
                    config.remote.warm()  # with the AEAD no-op: checks the seam held
            rounds: dict[str, list[float]] = {c.name: [] for c in configs}
            cpu: dict[str, list[tuple[float, float]]] = {c.name: [] for c in configs}
            for round_index in range(args.rounds):
                shift = round_index % len(configs)
                order = configs[shift:] + configs[:shift]
                parts: dict[str, list[float]] = {c.name: [] for c in configs}
                for _ in range(args.streams):
                    for config in order:
                        client, server = time.process_time(), config.server_cpu()
                        if config.remote is not None:
                            value = config.remote.run("stream_MBps", budget, args.streams)
                        else:
                            value = stream_mbps(config, budget, args.streams)
                        parts[config.name].append(value)
                        mib = args.mib + 1  # the warm-up message too
                        local = config.remote is None
                        cpu[config.name].append(
                            (
                                (time.process_time() - client) / mib * 1e6 if local else 0.0,
                                (config.server_cpu() - server) / mib * 1e6,
                            )
                        )
                for config in order:
                    rounds[config.name].append(statistics.median(parts[config.name]))
                    print(
                        f"round {round_index + 1}/{args.rounds} {config.name:18s} "
                        + " ".join(f"{v:6,.0f}" for v in parts[config.name])
                        + f"  -> {rounds[config.name][-1]:6,.0f} MB/s",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            lab.stop()
    base = statistics.median(rounds["plain"]) if "plain" in rounds else None
    print(f"{'':18s} {'MB/s':>8s} {'rounds':>22s} {'ratio':>7s}  CPU per MiB: client, server")
    for name, values in rounds.items():
        median = statistics.median(values)
        ratio = f"{median / base:.2f}x" if base else "-"
        spread = "[" + ", ".join(f"{v:,.0f}" for v in values) + "]"
        client = statistics.median(c for c, _ in cpu[name])
        server = statistics.median(s for _, s in cpu[name])
        cost = f"{client:5.0f} µs, {server:5.0f} µs"
        print(f"{name:18s} {median:8,.0f} {spread:>22s} {ratio:>7s}  {cost}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
