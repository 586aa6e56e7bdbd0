"""rpcsec benchmarks.

``python -m benchmarks`` (``make bench``) runs the suite: rpcsec next to plain gRPC and gRPC TLS
over loopback, results in ``benchmarks/results/latest.json`` and ``docs/BENCHMARKS.md``;
``--quick`` runs every configuration briefly (CI). ``python -m benchmarks.core`` measures the
sans-IO core alone.
"""
