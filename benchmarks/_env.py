"""The process the benchmarks run in: allocator settings and a description of the machine.

Shared by ``benchmarks.core`` and the suite (``python -m benchmarks``), so both measure under
the same allocator and record the same facts about the machine next to their numbers.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any

__all__ = [
    "ALLOCATOR_ENV",
    "allocator_settings",
    "ensure_allocator_settings",
    "load_average",
    "machine_info",
]

ALLOCATOR_ENV = {"MALLOC_TRIM_THRESHOLD_": "67108864", "MALLOC_MMAP_THRESHOLD_": "8388608"}
"""glibc returns freed megabyte buffers to the OS after every message by default (trim and mmap
thresholds near 1-2 MiB), so each 1 MiB message then pays ~500 fresh page faults -- the
allocator, not the cipher, dominates (measured here: 0.9 GB/s vs 4.5 GB/s). Long-running
servers that move large messages should set these too; the benchmarks set them for every
configuration alike and record them in their output."""


def ensure_allocator_settings() -> None:
    """Re-run this process with ALLOCATOR_ENV unless ``--default-allocator`` was given.

    glibc reads these variables once, at start-up, so setting them means exec'ing again.
    """
    if "--default-allocator" in sys.argv or all(os.environ.get(k) for k in ALLOCATOR_ENV):
        return
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **ALLOCATOR_ENV})


def allocator_settings() -> dict[str, str]:
    return {k: os.environ.get(k, "default") for k in ALLOCATOR_ENV}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return []


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare two result files: CPU, versions, allocator, load."""
    import cryptography
    import grpc
    import OpenSSL

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "cryptography": cryptography.__version__,
        "pyopenssl": OpenSSL.__version__,
        "openssl": OpenSSL.SSL.OpenSSL_version(OpenSSL.SSL.OPENSSL_VERSION).decode(),
        "allocator": allocator_settings(),
        "load_average_before": load_average(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
