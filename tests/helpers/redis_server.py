"""A real ``redis-server`` for the replay-store tests (Debian ``redis-server``).

``RedisServer(directory).start()`` runs it on a free loopback port with its own temporary
directory and no persistence, and returns once the server logged "Ready to accept
connections" *and* answers PING (readiness, never a sleep). ``kill()`` ends it with SIGKILL
("Redis killed mid-traffic"); ``start()`` again brings it back on the same port, empty, as a
Redis restarted without its data. Without the binary the tests skip; with CI=true they fail.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import threading
import time

READY_LINE = "Ready to accept connections"
INSTALL_HINT = "apt-get install redis-server (scripts/system-deps.sh), pip install 'rpcsec[redis]'"


def redis_unavailable_reason() -> str | None:
    if shutil.which("redis-server") is None:
        return "redis-server not installed"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis client package is not installed"
    return None


def require_redis() -> None:
    """Skip the calling test (fail it when CI=true) unless a real Redis can run here."""
    import pytest

    reason = redis_unavailable_reason()
    if reason is None:
        return
    message = f"{reason}: {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Redis tests must run in CI: {message}")
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1; restartable on the same port."""

    def __init__(
        self, directory: pathlib.Path, *, timeout: float = 15.0, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.timeout = timeout
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[str] | None = None
        self._log: list[str] = []
        self._started = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        if self.process is not None:
            raise RuntimeError("redis-server already running")
        # A restart must come back on the same port (clients hold the URL); a first start
        # that lost a race for its port tries another.
        for _attempt in range(1 if self._started else 3):
            if self._start_once():
                self._started = True
                return self
            self.port = _free_port()
        raise RuntimeError("redis-server did not start:\n" + "".join(self._log[-20:]))

    def _start_once(self) -> bool:
        ready = threading.Event()
        command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

        def drain() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                self._log.append(line)
                if READY_LINE in line:
                    ready.set()
            ready.set()  # exited: wake the waiter, who sees the return code

        threading.Thread(target=drain, name="redis-log", daemon=True).start()
        if not ready.wait(self.timeout) or process.poll() is not None:
            process.kill()
            process.wait()
            return False
        self.process = process
        self._wait_ping()
        return True

    def _wait_ping(self) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-traffic, losing everything (no persistence)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def stop(self) -> None:
        self.kill()
