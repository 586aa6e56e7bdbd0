"""``python -m benchmarks._remote_client``: a configuration's client in a process of its own.

The decomposition (``_decomposition``) runs rpcsec with its AEAD calls replaced by a no-op, a
monkeypatch that must never reach the suite's process (where the shipped configurations'
clients run). So every row of the decomposition gets a client process like this one, patched
or not, identical otherwise, and the rows compare like with like.

Protocol (stdin/stdout lines, JSON):

* stdin, first line: the spec -- ``kind`` (``plain``: an insecure channel; ``wrap``: the same
  through ``_wrapping.WrappedClient`` with ``shape``; ``rpcsec``: ``secure_channel`` with
  ``identity`` and ``protection``), ``address``, ``noop_aead``. stdout: ``READY``.
* then commands: ``{"warm": true}`` (one call; with ``noop_aead``, the seam check too), and
  ``{"run": KEY, "budget": {...}, "slices": N}`` runs workload ``KEY`` of ``_workloads`` once;
  with ``glue_timing`` in the spec, ``{"glue": N}`` makes N calls and returns the client's
  timed seams (``_glue_timing``).
  While it runs, the child asks for the server's CPU seconds with ``{"ask": "cpu"}`` and reads
  ``{"cpu": s}``; it ends with ``{"result": ...}`` or ``{"error": text}``.

No rpcsec import at the top: with ``noop_aead`` the patch goes in before rpcsec is imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from typing import IO, Any

__all__ = ["RemoteClient"]

READY = "READY"
START_TIMEOUT = 120.0


class RemoteClient:
    """The parent's handle on one client process."""

    def __init__(self, spec: dict[str, Any], server_cpu: Callable[[], float]) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self._server_cpu = server_cpu
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._remote_client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
            cwd=root,
        )
        try:
            self._send(spec)
            line = self._line()
            if line != READY:
                raise RuntimeError(f"client process did not start: {line[:200]!r}")
        except BaseException:
            self.stop()
            raise

    def _send(self, message: dict[str, Any]) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(json.dumps(message) + "\n")
        stdin.flush()

    def _line(self) -> str:
        stdout = self._process.stdout
        assert stdout is not None
        line = stdout.readline()  # the child answers every command; it dies -> EOF
        if not line:
            raise RuntimeError(f"client process exited (code {self._process.poll()})")
        return line.rstrip("\n")

    def request(self, message: dict[str, Any]) -> Any:
        """Send one command, answer its CPU questions, return its result."""
        with self._lock:
            self._send(message)
            while True:
                reply = json.loads(self._line())
                if "ask" in reply:
                    self._send({"cpu": self._server_cpu()})
                elif "error" in reply:
                    raise RuntimeError(reply["error"])
                else:
                    return reply["result"]

    def warm(self) -> Any:
        return self.request({"warm": True})

    def run(self, key: str, budget: Any, slices: int) -> Any:
        return self.request({"run": key, "budget": budget.__dict__, "slices": slices})

    def stop(self) -> None:
        process = self._process
        if process.stdin is not None and not process.stdin.closed:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _channel(spec: dict[str, Any]) -> tuple[Callable[[], Any], Any]:
    """(fresh channel maker, identity or None) for the spec's kind."""
    import grpc

    from ._configs import FRESH, PackageIdentity

    address, kind = spec["address"], spec["kind"]
    if kind == "plain":
        return lambda: grpc.insecure_channel(address, options=FRESH), None
    if kind == "wrap":
        from ._wrapping import Shape, WrappedClient

        shape = Shape.from_json(spec["shape"])
        return lambda: WrappedClient(grpc.insecure_channel(address, options=FRESH), shape), None
    if kind == "rpcsec":
        from rpcsec.grpc import secure_channel
        from rpcsec.sspi import ContextReq, ProtectionLevel

        identity = PackageIdentity.from_json(spec["identity"])
        credentials = identity.client()
        protection = ProtectionLevel[spec["protection"]]

        def fresh() -> Any:
            return secure_channel(
                address,
                credentials,
                target_name=identity.target,
                requirements=ContextReq(identity.requirements),
                protection=protection,
                options=FRESH,
            )

        return fresh, identity
    raise ValueError(f"unknown client kind {kind!r}")


def serve(spec: dict[str, Any], commands: IO[str], replies: IO[str]) -> None:
    """The child: build the configuration, answer commands until end of input."""
    if spec.get("noop_aead"):
        from ._noop_aead import install

        install()
    if spec.get("glue_timing"):
        from . import _glue_timing

        _glue_timing.install_aead_timer()  # before anything imports rpcsec
        _glue_timing.install(_glue_timing.CLIENT_SEAMS)
    from ._configs import Config
    from ._service import UNARY_METHOD
    from ._workloads import WORKLOADS, Budget

    def say(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    def server_cpu() -> float:
        say({"ask": "cpu"})
        return float(json.loads(commands.readline())["cpu"])

    fresh, identity = _channel(spec)
    config = Config(spec["name"], spec["name"], fresh, server_cpu, identity=identity)
    workloads = {workload.key: workload for workload in WORKLOADS}
    say_ready = READY + "\n"
    replies.write(say_ready)
    replies.flush()
    try:
        for line in commands:
            command = json.loads(line)
            try:
                if command.get("warm"):
                    config.channel.unary_unary(UNARY_METHOD)(b"warm")
                    result: Any = None
                    if spec.get("noop_aead"):
                        from ._noop_aead import CALLS, verify

                        verify()
                        result = {"aead_calls": CALLS[0]}
                elif "glue" in command:
                    result = _glue(config, int(command["glue"]))
                else:
                    budget = Budget(**command["budget"])
                    result = workloads[command["run"]].run(config, budget, command["slices"])
            except Exception as exc:
                say({"error": "".join(traceback.format_exception_only(type(exc), exc)).strip()})
                continue
            say({"result": result})
    finally:
        config.close()


def _glue(config: Any, calls: int) -> dict[str, Any]:
    """``calls`` sequential unary calls; the timed seams' sums for them."""
    from . import _glue_timing
    from ._service import UNARY_METHOD
    from ._workloads import PAYLOAD

    call = config.channel.unary_unary(UNARY_METHOD)
    _glue_timing.reset()
    for _ in range(calls):
        call(PAYLOAD)
    return _glue_timing.snapshot()


def main() -> int:
    spec = json.loads(sys.stdin.readline())
    serve(spec, sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
