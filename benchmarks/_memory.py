"""Server memory per established, idle security context.

How it is measured: a fresh Python process (``python -m benchmarks._memory``) runs with
``PYTHONMALLOC=malloc``, so *every* allocation -- Python objects, OpenSSL's, the Rust crypto
objects of ``cryptography``, libkrb5's -- comes from glibc malloc, and glibc's ``mallinfo2()``
(bytes in use plus mmapped blocks) counts all of them. (tracemalloc would see only the Python
objects: a context's AEAD keys and native handles would be missing.) The process builds a
server exactly as the gRPC binding does -- a ``ServerSecurity`` with its ``ContextTable`` -- and
establishes N contexts through the binding's own sans-IO Negotiate drivers, each against a
fresh client context that is thrown away at once. The growth of the heap after a full garbage
collection, divided by N, is what one idle context costs the server: context, keys, replay
window, the caller's tokens, the table entry. Counting malloc's bookkeeping overhead too, it is
an upper bound.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
from typing import Any

__all__ = ["measure", "probe"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _heap_in_use() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def measure(identity_json: str, count: int) -> dict[str, Any]:
    """Establish ``count`` server contexts in this process; returns bytes per context."""
    from rpcsec.grpc._binding import ChannelSecurity
    from rpcsec.grpc._server_core import ServerSecurity
    from rpcsec.grpc._table import ContextTable
    from rpcsec.sspi import ContextReq, ImpersonationLevel, ProtectionLevel

    from ._configs import PackageIdentity

    identity = PackageIdentity.from_json(identity_json)
    client = ChannelSecurity(
        identity.client(),
        target_name=identity.target,
        requirements=ContextReq(identity.requirements),
        impersonation=ImpersonationLevel.IMPERSONATE,
        protection=ProtectionLevel.INTEGRITY,
        package_options=None,
    )
    table = ContextTable(max_contexts=count + 100, idle_timeout=None)
    server = ServerSecurity(identity.server(), table=table)

    def establish() -> None:
        negotiation = client.negotiation()
        accept = server.negotiation("ipv4:127.0.0.1:1")
        message: Any = negotiation.start()
        while message is not None:
            reply, _done = accept.receive(message)
            message = negotiation.receive(reply)
        negotiation.context.delete()  # the client side goes away; only the server's remains

    for _ in range(20):  # warm caches, lazy imports, interned names
        establish()
    gc.collect()
    before = _heap_in_use()
    for _ in range(count):
        establish()
    gc.collect()
    after = _heap_in_use()
    if len(table) != count + 20:
        raise AssertionError(f"table holds {len(table)} contexts, expected {count + 20}")
    return {
        "contexts": count,
        "bytes_per_context": (after - before) / count,
        "heap_growth_bytes": after - before,
    }


def probe(identity_json: str, count: int, timeout: float = 600.0) -> dict[str, Any]:
    """``measure`` in a fresh ``PYTHONMALLOC=malloc`` process (see the module docstring)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONMALLOC": "malloc"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks._memory", str(count)],
        input=identity_json,
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    count = int(sys.argv[1])
    print(json.dumps(measure(sys.stdin.read(), count)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
