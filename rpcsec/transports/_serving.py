"""What the socket and HTTP servers share at the edge: a bound on connections served at once.

A flood of connections must not exhaust threads: past ``max_connections`` a new connection
gets the server's short ``busy_reply`` (a sockauth ERROR frame, an HTTP 503) and is closed.
"""

from __future__ import annotations

import contextlib
import logging
import socketserver
import threading
from typing import Any

__all__ = ["BoundedConnections"]

log = logging.getLogger("rpcsec.transports")


class BoundedConnections(socketserver.ThreadingMixIn):
    """Mixin for a ``socketserver.ThreadingTCPServer``; call ``_limit_connections`` first."""

    busy_reply: bytes = b""
    _slots: threading.BoundedSemaphore

    def _limit_connections(self, max_connections: int) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("refusing %s: too many connections", client_address)
            with contextlib.suppress(OSError):
                request.settimeout(0)
                request.sendall(self.busy_reply)
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
