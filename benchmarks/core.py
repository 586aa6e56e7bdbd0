"""Micro-benchmark of the sans-IO core: per-operation medians, no network.

Measures, for each available package, sign+verify and encrypt+decrypt (wrap+unwrap) of 100 B,
4 KiB and 1 MiB messages, and the full in-memory handshake (both sides). Run:

    python -m benchmarks.core [--packages x509,ntlm] [--json out.json]

Targets (issue 2, 2-core machine): x509 100 B sign+verify and encrypt+decrypt <= 15 us each;
1 MiB encrypt+decrypt >= 1 GB/s; x509 handshake <= 8 ms median.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

from benchmarks._env import allocator_settings, ensure_allocator_settings
from rpcsec.sspi import (
    ContextReq,
    CredentialUse,
    SecurityError,
    accept_security_context,
    acquire_credentials_handle,
    initialize_security_context,
)

SIZES = {"100B": 100, "4KiB": 4096, "1MiB": 1 << 20}
REQUESTED = ContextReq.MUTUAL_AUTH | ContextReq.REPLAY_DETECT | ContextReq.CONFIDENTIALITY


def _pair(client_creds: Any, server_creds: Any, target: str | None) -> tuple[Any, Any]:
    client = initialize_security_context(client_creds, target, REQUESTED)
    server = accept_security_context(server_creds)
    token = client.step().token
    sides = (server, client)
    turn = 0
    while token is not None:
        token = sides[turn % 2].step(token).token
        turn += 1
    return client, server


def _median_us(operation: Callable[[], object], repeat: int, batch: int) -> dict[str, float]:
    for _ in range(batch):  # warm up caches and the allocator before measuring
        operation()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(batch):
            operation()
        samples.append((time.perf_counter() - start) / batch * 1e6)
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def _setups(workdir: pathlib.Path) -> dict[str, Callable[[], tuple[Any, Any, str | None]]]:
    def ntlm() -> tuple[Any, Any, str | None]:
        users = workdir / "ntlm-users"
        users.write_text("RPCSEC:alice:Alice-Pa55!\n")
        client = acquire_credentials_handle(
            "ntlm", "RPCSEC\\alice", CredentialUse.OUTBOUND, password="Alice-Pa55!"
        )
        server = acquire_credentials_handle(
            "ntlm", None, CredentialUse.INBOUND, user_file=str(users)
        )
        return client, server, "host@server"

    def x509() -> tuple[Any, Any, str | None]:
        from helpers.pki import make_authority

        authority = make_authority(workdir / "pki")
        client = authority.credentials("alice", CredentialUse.OUTBOUND)
        server = authority.credentials("storage", CredentialUse.INBOUND)
        return client, server, authority.id("storage")

    return {"x509": x509, "ntlm": ntlm}


def run(packages: list[str], quick: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        setups = _setups(pathlib.Path(tmp))
        for name in packages:
            try:
                client_creds, server_creds, target = setups[name]()
            except (ImportError, SecurityError, AttributeError) as exc:
                print(f"{name}: skipped ({exc})", file=sys.stderr)
                continue
            client, server = _pair(client_creds, server_creds, target)
            entry: dict[str, Any] = {}
            for label, size in SIZES.items():
                data = bytes(size)
                big = size >= 1 << 20
                repeat, batch = (5, 5) if big else (15, 500)
                if quick:
                    repeat, batch = 3, (2 if big else 50)

                def sign_verify(data: bytes = data, c: Any = client, s: Any = server) -> None:
                    s.verify(data, c.sign(data))

                def encrypt_decrypt(data: bytes = data, c: Any = client, s: Any = server) -> None:
                    s.unwrap(c.wrap(data))

                entry[f"sign_verify_{label}_us"] = _median_us(sign_verify, repeat, batch)
                entry[f"encrypt_decrypt_{label}_us"] = _median_us(encrypt_decrypt, repeat, batch)
                if big:
                    us = entry[f"encrypt_decrypt_{label}_us"]["median"]
                    entry["encrypt_decrypt_1MiB_GBps"] = size / (us * 1e-6) / 1e9

            def handshake(
                client_creds: Any = client_creds,
                server_creds: Any = server_creds,
                target: str | None = target,
            ) -> None:
                _pair(client_creds, server_creds, target)

            entry["handshake_ms"] = {
                k: v / 1000
                for k, v in _median_us(handshake, 3 if quick else 15, 5 if quick else 20).items()
            }
            results[name] = entry
    return results


def main(argv: list[str] | None = None) -> int:
    ensure_allocator_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", default="x509,ntlm")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument(
        "--default-allocator", action="store_true", help="keep glibc's default thresholds"
    )
    args = parser.parse_args(argv)
    results = run(args.packages.split(","), quick=args.quick)
    allocator = allocator_settings()
    print(f"allocator: {allocator}")
    for package, entry in results.items():
        print(f"== {package}")
        for key, value in entry.items():
            if isinstance(value, dict):
                print(f"  {key:32s} median {value['median']:10.2f}  (min {value['min']:.2f})")
            else:
                print(f"  {key:32s} {value:10.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
