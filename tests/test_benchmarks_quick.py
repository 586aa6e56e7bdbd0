"""The benchmark suite's quick mode (what CI runs): every configuration runs every workload
without an error. Timings are never asserted -- machines differ and CI machines are noisy."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BASELINES = {"plain", "grpc_tls"}
RPCSEC = {"x509_integrity", "x509_privacy", "ntlm_integrity"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    document = json.loads(out.read_text()) if out.exists() else {}
    return done, document


def test_quick_mode_exits_cleanly(quick) -> None:
    done, _ = quick
    assert done.returncode == 0, done.stderr[-4000:]


def test_every_configuration_ran_every_workload(quick) -> None:
    _, document = quick
    assert document, "no results file was written"
    assert document["errors"] == {}
    configs = document["configs"]
    assert set(configs) >= BASELINES | RPCSEC
    for name, entry in configs.items():
        for key, meta in document["workloads"].items():
            rpcsec_only = key in ("server_handshakes_per_core_s", "memory_per_context_bytes")
            if name in BASELINES and rpcsec_only:
                assert entry[key] is None
                continue
            measured = entry[key]
            assert measured is not None, f"{name} has no {key}"
            assert measured["median"] > 0, f"{name} {key}: {meta}"
        assert entry["ratio_to_plain"]["unary_latency"] is not None
        assert entry["ratio_to_grpc_tls"]["unary_latency"] is not None


def test_results_have_the_documented_shape(quick) -> None:
    _, document = quick
    assert {"machine", "configs", "targets", "workloads"} <= set(document)
    plain = document["configs"]["plain"]
    assert plain["ratio_to_plain"]["unary_latency"] == pytest.approx(1.0)
    assert set(plain["unary_latency_us"]) >= {"median", "min", "max"}
    assert document["machine"]["allocator"]["MALLOC_TRIM_THRESHOLD_"] != "default"


def test_the_delegated_hop_was_measured(quick) -> None:
    """Two hops through a front on one dynamically cloaked channel, and the direct call."""
    _, document = quick
    hop = document["delegated_hop"]
    for way in ("direct", "two_hop_delegated", "two_hop_as_front", "two_hop_channel_per_call"):
        assert hop[way]["median"] > 0
    assert hop["ratio_delegated_to_direct"] > 0
    assert hop["target_ratio"] == 1.5
