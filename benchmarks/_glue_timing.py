"""The rpcsec server's per-call glue, timed in place (part of the decomposition).

Method: a server process of its own (``_server`` with ``glue_timing`` in its spec) replaces
named functions of rpcsec's server path with wrappers that add up ``time.perf_counter_ns``
around each call (inclusive: a part that calls another includes it), and ``cryptography``'s
``AESGCM`` with a class that times each real ``encrypt``/``decrypt`` (installed before rpcsec
is imported, as ``_noop_aead`` does). The client side is timed the same way in a client
process of its own (``_remote_client`` with ``glue_timing``, ``CLIENT_SEAMS``), calling the
timed server: sequential unary 100 B calls, then the sums of both ends: µs per call and calls
per call of each part.
Nothing in rpcsec/ changes; the timed server is never one whose numbers the other rows use.

The seams are rpcsec internals the hot path work renames: a seam that is gone is reported as
*not found*, one never called (e.g. ``intercept_service`` once handlers are registered once) as
*0 calls* -- never as a number it did not measure. Each wrapper costs ~0.5-1 µs of its own
(``overhead_ns``, calibrated in the same process), which the enclosing parts include; the
calls are sequential, one client thread.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["CLIENT_SEAMS", "SEAMS", "install", "install_aead_timer", "reset", "snapshot"]

_SERVER, _CORE = "rpcsec.grpc._server", "rpcsec.grpc._server_core"
_CONTEXT = "rpcsec.sspi._context"
_INTERCEPT, _OLD_ADMIT = "SecurityInterceptor.intercept_service", "ServerSecurity._admit"
_OPEN_CALL = "_Multicallable._open_call"
_RUN_AS = (_SERVER, "run_as", "runner")
_TICKET_OPEN, _TABLE_OPEN = "TicketClientProtection.open", "ClientCallProtection.open"
Seam = tuple[str, list[tuple[str, ...]], str]
"""(label, candidates (module, attribute path[, kind]) newest first -- the first that exists is
timed, kind: "call", "context manager" or "runner"; a candidate's own kind overrides the
seam's)."""
SEAMS: list[Seam] = [
    ("intercept_service (poller thread)", [(_SERVER, _INTERCEPT)], "call"),
    ("admission, whole", [(_CORE, "ServerSecurity.open_unary")], "call"),
    ("context lookup: metadata scan, table/ticket", [(_CORE, "ServerSecurity._find")], "call"),
    ("request verify", [(_CORE, "ServerSecurity.verify_unary"), (_CORE, "_open_request")], "call"),
    ("core unwrap (DecryptMessage / verify)", [(_CONTEXT, "SecurityContext.unwrap")], "call"),
    ("core sign (MakeSignature)", [(_CONTEXT, "SecurityContext.sign")], "call"),
    ("replay window", [("rpcsec.sspi._replay", "ReplayWindow.check")], "call"),
    ("replay store claim (in-memory store)",
     [("rpcsec.session._replay_store", "MemoryReplayStore.claim")], "call"),
    ("claim + authorize", [(_CORE, "ServerSecurity.admit"), (_CORE, _OLD_ADMIT)], "call"),
    ("policy check", [("rpcsec.grpc._policy", "AuthorizationPolicy.check")], "call"),
    ("impersonation set + reset", [_RUN_AS, (_SERVER, "impersonate")], "context manager"),
    ("status signing", [("rpcsec.grpc._servicer_context", "VerifiedContext.seal_status")], "call"),
    ("response sealing", [(_CORE, "ServerCall.seal_response")], "call"),
]  # fmt: skip
_CLIENT, _CALLS = "rpcsec.grpc._client", "rpcsec.grpc._calls"
_RESPONSES = "rpcsec.grpc._responses"
_PREPARED = ("rpcsec.grpc._binding", "PreparedMethod.__init__")
CLIENT_SEAMS: list[Seam] = [
    ("whole unary call (incl. gRPC's with_call)",
     [(_CLIENT, "_UnaryUnary.__call__"), (_CLIENT, "_UnaryUnary._invoke")], "call"),
    ("open call: binding, sequence, request token",
     [(*_PREPARED, "prepared wrap"), (_CLIENT, _OPEN_CALL)], "call"),
    ("core wrap (EncryptMessage / sign)", [(_CONTEXT, "SecurityContext.wrap")], "call"),
    ("metadata merge", [(_CLIENT, "_merge")], "call"),
    ("response open",
     [(*_PREPARED, "prepared open_ok"), (_RESPONSES, _TICKET_OPEN), (_CALLS, _TABLE_OPEN)],
     "call"),
    ("status check", [(_CLIENT, "checked_status")], "call"),
]  # fmt: skip
AEAD_LABEL = "AES-GCM/GMAC calls (cryptography AESGCM)"

_SUMS: dict[str, list[int]] = {}
_MISSING: list[str] = []
_WHERE: dict[str, str] = {AEAD_LABEL: "cryptography AESGCM.encrypt/decrypt"}
_LOCK = threading.Lock()
_OVERHEAD = [0]


def _add(label: str, spent: int) -> None:
    # No lock (it would cost more than what it protects): the timed calls are sequential.
    entry = _SUMS[label]
    entry[0] += 1
    entry[1] += spent


def _timed_call(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
    clock = time.perf_counter_ns

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return function(*args, **kwargs)
        finally:
            _add(label, clock() - start)

    timed.__wrapped__ = function  # type: ignore[attr-defined]
    return timed


def _timed_context_manager(label: str, factory: Callable[..., Any]) -> Callable[..., Any]:
    """Times the manager's making, ``__enter__`` and ``__exit__``, not the body."""
    clock = time.perf_counter_ns

    @contextlib.contextmanager
    def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
        start = clock()
        manager = factory(*args, **kwargs)
        value = manager.__enter__()
        entered = clock() - start
        try:
            yield value
        except BaseException as exc:
            start = clock()
            if not manager.__exit__(type(exc), exc, exc.__traceback__):
                _add(label, entered + clock() - start)
                raise
            _add(label, entered + clock() - start)
        else:
            start = clock()
            manager.__exit__(None, None, None)
            _add(label, entered + clock() - start)

    return timed


def install_aead_timer() -> None:
    """Before rpcsec is imported: ``AESGCM`` whose instances time the real calls."""
    from cryptography.hazmat.primitives.ciphers import aead

    real = aead.AESGCM
    _SUMS[AEAD_LABEL] = [0, 0]
    clock = time.perf_counter_ns

    class TimedAESGCM:
        __slots__ = ("_real",)

        def __init__(self, key: bytes) -> None:
            self._real = real(key)

        @staticmethod
        def generate_key(bit_length: int) -> bytes:
            return real.generate_key(bit_length)

        def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
            start = clock()
            try:
                return self._real.encrypt(nonce, data, associated_data)
            finally:
                _add(AEAD_LABEL, clock() - start)

        def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
            start = clock()
            try:
                return self._real.decrypt(nonce, data, associated_data)
            finally:
                _add(AEAD_LABEL, clock() - start)

    aead.AESGCM = TimedAESGCM  # type: ignore[misc,assignment]


def _timed_runner(label: str, run: Callable[..., Any]) -> Callable[..., Any]:
    """Times ``run(token, fn, *args)`` (``run_as``: impersonation around one call) without the
    time ``fn`` itself takes, as ``_timed_context_manager`` leaves out the body."""
    clock = time.perf_counter_ns

    def timed(token: Any, fn: Callable[..., Any], *args: Any) -> Any:
        inner = [0]

        def body(*body_args: Any) -> Any:
            start = clock()
            try:
                return fn(*body_args)
            finally:
                inner[0] = clock() - start

        start = clock()
        try:
            return run(token, body, *args)
        finally:
            _add(label, clock() - start - inner[0])

    timed.__wrapped__ = run  # type: ignore[attr-defined]
    return timed


def _timed_attribute(attribute: str) -> Callable[[str, Callable[..., Any]], Callable[..., Any]]:
    """For an ``__init__`` whose instance holds the per-call function as ``attribute`` (the
    client's ``PreparedMethod``: its one-frame ``wrap`` / ``open_ok``, made once per method):
    each instance's function is timed as a "call"."""

    def wrapper(label: str, init: Callable[..., Any]) -> Callable[..., Any]:
        def timed_init(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            setattr(self, attribute, _timed_call(label, getattr(self, attribute)))

        timed_init.__wrapped__ = init  # type: ignore[attr-defined]
        return timed_init

    return wrapper


_WRAPPERS: dict[str, Callable[[str, Callable[..., Any]], Callable[..., Any]]] = {
    "call": _timed_call,
    "context manager": _timed_context_manager,
    "runner": _timed_runner,
    "prepared wrap": _timed_attribute("wrap"),
    "prepared open_ok": _timed_attribute("open_ok"),
}


def install(seams: list[Seam] | None = None) -> None:
    """Wrap, for every part, the first candidate that exists (default: the server's parts);
    remember the parts none of whose candidates exist."""
    for label, candidates, kind in SEAMS if seams is None else seams:
        for module_name, path, *own_kind in candidates:
            try:
                owner: Any = importlib.import_module(module_name)
                *parents, name = path.split(".")
                for part in parents:
                    owner = getattr(owner, part)
                original = getattr(owner, name)
            except (ImportError, AttributeError):
                continue
            _SUMS[label] = [0, 0]
            _WHERE[label] = f"{module_name}.{path}"
            wrap = _WRAPPERS[own_kind[0] if own_kind else kind]
            setattr(owner, name, wrap(label, original))
            break
        else:
            names = ", ".join(f"{candidate[0]}.{candidate[1]}" for candidate in candidates)
            _MISSING.append(f"{label}: {names} not found")
    _OVERHEAD[0] = _calibrate()


def _calibrate() -> int:
    """ns a timed wrapper adds around a function that does nothing (median of batches)."""

    def nothing() -> None:
        return None

    _SUMS["_calibration"] = [0, 0]
    timed = _timed_call("_calibration", nothing)
    samples = []
    for _ in range(15):
        start = time.perf_counter_ns()
        for _ in range(2000):
            timed()
        spent = time.perf_counter_ns() - start
        start = time.perf_counter_ns()
        for _ in range(2000):
            nothing()
        samples.append((spent - (time.perf_counter_ns() - start)) // 2000)
    del _SUMS["_calibration"]
    samples.sort()
    return int(samples[len(samples) // 2])


def reset() -> dict[str, Any]:
    with _LOCK:
        for entry in _SUMS.values():
            entry[0] = entry[1] = 0
    return {"reset": True}


def snapshot() -> dict[str, Any]:
    """``{"parts": {label: [calls, ns]}, "where": {label: function}, "missing": [...],
    "overhead_ns": n}``."""
    with _LOCK:
        parts = {label: list(entry) for label, entry in _SUMS.items()}
    return {
        "parts": parts,
        "where": dict(_WHERE),
        "missing": list(_MISSING),
        "overhead_ns": _OVERHEAD[0],
    }
