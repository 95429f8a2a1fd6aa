"""The report's parts for the many-documents and scale scenarios (issue 13, goals 3 and 5): their
tables and their targets, each against a baseline of the same run (``report.py`` calls these)."""

from __future__ import annotations

from typing import Any

from bench.manydocs import delivery_side, phase, write_path
from bench.report import Target, _fmt, _ratio, _row, _table, _x


def targets(results: dict[str, Any]) -> list[Target]:
    return _manydocs_targets(results.get("manydocs")) + _scale_targets(results.get("scale"))


def sections(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if results.get("manydocs"):
        lines += _manydocs_section(results["manydocs"])
    if results.get("scale"):
        lines += _scale_section(results["scale"])
    return lines


# -- many documents ---------------------------------------------------------------------------------


def _shape(run: dict[str, Any]) -> str:
    return f"{run['documents']:,} docs x 1-3 subscribers, {run['servers']} processes"


def _manydocs_targets(run: dict[str, Any] | None) -> list[Target]:
    if not run:
        return []
    many, hot = phase(run, "many closed"), phase(run, "hot closed")
    cpu = _ratio(_cpu(many), _cpu(hot))
    side = _ratio(delivery_side(run, "many closed"), delivery_side(run, "hot closed"))
    return [
        (f"{_shape(run)}: server CPU/delivery vs one hot document, same run (<= 1.5x)", cpu, 1.5, True),
        (f"{_shape(run)}: the same without the write path and background (<= 1.5x)", side, 1.5, True),
    ]


def _cpu_per_s(run: dict[str, Any], window: str) -> str:
    return _fmt(run["idle"][window]["serverCpuPerS"] * 1000)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _cpu(found: dict[str, Any] | None) -> float | None:
    return None if found is None else found["cpuMsPer1k"]


def _manydocs_section(run: dict[str, Any]) -> list[str]:
    hot = phase(run, "hot closed")
    rows = []
    for found in run["phases"]:
        lat = found["latencyMs"]
        per = "writes" if found["target"] == "none" else "deliveries"
        losses = f"{found['missed']} / {found['duplicated']} / {found['stale']}"
        rows.append(
            _row(
                found["name"], _fmt(found["writesPerS"]), _fmt(found["deliveriesPerS"]),
                f"{_fmt(lat['p50'])} / {_fmt(lat['p99'])}", f"{_fmt(found['cpuMsPer1k'])} per 1k {per}",
                _fmt(found["redisMsPer1k"]),
                _x(_ratio(found["cpuMsPer1k"], _cpu(hot))) if per == "deliveries" else "",
                losses if per == "deliveries" else "",
            )
        )  # fmt: skip
    by_count = run["documents_by_subscribers"]
    counts = " / ".join(f"{n:,}" for n in by_count)
    notes = [
        f"{run['subscriptions']:,} subscriptions (documents with 1 / 2 / 3 subscribers: {counts}), each "
        f"its own connection, plus {run['hot_subscribers']:,} on the hot document; connect + subscribe all: "
        f"{run['subscribe_s']:.2f} s (256 handshakes in flight); server RSS added per subscription: "
        f"{run['kib_per_subscription']:.1f} KiB.",
        f"Background with nothing written (keepalive pings, expiry sweeps): "
        f"{_cpu_per_s(run, 'before')} ms of server CPU per second before anyone subscribed, "
        f"{_cpu_per_s(run, 'subscribed')} with everyone subscribed. The write path (writes only, "
        f"background out): {_fmt(_ms(write_path(run)), 3)} ms per write. Without both: "
        f"{_fmt(delivery_side(run, 'many closed'))} ms per 1k deliveries for many documents, "
        f"{_fmt(delivery_side(run, 'hot closed'))} for the hot one, "
        f"{_fmt(delivery_side(run, 'hot 20/s'))} for the hot one at 20/s (one event per write to each "
        "connection, as every many-documents delivery is): "
        f"{_x(_ratio(delivery_side(run, 'many closed'), delivery_side(run, 'hot 20/s')))} that. "
        f"Fleet: {run['fleet_processes']} "
        "Node processes (subscribers in shards: one process may not hold ~21,000 connections).",
        "",
    ]
    header = [
        "phase", "writes/s", "deliveries/s", "p50 / p99 ms", "server CPU ms", "Redis CPU ms per 1k",
        "CPU vs hot document", "missed / duplicated / stale",
    ]  # fmt: skip
    return _table(f"**Many documents** ({_shape(run)}, one writer per process)", header, rows) + notes


# -- scale ------------------------------------------------------------------------------------------


def _scale_targets(run: dict[str, Any] | None) -> list[Target]:
    if not run:
        return []
    small, big = run["documents"]["small"], run["documents"]["big"]
    span = f"at {big:,} documents vs {small:,}"
    writes = run["writes_per_s"]
    found: list[Target] = [
        (f"REST writes/s {span} (>= 0.9x)", _ratio(writes["big"], writes["small"]), 0.9, False),
    ]
    for kind, label in LATENCIES.items():
        if kind not in run["latency"]:
            continue
        figures = run["latency"][kind]
        ratio = _ratio(figures["big"]["p50_ms"], figures["small"]["p50_ms"])
        found.append((f"{label} latency p50 {span} (<= 1.1x)", ratio, 1.1, True))
    burst = run["expiry"]
    due = f"expiry of {burst['documents']:,} documents due in one second"
    left = burst["left_in_redis"] + burst["rest_still_found"]
    found.append((f"{due}: slowest sampled `removed`, ms (<= 1000)", burst["lag_ms"]["max"], 1000.0, True))
    found.append((f"{due}: documents left 1 s after (= 0)", left, 0, True))
    return found


LATENCIES = {
    "fetch": "fetch by name",
    "first_page": "list, first page",
    "deep_page": "list, deep page",
    "walk": "list, pages along a walk",
}


def _scale_section(run: dict[str, Any]) -> list[str]:
    small, big = run["documents"]["small"], run["documents"]["big"]
    writes = run["writes_per_s"]
    rows = [
        _row(
            "REST writes/s (wrk, 64 connections)", _fmt(writes["small"]), _fmt(writes["big"]),
            _x(_ratio(writes["big"], writes["small"])),
        )
    ]  # fmt: skip
    for kind, label in LATENCIES.items():
        if kind not in run["latency"]:
            continue
        s, b = run["latency"][kind]["small"], run["latency"][kind]["big"]
        cells = [f"{_fmt(x['p50_ms'], 2)} / {_fmt(x['p99_ms'], 2)}" for x in (s, b)]
        rows.append(_row(f"{label}, p50 / p99 ms", *cells, _x(_ratio(b["p50_ms"], s["p50_ms"]))))
    header = ["figure", f"{small:,} documents", f"{big:,} documents", "ratio"]
    title = "**Flat as data grows** (two services of one server and Redis, 1 KiB documents)"
    burst = run["expiry"]
    lag = burst["lag_ms"]
    notes = [
        f"Created in-process through `DocumentService.create` at {_fmt(run['create_docs_per_s'])} "
        f"documents/s. Expiry burst: {burst['documents']:,} documents due in the same second (created in "
        f"{burst['create_s']:.1f} s), {burst['subscribed']:,} of them subscribed: `removed` after the due "
        f"time p50 {_fmt(lag['p50'])} / p99 {_fmt(lag['p99'])} / max {_fmt(lag['max'])} ms; "
        f"asked {burst['checked_s_after_due']:.2f} s after it (answered at "
        f"{burst.get('answered_s_after_due', 0):.2f} s), {burst['left_in_redis']} were left in the listing "
        f"index and {burst['rest_still_found']} of {burst['rest_sampled']} unsubscribed ones still found "
        f"over REST. Redis over the {burst.get('window_s', 0):.1f} s around the due second: "
        f"{_fmt(burst.get('redis_cpu_ms'))} ms CPU, {_fmt(burst.get('sweep_redis_ms'))} ms in "
        f"{burst.get('sweep_calls', 0)} `expire_sweep` calls (the slowest "
        f"{_fmt(burst.get('slowest_sweep_call_ms'))} ms; SLOWLOG).",
        "",
    ]
    return _table(title, header, rows) + notes
