"""rpcsec benchmarks. ``python -m benchmarks.core`` measures the sans-IO core."""
