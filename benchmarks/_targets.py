"""The speed targets of the open issues, checked against one results document.

* issue 14 (per-call cost): unary 100 B latency <= 1.12x plain gRPC (INTEGRITY and PRIVACY,
  every package), 8-thread throughput >= 0.95x, server CPU per call <= 1.30x, a PRIVACY
  64 MiB stream >= 0.80x (kerberos is the one that needs it), the first call on a new channel
  <= 2x gRPC mTLS's (a ratio to the ``grpc_tls`` configuration of the same run), server memory
  per idle context <= 8 KiB;
* issue 9 (replicas): rpcsec through Envoy round-robin to 3 replicas <= 1.30x plain gRPC in
  the same topology (``ratio_to_same_topology`` of the ``envoy_rr3_x509_*`` rows);
* issue 12 (delegation): a warm two-hop delegated call <= 1.5x a warm direct one
  (``delegated_hop``).

Ratios are medians against the baseline measured in the same run. A target missed is
reported, never fatal: timings do not fail the suite (machines differ; CI machines are noisy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["TARGETS", "Target", "evaluate_targets"]


@dataclass(frozen=True)
class Target:
    """``value(config) <= limit`` (or ``>=``) for every configuration ``applies`` selects."""

    name: str
    issue: int
    section: str  # the results entry the value comes from
    key: str
    limit: float
    at_most: bool
    applies: str  # "integrity", "privacy", "rpcsec", "replicas", "delegated_hop"
    unit: str = "x"


_PLAIN, _TLS, _SAME, _VALUE = (
    "ratio_to_plain",
    "ratio_to_grpc_tls",
    "ratio_to_same_topology",
    "value",
)
TARGETS = [
    Target("unary latency ≤ 1.12x plain", 14, _PLAIN, "unary_latency", 1.12, True, "rpcsec"),
    Target(
        "8-thread throughput ≥ 0.95x plain",
        14, _PLAIN, "unary_throughput", 0.95, False, "rpcsec",
    ),
    Target("server CPU per call ≤ 1.30x plain", 14, _PLAIN, "server_cpu", 1.30, True, "rpcsec"),
    Target("64 MiB stream, PRIVACY ≥ 0.80x plain", 14, _PLAIN, "stream", 0.80, False, "privacy"),
    Target("first call ≤ 2x gRPC mTLS's", 14, _TLS, "first_call", 2.0, True, "rpcsec"),
    Target(
        "server memory per idle context ≤ 8 KiB",
        14, _VALUE, "memory_per_context_bytes", 8192, True, "rpcsec", " B",
    ),
    Target(
        "3 replicas behind Envoy: latency ≤ 1.30x plain, same topology",
        9, _SAME, "unary_latency", 1.30, True, "replicas",
    ),
    Target(
        "delegated hop ≤ 1.5x direct",
        12, "delegated_hop", "ratio_delegated_to_direct", 1.5, True, "delegated_hop",
    ),
]  # fmt: skip

BASELINE_NAMES = ("plain", "grpc_tls")


def _applies(target: Target, name: str) -> bool:
    if name in BASELINE_NAMES:
        return False
    if target.applies == "integrity":
        return name.endswith("_integrity")
    if target.applies == "privacy":
        return name.endswith("_privacy")
    return True


def _value(target: Target, entry: dict[str, Any]) -> float | None:
    if target.section == _VALUE:
        measured = entry.get(target.key)
        return measured["median"] if measured else None
    value = (entry.get(target.section) or {}).get(target.key)
    return None if value is None else float(value)


def _row(target: Target, name: str, value: float | None) -> dict[str, Any]:
    passed = None
    if value is not None:
        passed = value <= target.limit if target.at_most else value >= target.limit
    return {
        "target": target.name,
        "issue": target.issue,
        "config": name,
        "value": value,
        "limit": target.limit,
        "unit": target.unit,
        "pass": passed,
    }


def evaluate_targets(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (target, configuration) it applies to: the value and whether it passes
    (None: not measured in this run)."""
    rows: list[dict[str, Any]] = []
    for target in TARGETS:
        if target.applies == "delegated_hop":
            hop = document.get("delegated_hop")
            if hop is not None:
                value = hop.get(target.key)
                rows.append(_row(target, "delegated_hop", None if value is None else float(value)))
            continue
        if target.applies == "replicas":
            for name, entry in (document.get("alternatives") or {}).items():
                if name.startswith("envoy_rr3_") and entry.get(_SAME) is not None:
                    rows.append(_row(target, name, _value(target, entry)))
            continue
        for name, entry in document["configs"].items():
            if _applies(target, name):
                rows.append(_row(target, name, _value(target, entry)))
    return rows
