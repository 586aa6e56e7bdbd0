"""``python -m benchmarks._server``: the suite's echo servers, in a process of their own.

Client and server never share an interpreter in a real deployment. In one process they share
one GIL, so every microsecond of Python work rpcsec adds on one side also delays the other, and
the numbers charge rpcsec for contention that does not exist in production. So the suite runs
all its servers -- the plain and gRPC TLS ports and rpcsec's ``secure_server()`` --
in ONE child process (the same interpreter, the same allocator environment), every
configuration alike.

Protocol, all on the child's stdin/stdout (its stderr is the suite's):

* stdin, first line: the spec as JSON -- the TLS key pair and roots (PEM text), the package
  identities (``PackageIdentity`` fields: credentials options such as the authority directory,
  the NTLM user file, the Kerberos keytab and replay cache). It holds keys, so it never goes on
  the command line. ``KRB5_CONFIG`` comes in the environment (libkrb5 reads nothing else).
* stdout: ``READY {"plain": port, "tls": port, "rpcsec": port}`` once every server listens.
* then one command per stdin line, one JSON answer line each: ``stats`` returns the CPU seconds
  (``thread_time``) each server's thread pool has spent so far, ``{"plain": s, "rpcsec": s}``
  (the plain and TLS ports share the ``plain`` pool). ``stop``, or end of input (the suite
  died), stops the servers and exits.
* the decomposition (``_decomposition``) asks for more in the spec: ``noop_aead`` (this
  process runs rpcsec with the AEAD calls replaced by a no-op, ``_noop_aead``; command
  ``verify_noop`` checks the seam held) and ``ladder`` (a ``capture`` port recording the shape
  of rpcsec's calls, and on command ``wrap`` the two re-wrapped servers of ``_wrapping``,
  their pools added to ``stats``); ``glue_timing`` (rpcsec's server path timed in place,
  ``_glue_timing``; commands ``glue`` and ``glue_reset``).

The control channel is a pipe served by the child's main thread, not an RPC: it runs outside
the servers' thread pools, so asking for the CPU time does not add to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

__all__ = ["ServerProcess", "answer_commands", "serve"]

READY = "READY "
START_TIMEOUT = 120.0
REPLY_TIMEOUT = 30.0


def serve(spec: dict[str, Any], commands: IO[str], replies: IO[str]) -> None:
    """Start the servers ``spec`` describes, answer ``commands`` until ``stop`` or EOF."""
    import grpc

    from ._configs import PackageIdentity
    from ._service import start_server

    max_workers = int(spec["max_workers"])
    tls = grpc.ssl_server_credentials(
        [(spec["tls_key"].encode(), spec["tls_certificate"].encode())],
        root_certificates=spec["tls_root"].encode(),
        require_client_auth=True,
    )
    identities = [PackageIdentity(**fields) for fields in spec["identities"]]
    base, base_pool, plain_port, tls_port = start_server(max_workers=max_workers, tls=tls)
    servers = [base]
    try:
        credentials = [identity.server() for identity in identities]
        rpcsec, rpcsec_pool, rpcsec_port = _rpcsec_server(
            credentials,
            max_workers,
            spec.get("interceptor_kwargs", {}),
            spec.get("replay_store_timeout"),
        )
        servers.append(rpcsec)
        ports = {"plain": plain_port, "tls": tls_port, "rpcsec": rpcsec_port}
        pools: dict[str, Any] = {"plain": base_pool, "rpcsec": rpcsec_pool}
        extra: dict[str, Callable[[], dict[str, Any]]] = {}
        if spec.get("noop_aead"):
            extra["verify_noop"] = _verify_noop
        if spec.get("glue_timing"):
            from . import _glue_timing

            extra["glue"] = _glue_timing.snapshot
            extra["glue_reset"] = _glue_timing.reset
        if spec.get("ladder"):
            extra.update(_ladder_servers(credentials, max_workers, servers, ports, pools))
        extra["style"] = lambda: {"rpcsec_style": rpcsec_style(rpcsec)}
        answer_commands(
            ports,
            lambda: {name: pool.cpu_seconds for name, pool in list(pools.items())},
            commands,
            replies,
            extra,
        )
    finally:
        for server in servers:
            server.stop(None)


RPCSEC_POOL = "rpcsec"
"""The thread name prefix of ``secure_server()``'s pool (``ThreadPoolExecutor`` workers are
``rpcsec_N``); the suite checks every server it calls shows CPU, so a change fails loudly."""


def _rpcsec_server(
    credentials: list[Any],
    max_workers: int,
    options: dict[str, Any],
    store_timeout: float | None = None,
) -> tuple[Any, Any, int]:
    """The rpcsec server as users deploy it: ``secure_server()`` (whatever it does today --
    a per-call interceptor, or handlers protected once when registered), the echo service
    registered on it. ``options``: a deployment's (a ticket key ring, a replay store URL);
    ``store_timeout``: the Redis replay store's timeout for that URL (``RedisReplayStore``)."""
    from rpcsec.grpc import secure_server

    from ._service import ThreadCpu, echo_handler

    options = dict(options)
    if store_timeout is not None and isinstance(options.get("replay_store"), str):
        from rpcsec.session import RedisReplayStore

        options["replay_store"] = RedisReplayStore(options["replay_store"], timeout=store_timeout)

    server = secure_server(
        credentials,
        max_workers=max_workers,
        options=[("grpc.so_reuseport", 0)],
        max_handshakes=max_workers // 2,
        **options,
    )
    server.add_generic_rpc_handlers((echo_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, ThreadCpu(RPCSEC_POOL), port


def rpcsec_style(server: Any) -> str:
    """``registration`` if ``secure_server()`` returned a server of rpcsec's own (handlers
    protected once when registered), ``interceptor`` if gRPC's (a per-call interceptor)."""
    return "registration" if type(server).__module__.startswith("rpcsec") else "interceptor"


def _verify_noop() -> dict[str, Any]:
    from ._noop_aead import CALLS, verify

    try:
        verify()
    except RuntimeError as exc:
        return {"error": str(exc)}
    return {"aead_calls": CALLS[0]}


def _ladder_servers(
    credentials: list[Any],
    max_workers: int,
    servers: list[Any],
    ports: dict[str, Any],
    pools: dict[str, Any],
) -> dict[str, Callable[[], dict[str, Any]]]:
    """The decomposition's servers in this process (``_wrapping``): ``capture`` (a
    ``ShapeRecorder`` before a real ``SecurityInterceptor``) now; the two re-wrapped servers
    on the ``wrap`` command, with the shape of the last call ``capture`` served."""
    from rpcsec.grpc import SecurityInterceptor

    from ._service import SERVICE, echo_methods, start_server
    from ._workloads import PAYLOAD
    from ._wrapping import Shape, ShapeRecorder, wrapped_generic_handler, wrapped_interceptor

    recorder = ShapeRecorder(len(PAYLOAD))
    capture, _pool, ports["capture"], _ = start_server(
        [recorder, SecurityInterceptor(credentials, max_handshakes=2)], max_workers=4
    )
    servers.append(capture)

    def wrap() -> dict[str, Any]:
        if not recorder.shapes:
            return {"error": "wrap: no rpcsec call reached the capture server"}
        if "wrap_generic" in ports:
            return {"error": "wrap: already started"}
        shape: Shape = recorder.shapes[-1]
        generic = wrapped_generic_handler(shape, SERVICE, echo_methods())
        server, pool, ports["wrap_generic"], _ = start_server(
            max_workers=max_workers, handlers=generic
        )
        servers.append(server)
        pools["wrap_generic"] = pool
        server, pool, ports["wrap_interceptor"], _ = start_server(
            [wrapped_interceptor(shape)], max_workers=max_workers
        )
        servers.append(server)
        pools["wrap_interceptor"] = pool
        return {
            "shape": shape.to_json(),
            "ports": {k: ports[k] for k in ("wrap_generic", "wrap_interceptor")},
        }

    return {"wrap": wrap}


def answer_commands(
    ports: dict[str, Any],
    stats: Callable[[], dict[str, float]],
    commands: IO[str],
    replies: IO[str],
    extra: dict[str, Callable[[], dict[str, Any]]] | None = None,
) -> None:
    """The child's side of the protocol once its servers listen: the READY line, then one
    answer per command until ``stop`` or end of input. Shared by every server process of the
    suite (``_alternatives`` runs one too). ``extra``: more commands, each answering one
    JSON object."""
    replies.write(READY + json.dumps(ports) + "\n")
    replies.flush()
    for line in commands:
        command = line.strip()
        if command == "stats":
            replies.write(json.dumps(stats()) + "\n")
            replies.flush()
        elif command == "stop":
            break
        elif extra and command in extra:
            replies.write(json.dumps(extra[command]()) + "\n")
            replies.flush()
        else:
            replies.write(json.dumps({"error": f"unknown command {command!r}"}) + "\n")
            replies.flush()


class ServerProcess:
    """The parent's handle on the server process: start it, read its CPU time, stop it.
    ``module`` is the child to run (``python -m MODULE``, speaking the protocol above)."""

    def __init__(
        self, spec: dict[str, Any], env: dict[str, str], module: str = "benchmarks._server"
    ) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            [sys.executable, "-m", module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
            cwd=root,
        )
        try:
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps(spec) + "\n")
            self._process.stdin.flush()
            line = self._read_line(START_TIMEOUT)
            if not line.startswith(READY):
                raise RuntimeError(f"server process did not start: {line[:200]!r}")
            self.ports: dict[str, int] = json.loads(line[len(READY) :])
        except BaseException:
            self.stop()
            raise

    def _read_line(self, timeout: float) -> str:
        stdout = self._process.stdout
        assert stdout is not None
        # Replies come one line per request, so nothing is ever left in the reader's buffer
        # and waiting on the file descriptor is exact.
        ready, _, _ = select.select([stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"server process did not answer within {timeout:.0f} s")
        line = stdout.readline()
        if not line:
            code = self._process.poll()
            raise RuntimeError(f"server process exited (code {code}); its stderr is above")
        return line.rstrip("\n")

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds each server pool has spent so far: ``{"plain": s, "rpcsec": s}``."""
        with self._lock:
            stdin = self._process.stdin
            assert stdin is not None
            stdin.write("stats\n")
            stdin.flush()
            reply = json.loads(self._read_line(REPLY_TIMEOUT))
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return {name: float(value) for name, value in reply.items()}

    def command(self, name: str) -> dict[str, Any]:
        """One of the extra commands (``verify_noop``, ``wrap``); raises on an error reply."""
        with self._lock:
            stdin = self._process.stdin
            assert stdin is not None
            stdin.write(name + "\n")
            stdin.flush()
            reply: dict[str, Any] = json.loads(self._read_line(REPLY_TIMEOUT))
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the process to stop; terminate (then kill) it if it does not."""
        process = self._process
        if process.poll() is None:
            with contextlib.suppress(OSError):  # BrokenPipeError: it is gone already
                assert process.stdin is not None
                process.stdin.write("stop\n")
                process.stdin.close()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()


def main() -> int:
    spec = json.loads(sys.stdin.readline())
    if spec.get("noop_aead"):  # before anything imports rpcsec
        from ._noop_aead import install

        install()
    if spec.get("glue_timing"):
        from . import _glue_timing

        _glue_timing.install_aead_timer()  # before anything imports rpcsec
        _glue_timing.install()
    serve(spec, sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
