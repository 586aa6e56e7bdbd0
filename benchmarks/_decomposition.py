"""Where rpcsec's per-call cost goes, measured in the same run: plain gRPC to rpcsec, step by step.

Each row is a configuration of its own, measured in the same rotated, paired rounds as every
other (issue 14 item 4); every row's client runs in a client process of its own
(``_remote_client``), patched or not, identical otherwise:

1. ``ladder_plain``: plain gRPC (the main server process's plain port).
2. ``ladder_wrap_generic``: + the gRPC-level work of the wrapping, no security (``_wrapping``):
   the client wrapper, the ``-bin`` metadata and the extra message bytes of rpcsec's calls
   (sizes recorded from real rpcsec calls), a re-wrapped bytes-in/bytes-out handler registered
   once as a generic handler.
3. ``ladder_wrap_interceptor``: the same, the re-wrapped handler returned per call by a
   pass-through ``ServerInterceptor`` (the shape of rpcsec's ``SecurityInterceptor``).
   Beside them ``ladder_wrap_short_handle``: row 2 with the context entry cut to a 16 B
   table handle, pricing the ticket rpcsec sends on every call at the gRPC level.
4. ``ladder_noop_x509_*``: rpcsec x509 with every AEAD call a no-op (``_noop_aead``, in a
   server process and a client process of their own).
5. ``ladder_x509_*``: rpcsec x509 as shipped.

The steps of the chain (``chain``) are differences of the rows' medians over rounds (they add
up to the total), each with the median of the per-round differences beside it. The chain
goes through the wrapping row built the way the rpcsec server under test
(``secure_server()``) builds its own: row 2 if it protects handlers once when they are
registered, row 3 if it runs a per-call interceptor (``_server.rpcsec_style``); the difference
of rows 2 and 3 prices the per-call interceptor either way.

Then, once per run, both ends' glue timed in place (``_glue_timing``, ``measure_glue``): a
timed server process and timed client processes of their own, never the measured rows.
"""

from __future__ import annotations

import itertools
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._configs import Config, PackageIdentity, server_spec
from ._pki import BenchPki
from ._remote_client import RemoteClient
from ._server import ServerProcess

__all__ = [
    "LADDER_WORKLOADS",
    "Decomposition",
    "render_decomposition",
    "start_decomposition",
    "summarize",
]

LADDER_WORKLOADS = frozenset({"unary_latency_us", "server_cpu_per_call_us", "unary_throughput_cps"})
REMOTE_WORKLOADS = frozenset({"unary_latency_us", "unary_throughput_cps"})
"""Run in the client process; ``server_cpu_per_call_us`` is derived here from the latency run."""
LEVELS = ("integrity", "privacy")
INTERCEPTOR = ("ladder_wrap_generic", "ladder_wrap_interceptor")
"""The two wrapping rows whose difference prices the per-call interceptor."""
CONTEXT_ENTRY, SHORT_HANDLE_BYTES = "rpcsec-context-bin", 16
SHORT_HANDLE = ("ladder_wrap_short_handle", "ladder_wrap_generic")
"""The two wrapping rows whose difference prices the ticket-sized context entry (vs a 16 B
table handle) at the gRPC level."""
CAPTURE_CALLS = 5


def chain(level: str, style: str | None) -> list[tuple[str, str]]:
    """(row, what the step from the previous row adds) for one protection level; ``style``:
    how the rpcsec server under test puts its handlers in front of the service
    (``_server.rpcsec_style``), so the wrapping row is the one built the same way."""
    wrap = "ladder_wrap_generic" if style == "registration" else "ladder_wrap_interceptor"
    how = "generic handler" if style == "registration" else "per-call interceptor"
    return [
        ("ladder_plain", "plain gRPC"),
        (wrap, f"gRPC-level work of the wrapping, no security ({how})"),
        (f"ladder_noop_x509_{level}", "rpcsec's Python glue (AEAD calls a no-op)"),
        (f"ladder_x509_{level}", "the AEAD calls (AES-GCM/GMAC)"),
    ]


@dataclass
class Decomposition:
    configs: list[Config] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shape: dict[str, Any] | None = None
    """What the re-wrapped rows carry (``_wrapping.Shape``), as recorded from rpcsec calls."""
    _stops: list[Callable[[], None]] = field(default_factory=list, repr=False)
    glue_spec: dict[str, Any] | None = field(default=None, repr=False)
    glue_identity: PackageIdentity | None = None

    def measure_glue(self, calls: int) -> dict[str, Any]:
        """Both ends' glue timed in place (``_glue_timing``): a timed server process of its
        own, and per protection level a timed client process of its own making ``calls``
        sequential unary 100 B calls to it."""
        assert self.glue_spec is not None and self.glue_identity is not None
        process = ServerProcess(self.glue_spec, dict(os.environ))
        result: dict[str, Any] = {"calls": calls, "levels": {}, "client": {}}
        try:
            for level in LEVELS:
                client = RemoteClient(
                    {
                        "name": f"glue_{level}",
                        "kind": "rpcsec",
                        "address": f"127.0.0.1:{process.ports['rpcsec']}",
                        "identity": self.glue_identity.to_json(),
                        "protection": level.upper(),
                        "glue_timing": True,
                    },
                    lambda: 0.0,
                )
                try:
                    client.warm()
                    client.request({"glue": 50})  # warm-up, not counted
                    process.command("glue_reset")
                    mine = client.request({"glue": calls})
                    server = process.command("glue")
                finally:
                    client.stop()
                result["levels"][level] = _per_call(server, calls)
                result["client"][level] = _per_call(mine, calls)
                result["missing"] = server["missing"] + mine["missing"]
                result["where"] = {"server": server["where"], "client": mine["where"]}
                result["overhead_ns"] = server["overhead_ns"]
        finally:
            process.stop()
        return result

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


def _per_call(measured: dict[str, Any], calls: int) -> dict[str, Any]:
    """{label: {"per_call": calls per call, "us": µs per call}} of one end's sums (both ends
    reset right before the ``calls`` timed calls)."""
    return {
        label: {"per_call": count / calls, "us": total / calls / 1000}
        for label, (count, total) in measured["parts"].items()
    }


def _short_handle(shape: dict[str, Any]) -> dict[str, Any]:
    """``shape`` with the context entry cut to a table handle's size: what sending the whole
    ticket on every call costs gRPC, beside ``ladder_wrap_generic``."""
    entries = [
        [key, SHORT_HANDLE_BYTES if key == CONTEXT_ENTRY else size]
        for key, size in shape["request_metadata"]
    ]
    return {**shape, "request_metadata": entries}


def _capture_shape(address: str, identity: PackageIdentity) -> None:
    """Real rpcsec calls through the capture server, PRIVACY then INTEGRITY (the last one's
    shape is the one the re-wrapped servers use)."""
    from rpcsec.sspi import ProtectionLevel

    from ._configs import _rpcsec_config
    from ._service import UNARY_METHOD
    from ._workloads import PAYLOAD

    for level in (ProtectionLevel.PRIVACY, ProtectionLevel.INTEGRITY):
        config = _rpcsec_config("capture", "capture", address, identity, level, lambda: 0.0)
        try:
            call = config.channel.unary_unary(UNARY_METHOD)
            for _ in range(CAPTURE_CALLS):
                call(PAYLOAD)
        finally:
            config.close()


def _row(
    name: str, label: str, spec: dict[str, Any], cpu: Callable[[], float], alt: Decomposition
) -> None:
    client = RemoteClient({**spec, "name": name}, cpu)
    alt._stops.append(client.stop)

    def no_local_channel() -> Any:
        raise RuntimeError(f"{name}: its client runs in a process of its own")

    alt.configs.append(
        Config(
            name,
            label,
            no_local_channel,
            cpu,
            decomposition=True,
            remote=client,
            workloads=LADDER_WORKLOADS,
        )
    )


def start_decomposition(
    pki: BenchPki, servers: ServerProcess, identities: dict[str, PackageIdentity]
) -> Decomposition:
    """Start the no-op server and the rows' client processes; returns their configurations.
    ``servers`` is the main server process, started with ``ladder`` in its spec."""
    from rpcsec.sspi import ProtectionLevel

    alt = Decomposition()
    identity = identities["x509"]
    try:
        ports = servers.ports
        _capture_shape(f"127.0.0.1:{ports['capture']}", identity)
        wrap = servers.command("wrap")
        shape, wrap_ports = wrap["shape"], wrap["ports"]
        alt.shape = shape
        alt.notes.append(
            "decomposition: the re-wrapped rows carry what real rpcsec x509 INTEGRITY calls "
            f"carried (recorded in place): request metadata {shape['request_metadata']}, "
            f"+{shape['request_overhead']} B request, +{shape['response_overhead']} B response, "
            f"trailing metadata {shape['trailing_metadata'] or 'none'}"
        )

        def pool(process: ServerProcess, name: str) -> Callable[[], float]:
            return lambda: process.cpu_seconds()[name]

        _row(
            "ladder_plain",
            "plain gRPC",
            {"kind": "plain", "address": f"127.0.0.1:{ports['plain']}"},
            pool(servers, "plain"),
            alt,
        )
        for way, label in (
            ("wrap_generic", "+ wrapping, generic handler"),
            ("wrap_interceptor", "+ wrapping, pass-through interceptor"),
        ):
            _row(
                f"ladder_{way}",
                label,
                {"kind": "wrap", "address": f"127.0.0.1:{wrap_ports[way]}", "shape": shape},
                pool(servers, way),
                alt,
            )
        _row(
            SHORT_HANDLE[0],
            f"+ wrapping, generic handler, a {SHORT_HANDLE_BYTES} B handle for the ticket",
            {
                "kind": "wrap",
                "address": f"127.0.0.1:{wrap_ports['wrap_generic']}",
                "shape": _short_handle(shape),
            },
            pool(servers, "wrap_generic"),
            alt,
        )
        alt.glue_spec = {**server_spec(pki, [identity]), "glue_timing": True}
        alt.glue_identity = identity
        noop_spec = server_spec(pki, [identity])
        noop_spec["noop_aead"] = True
        noop = ServerProcess(noop_spec, dict(os.environ))
        alt._stops.append(noop.stop)
        for noop_aead, process, prefix, what in (
            (True, noop, "ladder_noop_x509", "rpcsec x509 {}, AEAD no-op"),
            (False, servers, "ladder_x509", "rpcsec x509 {} as shipped"),
        ):
            for level in LEVELS:
                _row(
                    f"{prefix}_{level}",
                    what.format(level.upper()),
                    {
                        "kind": "rpcsec",
                        "address": f"127.0.0.1:{process.ports['rpcsec']}",
                        "identity": identity.to_json(),
                        "protection": ProtectionLevel[level.upper()].name,
                        "noop_aead": noop_aead,
                    },
                    pool(process, "rpcsec"),
                    alt,
                )
        for config in alt.configs:  # bind, and check the no-op seam on both ends
            assert config.remote is not None
            checked = config.remote.warm()
            if checked is not None:
                server = noop.command("verify_noop")
                alt.notes.append(
                    f"{config.name}: AEAD no-op checked in place (client {checked['aead_calls']} "
                    f"calls, server {server['aead_calls']} calls through it so far)"
                )
    except BaseException:
        alt.stop()
        raise
    return alt


def _step(rows: dict[str, Any], key: str, before: str, after: str) -> float | None:
    """``after``'s median minus ``before``'s (medians over rounds): the steps of a chain add
    up to its total, as the ratio-of-medians figures elsewhere do."""
    mine, theirs = rows.get(after, {}).get(key), rows.get(before, {}).get(key)
    if not mine or not theirs:
        return None
    return float(mine["median"] - theirs["median"])


def _paired(rows: dict[str, Any], key: str, before: str, after: str) -> float | None:
    """Median over rounds of ``after - before``, paired by round (a check on ``_step``: robust
    to drift between rounds, but medians of differences do not add up); None if the rounds
    do not pair (a row missed one)."""
    mine, theirs = rows.get(after, {}).get(key), rows.get(before, {}).get(key)
    if not mine or not theirs or len(mine["samples"]) != len(theirs["samples"]):
        return None
    pairs = zip(mine["samples"], theirs["samples"], strict=True)
    return float(statistics.median(x - y for x, y in pairs))


def summarize(document: dict[str, Any]) -> None:
    """``document["decomposition"]["steps"]``: per level and measure, each step (difference
    of medians, and paired per round) and its share of the total (first row to last)."""
    section = document.get("decomposition")
    if not section:
        return
    rows = section["rows"]
    steps: dict[str, Any] = {}
    for level in LEVELS:
        ladder = chain(level, section.get("rpcsec_style"))
        by_key: dict[str, Any] = {}
        for key in ("unary_latency_us", "server_cpu_per_call_us"):
            total = _step(rows, key, ladder[0][0], ladder[-1][0])
            parts = []
            for (before, _), (after, what) in itertools.pairwise(ladder):
                value = _step(rows, key, before, after)
                parts.append(
                    {
                        "from": before,
                        "to": after,
                        "what": what,
                        "us": value,
                        "paired_us": _paired(rows, key, before, after),
                        "share": value / total if value is not None and total else None,
                    }
                )
            by_key[key] = {
                "total_us": total,
                "paired_total_us": _paired(rows, key, ladder[0][0], ladder[-1][0]),
                "steps": parts,
                "interceptor_us": _step(
                    rows, key, "ladder_wrap_generic", "ladder_wrap_interceptor"
                ),
                "ticket_us": _step(rows, key, *SHORT_HANDLE),
            }
        steps[level] = by_key
    section["steps"] = steps


def render_decomposition(document: dict[str, Any]) -> str:
    """The markdown section: each row's medians, then each step's µs and share."""
    from ._report import DASH, TIMES, _cell, _ratio

    section = document.get("decomposition")
    if not section:
        return ""
    rows = section["rows"]
    base = rows.get("ladder_plain", {})
    out = [
        "## Where the per-call cost goes (measured in this run)",
        "",
        "Each row a configuration of its own, in the same rotated rounds as the others, its "
        "client in a process of its own (`benchmarks/_remote_client.py`, the same for every "
        "row), x509, unary 100 B. Rows: plain gRPC; + the gRPC-level work of the wrapping "
        "without security (`benchmarks/_wrapping.py`: a client wrapper using `with_call`, the "
        "`-bin` metadata and extra message bytes rpcsec's calls carried -- recorded from real "
        "calls in this run -- and a re-wrapped bytes-in/bytes-out server handler), registered "
        "once as a generic handler or returned per call by a pass-through interceptor; rpcsec "
        "with every AEAD call a no-op (`benchmarks/_noop_aead.py`: `cryptography`'s `AESGCM`, "
        "`AESGCMSIV` and GCM `Cipher` replaced in the no-op server and client processes only, "
        "checked in place to be the classes rpcsec holds and to be called); rpcsec as shipped.",
        "",
        "| row | unary latency [µs] | server CPU per call [µs] | 8-thread throughput [calls/s] "
        f"| {TIMES} plain latency |",
        "|---|---|---|---|---|",
    ]
    for entry in rows.values():
        cells = [entry["label"]]
        for key in ("unary_latency_us", "server_cpu_per_call_us", "unary_throughput_cps"):
            measured = entry.get(key)
            cells.append(_cell(measured["median"]) if measured else DASH)
        mine, theirs = entry.get("unary_latency_us"), base.get("unary_latency_us")
        cells.append(_ratio(mine["median"] / theirs["median"]) if mine and theirs else DASH)
        out.append("| " + " | ".join(cells) + " |")
    for level, by_key in (section.get("steps") or {}).items():
        out += [
            "",
            f"Steps, {level.upper()}: the difference of the rows' medians (so the steps add up "
            "to the total) and its share of the total; in brackets the median of each round's "
            "difference (paired per round: a check against drift, not additive):",
            "",
            "| step | latency [µs] | share | server CPU [µs] | share |",
            "|---|---|---|---|---|",
        ]
        latency, cpu = by_key["unary_latency_us"], by_key["server_cpu_per_call_us"]
        for wall, spent in zip(latency["steps"], cpu["steps"], strict=True):
            out.append(
                f"| {wall['what']} | {_signed(wall['us'])} ({_signed(wall['paired_us'])}) "
                f"| {_share(wall['share'])} "
                f"| {_signed(spent['us'])} ({_signed(spent['paired_us'])}) "
                f"| {_share(spent['share'])} |"
            )
        out.append(
            f"| **total, plain to rpcsec** | {_signed(latency['total_us'])} "
            f"({_signed(latency['paired_total_us'])}) | 100 % "
            f"| {_signed(cpu['total_us'])} ({_signed(cpu['paired_total_us'])}) | 100 % |"
        )
        out.append(
            f"| (of the wrapping: the per-call interceptor vs a generic handler) "
            f"| {_signed(latency['interceptor_us'])} | | {_signed(cpu['interceptor_us'])} | |"
        )
        if latency.get("ticket_us") is not None:
            out.append(
                "| (of the wrapping: the context entry as rpcsec sends it vs a "
                f"{SHORT_HANDLE_BYTES} B handle) | {_signed(latency['ticket_us'])} | "
                f"| {_signed(cpu.get('ticket_us'))} | |"
            )
    out += _render_glue(section.get("glue_timing"))
    return "\n".join(out) + "\n"


def _render_glue(glue: dict[str, Any] | None) -> list[str]:
    if not glue:
        return []
    out = [
        "",
        "Both ends' glue timed in place (`benchmarks/_glue_timing.py`): a server process and a "
        "client process of their own whose rpcsec functions are wrapped with "
        f"`time.perf_counter_ns` sums, {glue['calls']} sequential unary 100 B calls per level; "
        "inclusive times (a part that calls another includes it), µs per call (calls per "
        f"call). Each timed wrapper adds ~{glue.get('overhead_ns', 0) / 1000:.1f} µs "
        "(calibrated in the same process) to the parts enclosing it. The AEAD row times each "
        "real `AESGCM.encrypt`/`decrypt` call.",
    ]
    where = glue.get("where") or {}
    for side, levels in (("server", glue.get("levels")), ("client", glue.get("client"))):
        if levels:
            out += _glue_table(side, levels, where.get(side) or {})
    missing = glue.get("missing") or []
    if missing:
        out += ["", "Seams not found (renamed in rpcsec/; not measured): " + "; ".join(missing)]
    return out


def _glue_table(side: str, levels: dict[str, Any], where: dict[str, str]) -> list[str]:
    from ._report import DASH, TIMES

    names = list(levels)
    out = [
        "",
        f"| {side} part | "
        + " | ".join(f"{name.upper()} [µs]" for name in names)
        + " | function timed |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    labels: list[str] = []
    for parts in levels.values():
        labels += [label for label in parts if label not in labels]
    for label in labels:
        cells = []
        for name in names:
            part = levels[name].get(label)
            if part is None:
                cells.append(DASH)
            elif not part["per_call"]:
                cells.append("0 calls")
            else:
                cells.append(f"{part['us']:.1f} ({part['per_call']:.0f}{TIMES})")
        out.append(f"| {label} | " + " | ".join(cells) + f" | `{where.get(label, '?')}` |")
    return out


def _signed(value: float | None) -> str:
    return "\u2013" if value is None else f"{value:+.1f}"


def _share(value: float | None) -> str:
    return "\u2013" if value is None else f"{value * 100:.0f} %"
