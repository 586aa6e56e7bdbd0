"""``python -m benchmarks``: rpcsec side by side with what users would pick instead.

Loopback only. The clients run in this process, every server in one child process of its own
(``_server``, started once per run): in one process client and server would share a GIL, and
every microsecond either side spends would also delay the other, which no real deployment
does. Every configuration (``_configs``) runs every workload
(``_workloads``) once per round; each round visits the configurations in a rotated order and
each workload's samples are taken back to back across configurations, so drift of the machine
hits all of them alike. Results: median, min and max over the rounds, and each configuration's
ratio to plain gRPC and to gRPC TLS, written to ``benchmarks/results/latest.json`` and rendered
into ``docs/BENCHMARKS.md`` with a chart (``docs/benchmarks.png``).

In the same rounds, the decomposition (``_decomposition``): plain gRPC to rpcsec step by step,
each row a configuration with its client in a process of its own, stored as
``decomposition`` with its paired steps and the server glue timed in place
(``--no-decomposition`` skips it). After them, ``delegated_hop``: a warm two-hop delegated
call (client -> front -> storage, one cloaked channel at the front) vs a warm direct call,
stored as ``delegated_hop``.

``--quick`` (CI) runs every configuration briefly and fails only if one of them errors -- never
on a timing -- and writes nothing unless asked to (``--json``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time
import traceback
from typing import Any

from ._env import ensure_allocator_settings, load_average, machine_info
from ._targets import evaluate_targets
from ._workloads import WORKLOADS, Budget, Workload

__all__ = ["main", "run_suite"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "latest.json"
DEFAULT_DOC = ROOT / "docs" / "BENCHMARKS.md"
DEFAULT_CHART = ROOT / "docs" / "benchmarks.png"
BASELINE_KEYS = {"plain": "ratio_to_plain", "grpc_tls": "ratio_to_grpc_tls"}
MEMORY = Workload(
    "memory_per_context_bytes",
    "server memory per idle context",
    "B",
    False,
    lambda config, budget, slices: None,
    rpcsec_only=True,
)


class Progress:
    """One line per sample on stderr, with the time spent so far."""

    def __init__(self, total: int, stream: Any = sys.stderr) -> None:
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self.stream = stream

    def report(self, text: str) -> None:
        self.done += 1
        elapsed = int(time.monotonic() - self.start)
        print(
            f"[{self.done:3d}/{self.total}] {elapsed // 60:2d}:{elapsed % 60:02d}  {text}",
            file=self.stream,
            flush=True,
        )

    def note(self, text: str) -> None:
        print(f"          {text}", file=self.stream, flush=True)


def _short(key: str) -> str:
    """``unary_latency_us`` -> ``unary_latency`` (the ratio tables' keys)."""
    for unit in ("_per_call_us", "_us", "_ms", "_cps", "_MBps", "_per_core_s", "_per_s", "_bytes"):
        if key.endswith(unit):
            return key[: -len(unit)]
    return key


def _summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": samples,
    }


def _format(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f} {unit}"
    if value >= 100:
        return f"{value:.0f} {unit}"
    return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}"


def run_suite(
    budget: Budget,
    *,
    kerberos: bool = True,
    alternatives: bool = True,
    decomposition: bool = True,
    only: set[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run every workload on every configuration; returns the results document."""
    from ._configs import start_lab
    from ._memory import probe

    machine = machine_info()
    samples: dict[str, dict[str, list[float]]] = {}
    errors: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="rpcsec-bench-") as tmp:
        if only is not None:
            decomposition = decomposition and any(name.startswith("ladder_") for name in only)
        lab = start_lab(
            pathlib.Path(tmp),
            kerberos=kerberos,
            alternatives=alternatives,
            decomposition=decomposition,
        )
        try:
            configs = [c for c in lab.configs if only is None or c.name in only]
            errors.update(lab.errors)
            memory_packages = sorted({c.identity.package for c in configs if c.identity})
            per_round = sum(1 for w in WORKLOADS for c in configs if _runs(c, w))
            if progress is None:
                progress = Progress(per_round * budget.rounds + len(memory_packages))
            for note in lab.notes:
                progress.note(note)
            for config in configs:
                samples[config.name] = {}
                try:
                    if config.remote is not None:
                        config.remote.warm()
                    else:
                        config.channel.unary_unary("/rpcsec.bench.v1.Echo/Unary")(b"warm")
                except Exception as exc:
                    errors.setdefault(config.name, {})["setup"] = _describe(exc)
            for config in configs:  # each server's worker threads found (their CPU is >0)
                if "setup" not in errors.get(config.name, {}) and config.server_cpu() <= 0:
                    errors.setdefault(config.name, {})["setup"] = (
                        "no server CPU measured after a call (pool threads not found)"
                    )
            style = lab.servers.command("style")["rpcsec_style"]
            progress.note(f"rpcsec server: secure_server(), handlers by {style}")
            for round_index in range(budget.rounds):
                shift = round_index % len(configs)
                order = configs[shift:] + configs[:shift]
                for workload in WORKLOADS:
                    active = [
                        c
                        for c in order
                        if _runs(c, workload) and workload.key not in errors.get(c.name, {})
                    ]
                    slices = workload.slices(budget)
                    parts: dict[str, list[Any]] = {c.name: [] for c in active}
                    for _ in range(slices):
                        for config in active:
                            if workload.key in errors.get(config.name, {}):
                                continue
                            try:
                                parts[config.name].append(_run(workload, config, budget, slices))
                            except Exception as exc:
                                errors.setdefault(config.name, {})[workload.key] = _describe(exc)
                    label = f"round {round_index + 1}/{budget.rounds}  {workload.key:28s}"
                    for config in order:
                        if not _runs(config, workload):
                            continue
                        failure = errors.get(config.name, {}).get(workload.key)
                        if failure is not None:
                            progress.report(f"{label} {config.name:18s} FAILED: {failure}")
                            continue
                        value = workload.combine(config, parts[config.name])
                        if value is not None:
                            samples[config.name].setdefault(workload.key, []).append(value)
                        progress.report(
                            f"{label} {config.name:18s} {_format(value, workload.unit)}"
                        )
            glue = None
            if lab.decomposition is not None:
                try:
                    glue = lab.decomposition.measure_glue(budget.latency_calls)
                    progress.note(f"server glue timed in place ({budget.latency_calls} calls)")
                except Exception as exc:
                    errors.setdefault("decomposition", {})["glue_timing"] = _describe(exc)
            memory: dict[str, dict[str, Any]] = {}
            for package in memory_packages:
                count = budget.memory_contexts if package == "x509" else budget.memory_contexts // 5
                count = max(count, 20)
                try:
                    memory[package] = probe(lab.identities[package].to_json(), count)
                except Exception as exc:
                    for config in configs:
                        if config.identity and config.identity.package == package:
                            errors.setdefault(config.name, {})[MEMORY.key] = _describe(exc)
                    progress.report(f"memory {package}: FAILED {exc}")
                    continue
                per = memory[package]["bytes_per_context"]
                progress.report(
                    f"memory    {package:8s} {per:,.0f} B per idle context "
                    f"({count:,} contexts established)"
                )
            for config in configs:
                if config.identity and config.identity.package in memory:
                    per = memory[config.identity.package]["bytes_per_context"]
                    samples[config.name][MEMORY.key] = [per]
            labels = {c.name: c.label for c in configs}
            apart = {c.name: c.same_topology for c in configs if c.alternative}
            ladder = [c.name for c in configs if c.decomposition]
            shape = lab.decomposition.shape if lab.decomposition is not None else None
            notes = list(lab.notes)
            memory_counts = {p: m["contexts"] for p, m in memory.items()}
        finally:
            lab.stop()
    machine["load_average_after"] = load_average()
    document = _document(machine, samples, labels, errors, budget, notes, memory_counts)
    _set_apart(document, apart)
    _set_decomposition(document, ladder, style, shape)
    if glue is not None and "decomposition" in document:
        document["decomposition"]["glue_timing"] = glue
    document["targets"] = evaluate_targets(document)
    return document


def _runs(config: Any, workload: Workload) -> bool:
    """Whether ``config`` runs ``workload`` (rpcsec-only ones, a configuration's own list)."""
    if config.workloads is not None and workload.key not in config.workloads:
        return False
    return bool(config.rpcsec or not workload.rpcsec_only)


def _run(workload: Workload, config: Any, budget: Budget, slices: int) -> Any:
    """One slice of ``workload`` on ``config``: in its client process if it has one (derived
    workloads, which read what the latency run left here, always run here)."""
    from ._decomposition import REMOTE_WORKLOADS

    if config.remote is not None and workload.key in REMOTE_WORKLOADS:
        return config.remote.run(workload.key, budget, slices)
    return workload.run(config, budget, slices)


def _set_decomposition(
    document: dict[str, Any], names: list[str], style: str | None, shape: Any
) -> None:
    """Move the decomposition's rows (``_decomposition``) to ``decomposition``, and add its
    paired steps."""
    from ._decomposition import summarize

    rows = {name: document["configs"].pop(name) for name in names if name in document["configs"]}
    if rows:
        document["decomposition"] = {"rows": rows, "rpcsec_style": style, "shape": shape}
        summarize(document)


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _document(
    machine: dict[str, Any],
    samples: dict[str, dict[str, list[float]]],
    labels: dict[str, str],
    errors: dict[str, dict[str, str]],
    budget: Budget,
    notes: list[str],
    memory_counts: dict[str, int],
) -> dict[str, Any]:
    workloads = [*WORKLOADS, MEMORY]
    configs: dict[str, Any] = {}
    for name, by_key in samples.items():
        entry: dict[str, Any] = {"label": labels[name]}
        for workload in workloads:
            values = by_key.get(workload.key)
            entry[workload.key] = _summary(values) if values else None
        configs[name] = entry
    for entry in configs.values():
        for baseline, ratio_key in BASELINE_KEYS.items():
            base = configs.get(baseline)
            ratios: dict[str, float | None] = {}
            for workload in workloads:
                mine = entry.get(workload.key)
                theirs = base.get(workload.key) if base else None
                ratios[_short(workload.key)] = (
                    mine["median"] / theirs["median"]
                    if mine and theirs and theirs["median"]
                    else None
                )
            entry[ratio_key] = ratios
    return {
        "machine": machine,
        "budget": budget.__dict__,
        "workloads": {
            w.key: {"title": w.title, "unit": w.unit, "higher_is_better": w.higher_is_better}
            for w in workloads
        },
        "configs": configs,
        "memory_contexts_measured": memory_counts,
        "errors": errors,
        "notes": notes,
    }


def _set_apart(document: dict[str, Any], apart: dict[str, str | None]) -> None:
    """Move the alternatives (``_alternatives``) from ``configs`` to ``alternatives``: measured
    in the same rounds, not held to rpcsec's targets. One held against the plain gRPC of its
    own topology also gets ``ratio_to_same_topology``."""
    configs = document["configs"]
    moved: dict[str, Any] = {}
    for name, same in apart.items():
        if name not in configs:
            continue
        entry = moved[name] = configs.pop(name)
        base = configs.get(same or "") or moved.get(same or "")
        if base is not None:
            entry["ratio_to_same_topology"] = {
                _short(key): (
                    entry[key]["median"] / base[key]["median"]
                    if entry.get(key) and base.get(key) and base[key]["median"]
                    else None
                )
                for key in document["workloads"]
            }
    document["alternatives"] = moved


def main(argv: list[str] | None = None) -> int:
    ensure_allocator_settings()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="every configuration, briefly (CI)")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, quick 1)")
    parser.add_argument(
        "--only",
        help="comma-separated configurations (plain,grpc_tls,...,ladder_plain,...,delegated_hop)",
    )
    parser.add_argument("--no-kerberos", action="store_true", help="do not start a KDC")
    parser.add_argument(
        "--no-decomposition",
        action="store_true",
        help="skip the ladder_* rows (plain gRPC to rpcsec, step by step)",
    )
    parser.add_argument(
        "--no-alternatives",
        action="store_true",
        help="skip mTLS + JWT, Envoy sidecars and the replicas behind Envoy",
    )
    parser.add_argument(
        "--json", type=pathlib.Path, help=f"results file (full run: {DEFAULT_JSON})"
    )
    parser.add_argument("--no-write", action="store_true", help="write no results, docs or chart")
    parser.add_argument(
        "--render",
        type=pathlib.Path,
        metavar="JSON",
        help="measure nothing: render docs/BENCHMARKS.md and the chart from a results file",
    )
    parser.add_argument(
        "--default-allocator", action="store_true", help="keep glibc's default thresholds"
    )
    args = parser.parse_args(argv)
    if args.render:
        from ._report import write_outputs

        document = json.loads(args.render.read_text())
        from ._decomposition import summarize

        summarize(document)  # the steps, and
        document["targets"] = evaluate_targets(document)  # the targets, as they are now
        write_outputs(document, None, DEFAULT_DOC, DEFAULT_CHART)
        print(f"wrote {DEFAULT_DOC}, {DEFAULT_CHART}")
        return 0
    started = time.monotonic()
    budget = Budget.quick() if args.quick else Budget.full()
    if args.rounds:
        budget = Budget(**{**budget.__dict__, "rounds": args.rounds})
    only = set(args.only.split(",")) if args.only else None
    if only == {"delegated_hop"}:  # no configuration: the delegated hop alone
        from .delegated_hop import main as delegated_hop

        return delegated_hop(["--quick"] if args.quick else [])
    document = run_suite(
        budget,
        kerberos=not args.no_kerberos,
        alternatives=not args.no_alternatives,
        decomposition=not args.no_decomposition,
        only=only,
    )
    document["machine"]["mode"] = "quick" if args.quick else "full"
    if only is None or "delegated_hop" in only:
        from .delegated_hop import describe, run_delegated_hop

        try:
            document["delegated_hop"] = run_delegated_hop(quick=args.quick, rounds=args.rounds)
            print(describe(document["delegated_hop"]))
        except Exception as exc:
            document["errors"].setdefault("delegated_hop", {})["run"] = _describe(exc)
        document["targets"] = evaluate_targets(document)  # the delegated hop's row too

    document["machine"]["elapsed_s"] = round(time.monotonic() - started)
    from ._report import render_table, write_outputs

    print(render_table(document))
    errors = document["errors"]
    if not args.no_write:
        json_path = args.json or (None if args.quick else DEFAULT_JSON)
        if json_path is not None:
            docs = not args.quick and args.json is None
            write_outputs(document, json_path, DEFAULT_DOC if docs else None, DEFAULT_CHART)
            print(f"wrote {json_path}" + (f", {DEFAULT_DOC}, {DEFAULT_CHART}" if docs else ""))
    if errors:
        for config, failures in errors.items():
            for key, text in failures.items():
                print(f"ERROR {config} {key}: {text}", file=sys.stderr)
        return 1
    return 0
