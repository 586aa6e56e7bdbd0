"""The speed targets of issues 3 and 5, checked against one results document.

Ratios are medians against plain gRPC (or gRPC TLS) measured in the same run. A target missed
is reported, never fatal: timings do not fail the suite (machines differ; CI machines are noisy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["TARGETS", "Target", "evaluate_targets"]


@dataclass(frozen=True)
class Target:
    """``value(config) <= limit`` (or ``>=``) for every configuration ``applies`` selects."""

    name: str
    section: str  # the results entry the value comes from
    key: str
    limit: float
    at_most: bool
    applies: str  # "integrity", "privacy", "rpcsec", "x509"
    unit: str = "x"


_PLAIN, _TLS, _VALUE = "ratio_to_plain", "ratio_to_grpc_tls", "value"
TARGETS = [
    Target("latency, INTEGRITY ≤ 1.10x plain", _PLAIN, "unary_latency", 1.10, True, "integrity"),
    Target("latency, PRIVACY ≤ 1.15x plain", _PLAIN, "unary_latency", 1.15, True, "privacy"),
    Target("latency, PRIVACY ≤ 1.10x gRPC TLS", _TLS, "unary_latency", 1.10, True, "privacy"),
    Target("throughput ≥ 0.85x plain", _PLAIN, "unary_throughput", 0.85, False, "rpcsec"),
    Target("64 MiB stream, PRIVACY ≥ 0.80x plain", _PLAIN, "stream", 0.80, False, "privacy"),
    Target(
        "handshakes served per core ≥ 200/s (x509)",
        _VALUE, "server_handshakes_per_core_s", 200, False, "x509", "/s",
    ),
    Target(
        "server memory per idle context ≤ 8 KiB",
        _VALUE, "memory_per_context_bytes", 8192, True, "rpcsec", " B",
    ),
    Target("first call ≤ 25 ms", _VALUE, "first_call_ms", 25, True, "rpcsec", " ms"),
]  # fmt: skip


def _applies(target: Target, name: str) -> bool:
    if name in ("plain", "grpc_tls"):
        return False
    if target.applies == "integrity":
        return name.endswith("_integrity")
    if target.applies == "privacy":
        return name.endswith("_privacy")
    if target.applies == "x509":
        return name.startswith("x509")
    return True


def evaluate_targets(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (target, configuration) it applies to: the value and whether it passes."""
    rows: list[dict[str, Any]] = []
    for target in TARGETS:
        for name, entry in document["configs"].items():
            if not _applies(target, name):
                continue
            if target.section == "value":
                measured = entry.get(target.key)
                value = measured["median"] if measured else None
            else:
                value = (entry.get(target.section) or {}).get(target.key)
            passed = None
            if value is not None:
                passed = value <= target.limit if target.at_most else value >= target.limit
            rows.append(
                {
                    "target": target.name,
                    "config": name,
                    "value": value,
                    "limit": target.limit,
                    "unit": target.unit,
                    "pass": passed,
                }
            )
    return rows
