"""Run the programs in examples/ as a user would: real processes, real ports, READY lines.

``ExampleServer`` starts ``python examples/NAME.py ARGS`` and waits for its ``READY ADDRESS``
line on stdout (never a sleep); ``run_example`` runs a client to completion.
"""

from __future__ import annotations

import os
import pathlib
import queue
import subprocess
import sys
import threading

REPO = pathlib.Path(__file__).resolve().parent.parent.parent
EXAMPLES = REPO / "examples"
READY_TIMEOUT = 60.0


def example_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)  # an example runs with nothing but the installed rpcsec
    env.update(extra or {})
    return env


class ExampleServer:
    """A server example in its own process; ``address`` is what its READY line said."""

    def __init__(
        self, name: str, *args: str, cwd: pathlib.Path, env: dict[str, str] | None = None
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=example_env(env),
        )
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()
        self.address = self._wait_ready()

    def _pump_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.process.stderr is not None
        self.stderr.extend(self.process.stderr)

    def _wait_ready(self) -> str:
        while True:
            try:
                line = self.lines.get(timeout=READY_TIMEOUT)
            except queue.Empty:
                self.stop()
                raise AssertionError("example server printed no READY line") from None
            if line is None:
                self.process.wait(timeout=10)
                raise AssertionError(f"example server exited: {''.join(self.stderr)[-3000:]}")
            if line.startswith("READY "):
                return line.split()[1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ExampleServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_example(
    name: str, *args: str, cwd: pathlib.Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=example_env(env),
    )
