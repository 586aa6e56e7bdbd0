"""``python -m helpers.replica_main``: one replica of the tests' echo service, in its own process.

Services run as N replicas behind a load balancer (DESIGN §8); a test of that needs real
processes, not N servers in the test's own interpreter (one GIL, one memory: a context table
shared by accident would hide exactly the bug the tests look for). ``helpers.replicas``
starts these; this module is the child.

Protocol (stdin/stdout, like ``benchmarks._server``):

* stdin, first line: the spec as JSON. It may hold credentials options (key paths, keytabs), so
  it never goes on the command line::

      {"name": "r0", "port": 0, "count_file": "/tmp/.../counts-r0.jsonl",
       "security": null | {"package": "x509", "principal": null,
                           "options": {"authority_dir": "...", "name": "documents"}},
       "interceptor_kwargs": {...},   # forwarded verbatim to SecurityInterceptor(**kwargs)
       "max_workers": 16,
       "grace": 5.0,                  # seconds in-flight calls get to finish at a stop
       "health_port": 0}              # the gRPC health service's own port (0: any free one)

* stdout: ``READY {"name": ..., "port": ..., "health_port": ..., "pid": ...}`` once both
  servers listen.
* The standard health service (``grpc.health.v1.Health``, what Envoy's active gRPC health
  checks and Kubernetes' gRPC probes call) answers on its own plaintext port, apart from the
  secured one: a probe is not a client and has no context (as Kubernetes probes a separate
  port); it says SERVING while the replica takes calls.
* stdin line ``DRAIN``: the health service turns NOT_SERVING (the first step of a graceful
  drain: balancers stop sending new calls once their health check sees it) while the server
  still serves every call that arrives; the child answers ``DRAINING`` on stdout once it is
  *quiet*: ``QUIET_CHECKS`` health-check intervals in a row (each from one NOT_SERVING answer
  to the next) in which no new call arrived. A balancer acts on the first NOT_SERVING, but
  its workers learn it later (Envoy posts host-set updates to its worker threads: tens of
  milliseconds on a loaded machine, calls keep coming meanwhile); a call that reaches the
  server after ``server.stop`` began and before it was matched to a handler thread is
  cancelled by gRPC core (CANCELLED, not a refusal a client may re-send), so the server
  stops only once nobody sends it anything.
* then the child serves until stdin reaches end of file (the parent closed it, or died) or it
  is sent SIGTERM; either way it stops the server the way a pod drains (health NOT_SERVING,
  then ``server.stop(grace)``: GOAWAY, no new calls, calls in flight get ``grace`` seconds)
  and exits 0.

Every handler execution appends one JSON line to ``count_file`` (``O_APPEND``, one ``write``
per line, so lines from many threads never interleave):
``{"replica": "r0", "method": "Say", "id": "<request text>", "principal": "...",
"metadata": {...}, "unverified": {...}}`` (the call's text metadata the handler sees, and for
an rpcsec server the unverified rest, so a test sees what a proxy added). The request
id is the request's ``text`` (unary, server streaming) or the first message's ``text`` (client
and bidi streaming). The file outlives a restart, so "no call ran twice" holds across one.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

__all__ = ["main", "serve"]

READY = "READY "
DRAIN = "DRAIN"
DRAINING = "DRAINING"
QUIET_CHECKS = 2


def _peek(request_iterator: Iterator[Any]) -> tuple[str, Iterator[Any]]:
    """The first message's text, and an iterator that still yields every message."""
    first = next(request_iterator, None)
    if first is None:
        return "", iter(())

    def chained() -> Iterator[Any]:
        yield first
        yield from request_iterator

    return first.text, chained()


def _text_metadata(metadata: Any) -> dict[str, str]:
    """The call's text metadata; a key sent several times joined with ", ", as HTTP folds
    repeated fields (RFC 9110 §5.3), so a test sees every value a proxy let through."""
    folded: dict[str, list[str]] = {}
    for key, value in metadata:
        if not key.endswith("-bin"):
            folded.setdefault(key, []).append(str(value))
    return {key: ", ".join(values) for key, values in folded.items()}


def _counting_servicer(base: type, name: str, count_file: str | None) -> Any:
    """An ``EchoServicer`` that logs every handler execution before running it."""
    import rpcsec
    from rpcsec.grpc import unverified_metadata
    from rpcsec.grpc._servicer_context import VerifiedContext

    descriptor = None
    if count_file:
        descriptor = os.open(count_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def record(method: str, request_id: str, context: Any) -> None:
        if descriptor is None:
            return
        token = rpcsec.current_token()
        line = {
            "replica": name,
            "method": method,
            "id": request_id,
            "principal": token.principal if token is not None else "",
            # The metadata the handler sees (for rpcsec: what the client signed), and what
            # nobody signed (what the proxy in front added: x-forwarded-for, ...); binary
            # values left out.
            "metadata": _text_metadata(context.invocation_metadata()),
            "unverified": _text_metadata(
                unverified_metadata(context) if isinstance(context, VerifiedContext) else ()
            ),
        }
        os.write(descriptor, (json.dumps(line) + "\n").encode())

    class CountingEchoServicer(base):  # type: ignore[misc, valid-type]
        def Say(self, request: Any, context: Any) -> Any:
            record("Say", request.text, context)
            return super().Say(request, context)

        def Repeat(self, request: Any, context: Any) -> Iterator[Any]:
            record("Repeat", request.text, context)
            return super().Repeat(request, context)

        def Collect(self, request_iterator: Iterator[Any], context: Any) -> Any:
            request_id, messages = _peek(request_iterator)
            record("Collect", request_id, context)
            return super().Collect(messages, context)

        def Chat(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
            request_id, messages = _peek(request_iterator)
            record("Chat", request_id, context)
            return super().Chat(messages, context)

    return CountingEchoServicer()


def _health_server(port: int) -> tuple[Any, Any, int]:
    """The standard health service on its own plaintext port: (server, servicer, port). The
    servicer counts the checks it answered NOT_SERVING (``not_serving_answers``)."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    class CountingHealthServicer(health.HealthServicer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.not_serving_answers = threading.Semaphore(0)

        def Check(self, request: Any, context: Any) -> Any:
            response = super().Check(request, context)
            if response.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                self.not_serving_answers.release()
            return response

    servicer = CountingHealthServicer()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)]
    )
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        raise SystemExit(f"cannot listen for health checks on port {port}")
    server.start()
    return server, servicer, bound


class _CallCounter:
    """A server interceptor that counts every call that arrives (any method, before any other
    interceptor runs): how the drain tells that balancers stopped sending."""

    def __init__(self) -> None:
        import grpc

        self.calls = 0

        class Interceptor(grpc.ServerInterceptor):  # type: ignore[misc]
            def intercept_service(inner: Any, continuation: Any, details: Any) -> Any:
                self.calls += 1  # one int store under the GIL: exact enough
                return continuation(details)

        self.interceptor = Interceptor()


def serve(spec: dict[str, Any], stop: threading.Event, drain: threading.Event) -> None:
    import grpc
    from grpc_health.v1 import health_pb2

    from helpers.echo import EchoServicer
    from helpers.grpc_setup import add_services

    arrivals = _CallCounter()
    interceptors: list[Any] = [arrivals.interceptor]
    security = spec.get("security")
    if security:
        from rpcsec.grpc import SecurityInterceptor
        from rpcsec.sspi import CredentialUse, acquire_credentials_handle

        credentials = acquire_credentials_handle(
            security["package"],
            security.get("principal"),
            CredentialUse.INBOUND,
            **security.get("options", {}),
        )
        interceptors.append(SecurityInterceptor(credentials, **spec.get("interceptor_kwargs", {})))
    max_workers = int(spec.get("max_workers", 16))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=interceptors,
        # A restarted replica takes its old port back; no other process may share it.
        options=[("grpc.so_reuseport", 0)],
    )
    servicer = _counting_servicer(EchoServicer, spec["name"], spec.get("count_file"))
    add_services(server, [servicer])
    port = server.add_insecure_port(f"127.0.0.1:{int(spec.get('port', 0))}")
    if port == 0:
        raise SystemExit(f"replica {spec['name']}: cannot listen on port {spec.get('port')}")
    server.start()
    health_server, health, health_port = _health_server(int(spec.get("health_port", 0)))
    health.set("", health_pb2.HealthCheckResponse.SERVING)
    ready = {"name": spec["name"], "port": port, "health_port": health_port, "pid": os.getpid()}
    _say(READY + json.dumps(ready))

    def on_drain() -> None:
        drain.wait()
        health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        health.not_serving_answers.acquire()
        quiet = 0
        while quiet < QUIET_CHECKS and not stop.is_set():
            before = arrivals.calls
            health.not_serving_answers.acquire()
            quiet = quiet + 1 if arrivals.calls == before else 0
        if not stop.is_set():
            _say(DRAINING)

    threading.Thread(target=on_drain, name="replica-drain", daemon=True).start()
    try:
        stop.wait()
    finally:
        health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        grace = spec.get("grace")
        server.stop(grace=None if grace is None else float(grace)).wait()
        health_server.stop(None).wait()


_SAY_LOCK = threading.Lock()


def _say(line: str) -> None:
    with _SAY_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> int:
    spec = json.loads(sys.stdin.readline())
    stop = threading.Event()
    drain = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    def watch_stdin() -> None:
        for line in sys.stdin:  # ends at end of file: the parent closed the pipe or died
            if line.strip() == DRAIN:
                drain.set()
        stop.set()

    threading.Thread(target=watch_stdin, name="replica-stdin", daemon=True).start()
    serve(spec, stop, drain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
