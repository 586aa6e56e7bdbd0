"""What users pick instead of rpcsec for "who is calling", and rpcsec where services really run.

Measured in the same rounds as the main configurations (issue 14 item 4, issue 9 "Speed"),
reported apart from them (``alternatives`` in the results: ratios to plain gRPC and, for the
replica topologies, to plain gRPC through the same proxy and replicas):

* ``grpc_tls_jwt``: gRPC mTLS plus a JWT per call -- the client attaches a bearer token with
  ``grpc.access_token_call_credentials`` (gRPC's own per-call credentials plugin), a server
  interceptor verifies it on every call with PyJWT (EdDSA, Ed25519; issuer, audience, expiry
  required) before the handler runs and hands the handler the subject. The server is a process
  of its own (``python -m benchmarks._alternatives``, the ``_server`` protocol).
* ``envoy_sidecar_mtls``: Envoy sidecars doing the mTLS (Istio's data path, ``_proxies``).
* ``envoy_rr3_plain`` / ``envoy_rr3_x509_integrity`` / ``envoy_rr3_x509_privacy``: three
  replicas behind Envoy round-robin. The rpcsec ones need contexts any replica can open (the
  session layer, issue 9); until then they are probed first and reported "not available".

Configurations whose binary is missing (Envoy) are reported as not measured, never as errors.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import os
import pathlib
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import grpc

from rpcsec.sspi import ProtectionLevel

from ._configs import FRESH, MAX_WORKERS, Config, PackageIdentity, _rpcsec_config, server_spec
from ._pki import BenchPki
from ._server import ServerProcess

__all__ = [
    "JWT_ALGORITHM",
    "Alternatives",
    "WHAT",
    "JwtInterceptor",
    "render_alternatives",
    "replica_interceptor_kwargs",
    "start_alternatives",
]

JWT_ALGORITHM = "EdDSA"
ISSUER = "https://idp.bench.rpcsec.test"
AUDIENCE = "echo.bench.rpcsec.test"
REPLICAS = 3
PROBE_CALLS = 3 * REPLICAS
REPLAY_STORE_TIMEOUT = 2.0
"""The replicas' Redis replay-store timeout (rpcsec's default: 0.25 s). On a 2-core machine
shared by a dozen processes a Redis round trip now and then waits longer than 0.25 s for a
core; the store then fails the call closed (UNAVAILABLE, ``replay-store-unavailable``), which
is right in production and ruins a 1500-call latency sample here. A store that is down still
fails every call closed."""
CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("jwt_caller", default=None)
"""The verified subject, inside a handler of the JWT server (what ``current_token()`` is to
rpcsec)."""


# -- the JWT server (child process) ------------------------------------------------------------


class JwtInterceptor(grpc.ServerInterceptor):
    """Verifies ``authorization: Bearer <JWT>`` on every call, inside the handler's thread
    (so the server pool's CPU accounting sees it, as it sees rpcsec's verification). A missing,
    expired, foreign or malformed token ends the call UNAUTHENTICATED; the handler never runs.
    Wrapped handlers are made once per method."""

    def __init__(self, public_key_pem: bytes, issuer: str, audience: str) -> None:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        self._key = load_pem_public_key(public_key_pem)
        self._issuer = issuer
        self._audience = audience
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def _verify(self, context: Any) -> str:
        import jwt

        token = None
        for key, value in context.invocation_metadata():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value[len("Bearer ") :]
                break
        if token is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no bearer token")
            raise AssertionError("context.abort() returned")  # it raises; for the type checker
        try:
            claims = jwt.decode(
                token,
                self._key,  # type: ignore[arg-type]
                algorithms=[JWT_ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.InvalidTokenError:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid token")
        return str(claims["sub"])

    def _wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        verify = self._verify

        def guarded(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def run(request: Any, context: Any) -> Any:
                reset = CALLER.set(verify(context))
                try:
                    return behavior(request, context)
                finally:
                    CALLER.reset(reset)

            return run

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                guarded(handler.unary_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream is not None:

            def stream(request: Any, context: Any) -> Any:
                reset = CALLER.set(verify(context))
                try:
                    yield from handler.unary_stream(request, context)
                finally:
                    CALLER.reset(reset)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        raise NotImplementedError("the benchmark service has unary requests only")

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        wrapped = self._handlers.get(details.method)
        if wrapped is None:
            wrapped = self._handlers.setdefault(details.method, self._wrap(handler))
        return wrapped


def serve(spec: dict[str, Any], commands: IO[str], replies: IO[str]) -> None:
    """The JWT server: gRPC mTLS (the suite's TLS leaves) + ``JwtInterceptor``."""
    from ._server import answer_commands
    from ._service import start_server

    tls = grpc.ssl_server_credentials(
        [(spec["tls_key"].encode(), spec["tls_certificate"].encode())],
        root_certificates=spec["tls_root"].encode(),
        require_client_auth=True,
    )
    interceptor = JwtInterceptor(spec["jwt_public_key"].encode(), ISSUER, AUDIENCE)
    server, pool, _plain, tls_port = start_server(
        [interceptor], max_workers=int(spec["max_workers"]), tls=tls
    )
    try:
        answer_commands({"jwt": tls_port}, lambda: {"jwt": pool.cpu_seconds}, commands, replies)
    finally:
        server.stop(None)


# -- the parent's side -------------------------------------------------------------------------


def _signing_key() -> tuple[Any, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public.decode()


def _token(key: Any, subject: str = "spiffe://bench.rpcsec.test/user/alice") -> str:
    """A token as an identity provider issues one: minted once, reused until it expires."""
    import jwt

    now = datetime.datetime.now(datetime.UTC)
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": now,
        "exp": now + datetime.timedelta(hours=1),
        "jti": str(uuid.uuid4()),
    }
    return str(jwt.encode(claims, key, algorithm=JWT_ALGORITHM))


def replica_interceptor_kwargs(
    directory: pathlib.Path, redis_url: str | None = None
) -> dict[str, Any]:
    """``secure_server()`` options every replica of ``envoy_rr3_x509_*`` gets (JSON): what
    replicas share (issue 9) -- one ticket key ring directory, made here, and the Redis replay
    store when one runs (else each replica's memory store: replays are then refused only by
    the replica that saw the request)."""
    from rpcsec.session import TicketKeyRing

    ring = directory / "ticket-ring"
    if not ring.exists():
        TicketKeyRing.create(ring)
    kwargs: dict[str, Any] = {"ticket_keys": str(ring)}
    if redis_url is not None:
        kwargs["replay_store"] = redis_url
    return kwargs


def _start_redis(directory: pathlib.Path, alt: Alternatives) -> str | None:
    """A real redis-server for the replicas' shared replay store, if the machine has one."""
    from ._proxies import TESTS

    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from helpers.redis_server import RedisServer, redis_unavailable_reason

    reason = redis_unavailable_reason()
    if reason is not None:
        alt.notes.append(f"envoy_rr3_x509_*: memory replay stores ({reason})")
        return None
    server = RedisServer(directory / "redis").start()
    alt._stops.append(server.stop)
    alt.notes.append(
        "envoy_rr3_x509_*: replay store = one real Redis shared by the replicas "
        f"(timeout {REPLAY_STORE_TIMEOUT:g} s instead of the default 0.25 s: see "
        "benchmarks/_alternatives.py REPLAY_STORE_TIMEOUT)"
    )
    return server.url


@dataclass
class Alternatives:
    """The alternatives' configurations, what runs them, and notes for the report."""

    configs: list[Config] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _stops: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        errors = []
        for stop in reversed(self._stops):
            try:
                stop()
            except Exception as exc:  # stop everything, then report the first failure
                errors.append(exc)
        self._stops.clear()
        if errors:
            raise errors[0]


def _check_jwt_refusals(address: str, credentials: grpc.ChannelCredentials, foreign: str) -> None:
    """The JWT server must refuse a call without a token and one signed by another key, or
    the comparison would measure a server that checks nothing."""
    from ._service import UNARY_METHOD

    options = [*FRESH, ("grpc.ssl_target_name_override", "localhost")]
    attempts = {
        "no token": credentials,
        "a token signed by another key": grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(foreign)
        ),
    }
    for what, channel_credentials in attempts.items():
        with grpc.secure_channel(address, channel_credentials, options=options) as channel:
            try:
                channel.unary_unary(UNARY_METHOD)(b"probe", timeout=10)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                    continue
                raise
            raise RuntimeError(f"the JWT server accepted a call with {what}")


def _jwt(pki: BenchPki, env: dict[str, str], alternatives: Alternatives) -> None:
    key, public = _signing_key()
    spec = {
        "max_workers": MAX_WORKERS,
        "tls_key": pki.tls_server.key.decode(),
        "tls_certificate": pki.tls_server.certificate.decode(),
        "tls_root": pki.root_pem.decode(),
        "jwt_public_key": public,
    }
    server = ServerProcess(spec, env, module="benchmarks._alternatives")
    alternatives._stops.append(server.stop)
    address = f"127.0.0.1:{server.ports['jwt']}"
    tls = grpc.ssl_channel_credentials(pki.root_pem, pki.tls_client.key, pki.tls_client.certificate)
    _check_jwt_refusals(address, tls, _token(_signing_key()[0]))
    credentials = grpc.composite_channel_credentials(
        tls, grpc.access_token_call_credentials(_token(key))
    )
    options = [*FRESH, ("grpc.ssl_target_name_override", "localhost")]
    alternatives.configs.append(
        Config(
            "grpc_tls_jwt",
            f"gRPC mTLS + JWT per call ({JWT_ALGORITHM}/Ed25519, PyJWT)",
            lambda: grpc.secure_channel(address, credentials, options=options),
            lambda: server.cpu_seconds()["jwt"],
            alternative=True,
        )
    )
    alternatives.notes.append(
        f"grpc_tls_jwt: gRPC mTLS + a bearer JWT ({JWT_ALGORITHM}, PyJWT) attached by "
        "access_token_call_credentials and verified by a server interceptor on every call "
        "(issuer, audience, expiry); checked to refuse a missing and a foreign token"
    )


def _sidecars(
    pki: BenchPki, plain: ServerProcess, directory: pathlib.Path, alt: Alternatives
) -> None:
    from ._proxies import Sidecars

    sidecars = Sidecars.start(pki, plain.ports["plain"], directory)
    alt._stops.append(sidecars.stop)
    address = sidecars.address
    alt.configs.append(
        Config(
            "envoy_sidecar_mtls",
            "Envoy sidecars, mTLS between them (Istio path)",
            lambda: grpc.insecure_channel(address, options=FRESH),
            lambda: plain.cpu_seconds()["plain"] + sidecars.server_cpu_seconds(),
            alternative=True,
        )
    )
    alt.notes.append(
        "envoy_sidecar_mtls: client -> local Envoy (plaintext h2) -> mTLS (ECDSA P-256 leaves) "
        "-> server-side Envoy -> the plain server; server CPU = the server's pool + the "
        "server-side Envoy process (/proc, 10 ms ticks). The Envoys pool their upstream "
        "connection, so a new client channel does not cost a new mTLS handshake"
    )


def _available(config: Config) -> str | None:
    """None if ``PROBE_CALLS`` unary calls on a new channel all succeed; else why not."""
    from ._service import UNARY_METHOD

    channel = config.fresh_channel()
    try:
        call = channel.unary_unary(UNARY_METHOD)
        for _ in range(PROBE_CALLS):
            call(b"probe", timeout=10)
    except Exception as exc:
        text = str(exc.details()) if isinstance(exc, grpc.RpcError) else str(exc)
        return f"{type(exc).__name__}: {text[:200]}"
    finally:
        with contextlib.suppress(Exception):  # the release of a context nobody can open
            channel.close()
    return None


def _replicas(
    pki: BenchPki,
    identity: PackageIdentity,
    env: dict[str, str],
    directory: pathlib.Path,
    alt: Alternatives,
) -> None:
    from ._proxies import Replicas

    spec = server_spec(pki, [identity])
    spec["interceptor_kwargs"] = replica_interceptor_kwargs(directory, _start_redis(directory, alt))
    spec["replay_store_timeout"] = REPLAY_STORE_TIMEOUT
    group = Replicas.start(REPLICAS, spec, env, directory)
    alt._stops.append(group.stop)
    plain_address = group.address("plain")
    alt.configs.append(
        Config(
            "envoy_rr3_plain",
            "3 replicas, Envoy RR (h2c): gRPC plain",
            lambda: grpc.insecure_channel(plain_address, options=FRESH),
            lambda: group.cpu_seconds("plain"),
            alternative=True,
        )
    )
    for level in (ProtectionLevel.INTEGRITY, ProtectionLevel.PRIVACY):
        name = f"envoy_rr3_x509_{level.name.lower()}"
        config = _rpcsec_config(
            name,
            f"3 replicas, Envoy RR (h2c): rpcsec x509 {level.name}",
            group.address("rpcsec"),
            identity,
            level,
            lambda: group.cpu_seconds("rpcsec"),
        )
        config.alternative = True
        config.same_topology = "envoy_rr3_plain"
        reason = _available(config)
        if reason is None:
            alt.configs.append(config)
        else:
            alt.notes.append(
                f"{name}: not available -- {PROBE_CALLS} calls on a new channel through Envoy "
                f"round-robin to {REPLICAS} replicas did not all succeed ({reason}); needs "
                "contexts any replica can open (issue 9)"
            )
    measured = [c for c in alt.configs if c.name.startswith("envoy_rr3_")]
    alt.notes.append(_wire_note(group, measured))
    alt.notes.append(
        f"envoy_rr3_*: {REPLICAS} server processes (python -m benchmarks._server), one Envoy "
        "round-robin (HTTP/2 both sides, no retries) over their plain ports and one over "
        "their rpcsec ports; server CPU = the three pools"
    )


WIRE_PROBE_CALLS = 50


def _wire_note(group: Any, configs: list[Config]) -> str:
    """Bytes per unary call on both legs through the replicas' Envoys (Envoy's own counters,
    ``WIRE_PROBE_CALLS`` calls on a bound channel), and the ticket's size: the ticket rides in
    every request because gRPC's HPACK encoder never indexes application metadata."""
    from ._proxies import envoy_bytes
    from ._service import UNARY_METHOD
    from ._workloads import PAYLOAD

    parts = []
    for config in configs:
        kind = "plain" if config.name == "envoy_rr3_plain" else "rpcsec"
        proxy = group.balancers[kind]
        channel = config.fresh_channel()
        try:
            call = channel.unary_unary(UNARY_METHOD)
            for _ in range(5):  # bound, tickets opened, HPACK tables filled
                call(PAYLOAD, timeout=10)
            before = envoy_bytes(proxy)
            for _ in range(WIRE_PROBE_CALLS):
                call(PAYLOAD, timeout=10)
            after = envoy_bytes(proxy)
        finally:
            with contextlib.suppress(Exception):
                channel.close()
        per = {key: (after[key] - before[key]) / WIRE_PROBE_CALLS for key in after}
        parts.append(
            f"{config.name} {per['rx']:.0f} B client->Envoy / {per['tx']:.0f} B Envoy->replica"
        )
    rpcsec = next((c for c in configs if c.identity is not None), None)
    ticket = None
    if rpcsec is not None and rpcsec.identity is not None:
        ticket = _ticket_size(rpcsec.identity, group.address("rpcsec"))
    return (
        "envoy_rr3_*: request bytes per unary call (100 B payload), "
        + ", ".join(parts)
        + (f"; the x509 ticket is {ticket} B, sent whole in every request" if ticket else "")
        + " (gRPC never HPACK-indexes application metadata; Envoy indexes it upstream)"
    )


def _ticket_size(identity: PackageIdentity, address: str) -> int | None:
    """The ``rpcsec-context-bin`` value's size on a bound rpcsec channel, seen by a client
    interceptor under it."""
    from rpcsec.grpc import CONTEXT_KEY, secure_channel
    from rpcsec.sspi import ContextReq

    from ._service import UNARY_METHOD
    from ._workloads import PAYLOAD

    seen: list[int] = []

    class Recorder(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            seen.extend(len(v) for k, v in (details.metadata or ()) if k == CONTEXT_KEY)
            return continuation(details, request)

    base = grpc.intercept_channel(grpc.insecure_channel(address, options=FRESH), Recorder())
    channel = secure_channel(
        base,
        identity.client(),
        target_name=identity.target,
        requirements=ContextReq(identity.requirements),
        protection=ProtectionLevel.INTEGRITY,
    )
    try:
        for _ in range(2):
            channel.unary_unary(UNARY_METHOD)(PAYLOAD, timeout=10)
    finally:
        with contextlib.suppress(Exception):
            channel.close()
    return seen[-1] if seen else None


def start_alternatives(
    directory: pathlib.Path,
    pki: BenchPki,
    servers: ServerProcess,
    identities: dict[str, PackageIdentity],
) -> Alternatives:
    """Start what the alternatives need; returns their configurations (those that can run)."""
    alt = Alternatives()
    env = dict(os.environ)
    try:
        _jwt(pki, env, alt)
        from ._proxies import envoy_unavailable_reason

        reason = envoy_unavailable_reason()
        if reason is not None:
            alt.notes.append(f"envoy_sidecar_mtls, envoy_rr3_*: not measured ({reason})")
            return alt
        envoy_dir = directory / "envoy"
        envoy_dir.mkdir(exist_ok=True)
        _sidecars(pki, servers, envoy_dir, alt)
        _replicas(pki, identities["x509"], env, envoy_dir, alt)
    except BaseException:
        alt.stop()
        raise
    return alt


HEADLINE = (
    "unary_latency_us",
    "server_cpu_per_call_us",
    "unary_throughput_cps",
    "stream_MBps",
    "first_call_ms",
)


WHAT = {
    "grpc_tls_jwt": "gRPC mutual TLS (ECDSA P-256 leaves) plus a bearer JWT signed "
    f"{JWT_ALGORITHM} (Ed25519) by an identity provider, minted once and attached to every call by "
    "`grpc.access_token_call_credentials`; a server interceptor verifies it with PyJWT on every "
    "call (signature, issuer, audience, expiry) before the handler runs, and the handler gets "
    "the subject. Checked at start to refuse a call without a token and one signed by another "
    "key. No message protection beyond TLS, no delegation.",
    "envoy_sidecar_mtls": "Istio's data path without Istio: the client speaks plaintext HTTP/2 "
    "to an Envoy on its own host, that Envoy opens mutual TLS (ECDSA P-256) to an Envoy in "
    "front of the server, which terminates TLS and forwards plaintext HTTP/2 to the plain gRPC "
    "server. The Envoys pool their upstream connection, so a new client channel does not cost "
    "a TLS handshake; the server-side Envoy's CPU counts as server CPU. The handler sees no "
    "caller identity unless the sidecar forwards one in a header (e.g. XFCC) the server must "
    "take on trust.",
    "envoy_rr3_plain": "three server processes behind one Envoy doing round-robin, plaintext "
    "HTTP/2 on both sides, no retries: the topology of issue 9, plain gRPC.",
    "envoy_rr3_x509_integrity": "the same Envoy and replicas, rpcsec x509 INTEGRITY: contexts "
    "in sealed tickets any replica opens, the replicas' shared ticket key ring and replay "
    "store (Redis when installed); TLS nowhere, rpcsec protects each message end to end.",
    "envoy_rr3_x509_privacy": "as above, PRIVACY (every message sealed end to end).",
}
"""What each alternative row does, printed under the table (``render_alternatives``)."""


def render_alternatives(document: dict[str, Any]) -> str:
    """A markdown table of the alternatives beside plain gRPC, gRPC mTLS and rpcsec x509:
    medians and ratios to plain (and to plain through the same proxy and replicas)."""
    from ._report import DASH, TIMES, _cell, _ratio
    from .suite import _short

    alternatives = document.get("alternatives") or {}
    if not alternatives:
        return ""
    workloads = document["workloads"]
    keys = [key for key in HEADLINE if key in workloads]
    rows = {
        name: entry
        for name, entry in document["configs"].items()
        if name in ("plain", "grpc_tls", "x509_integrity", "x509_privacy")
    }
    rows.update(alternatives)
    header = ["configuration"] + [
        f"{workloads[key]['title']} [{workloads[key]['unit']}]" for key in keys
    ]
    out = [
        "## What users pick instead, and replicas behind a proxy",
        "",
        "Same run, same rounds (see `benchmarks/_alternatives.py`). Cells: median, then its "
        f"ratio to plain gRPC; for the replica rows also {TIMES} plain gRPC through the same "
        "Envoy and replicas.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for entry in rows.values():
        row = [entry["label"]]
        for key in keys:
            measured = entry.get(key)
            if not measured:
                row.append(DASH)
                continue
            short = _short(key)
            cell = f"{_cell(measured['median'])} ({_ratio(entry['ratio_to_plain'].get(short))}"
            same = (entry.get("ratio_to_same_topology") or {}).get(short)
            if same is not None and entry.get("ratio_to_same_topology") is not None:
                cell += f", {_ratio(same)} same topology"
            row.append(cell + ")")
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    for name, entry in alternatives.items():
        if name in WHAT:
            out.append(f"- **{entry['label']}**: {WHAT[name]}")
    return "\n".join(out) + "\n"


def main() -> int:
    spec = json.loads(sys.stdin.readline())
    serve(spec, sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
