"""Turns a run's results into ratios, target verdicts, a markdown table and a PNG chart.

Every figure is also given as a ratio to a baseline measured in the same invocation, because the
machine is shared and absolute numbers move with its load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import cluster

# (description, measured value, limit, True when the value must stay at or under the limit)
Target = tuple[str, float | None, float, bool]


def _phase(results: dict[str, Any], design: str, n: int, name_prefix: str) -> dict[str, Any] | None:
    for run in results.get("fanout", []):
        if run.get("design") == design and run.get("subscribers") == n:
            for phase in run["phases"]:
                if phase["name"].startswith(name_prefix):
                    return dict(phase)
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else round(a / b, 2)


def _get(phase: dict[str, Any] | None, *path: str) -> float | None:
    value: Any = phase
    for key in path:
        if value is None:
            return None
        value = value.get(key)
    return value if isinstance(value, int | float) else None


def targets(results: dict[str, Any]) -> list[Target]:
    found: list[Target] = []
    for n in results.get("fanout_sizes", []) if results.get("fanout") else []:
        ours = _phase(results, "sync-server", n, "closed")
        broadcast = _phase(results, "ws-broadcast", n, "closed")
        sharedb = _phase(results, "sharedb", n, "closed")
        cpu = _get(ours, "cpuMsPer1k")
        found.append(
            (
                f"fan-out CPU/delivery vs broadcast() at N={n} (<= 1.3x)",
                _ratio(cpu, _get(broadcast, "cpuMsPer1k")),
                1.3,
                True,
            )
        )
        acl = _phase(results, "sync-server+acl", n, "closed")
        if acl is not None:
            found.append(
                (
                    f"fan-out CPU/delivery with ACL on vs off at N={n} (<= 1.05x)",
                    _ratio(_get(acl, "cpuMsPer1k"), cpu),
                    1.05,
                    True,
                )
            )
        found.append(
            (
                f"fan-out CPU/delivery vs ShareDB at N={n} (<= 0.4x)",
                _ratio(cpu, _get(sharedb, "cpuMsPer1k")),
                0.4,
                True,
            )
        )
    if results.get("fanout"):
        big = max(results["fanout_sizes"])
        ours_big = _phase(results, "sync-server", big, "closed")
        sharedb_big = _phase(results, "sharedb", big, "closed")
        found.append(
            (
                f"deliveries/s at N={big} vs ShareDB (>= 2x)",
                _ratio(_get(ours_big, "deliveriesPerS"), _get(sharedb_big, "deliveriesPerS")),
                2.0,
                False,
            )
        )
        slow = _phase(results, "sync-server", big, "20/s")
        found.append(
            (f"p99 delivery latency at 20/s, N={big} (< 25 ms)", _get(slow, "latencyMs", "p99"), 25.0, True)
        )
    rest = results.get("rest") or {}
    bare = {b["workers"]: b["writes_per_s"] for b in rest.get("bare_starlette", [])}
    for server in rest.get("server", []):
        workers = server["workers"]
        # Issue 13: 0.9x the bare endpoint with 1 worker, 0.8x with 2, the hot document included.
        goal = 0.9 if workers == 1 else 0.8
        for run in server["runs"]:
            if run["mode"] not in ("set", "hot"):
                continue
            what = "one hot doc" if run["mode"] == "hot" else "1000 docs"
            found.append(
                (
                    f"REST writes/s ({what}) vs bare Starlette, {workers} worker(s) (>= {goal}x)",
                    _ratio(run["writes_per_s"], bare.get(workers)),
                    goal,
                    False,
                )
            )
    found += cluster.targets(results.get("cluster"))
    webhooks = results.get("webhooks")
    if webhooks:
        found += [
            ("REST writes/s with a webhook vs without, delivered in-process (>= 0.9x)",
             webhooks["writes_ratio"], 0.9, False),
            ("REST writes/s with a webhook vs without, delivered by another process (>= 0.9x)",
             webhooks.get("separate_writes_ratio"), 0.9, False),
            ("webhook deliveries/s to one receiver, one process (>= 1000)",
             (webhooks.get("with_webhook_separate") or {}).get("drained_per_s", webhooks["delivered_per_s"]),
             1000.0, False),
            (f"p99 write to webhook at {webhooks['paced']['rate']}/s (< 100 ms)",
             webhooks["paced"]["latency_ms"]["p99"], 100.0, True),
        ]  # fmt: skip
    ours = [i for i in results.get("idle", []) if i.get("design", "sync-server") == "sync-server"]
    for idle in ours:
        found.append(
            (
                f"RSS per idle subscriber at {idle['subscribers']} (< 12 KiB)",
                idle["kib_per_subscriber"],
                12.0,
                True,
            )
        )
    if ours:
        largest = max(ours, key=lambda i: i["subscribers"])
        n = largest["subscribers"]
        how = "measured" if n == IDLE_GOAL else f"projected from {n:,} at its KiB per subscriber"
        found.append(
            (
                f"RSS of {IDLE_GOAL:,} idle subscribers, GiB ({how}; < 1.5)",
                round(project_idle_rss_gib(largest), 2),
                1.5,
                True,
            )
        )
    from bench import report_growth  # it builds on this module's helpers

    return found + report_growth.targets(results)


IDLE_GOAL = 100_000
"""Idle subscribers one process must hold in under 1.5 GiB (issue 13)."""


def project_idle_rss_gib(idle: dict[str, Any], subscribers: int = IDLE_GOAL) -> float:
    """The server's RSS with ``subscribers`` idle subscribers: its RSS before the run plus the
    measured cost per subscriber (flat in the count from 10,000 subscribers on)."""
    return float(idle["rss_before_kib"] + subscribers * idle["kib_per_subscriber"]) / 1024 / 1024


def verdict(target: Target) -> str:
    _, value, limit, at_most = target
    if value is None:
        return "n/a"
    return "PASS" if (value <= limit if at_most else value >= limit) else "MISS"


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _table(title: str, header: list[str], rows: list[str]) -> list[str]:
    return [title, "", _row(*header), _row(*["---"] * len(header)), *rows, ""]


REST_LABELS = {"set": "update, 1000 docs", "ifmatch": "update with If-Match", "hot": "update, one hot doc"}


def _losses(phases: list[dict[str, Any]]) -> str:
    missed = sum(p["missed"] for p in phases)
    duplicated = [p["duplicated"] for p in phases]
    dup = "n/a" if None in duplicated else str(sum(duplicated))
    return f"{missed} / {dup}"


def _rest_section(rest: dict[str, Any]) -> list[str]:
    bare = {b["workers"]: b for b in rest.get("bare_starlette", [])}
    store = rest.get("redis", {})
    ceiling = store.get("writes_per_s")
    rows = []
    for server in rest.get("server", []):
        workers = server["workers"]
        base = bare.get(workers, {}).get("writes_per_s")
        for run in server["runs"]:
            writes = run["writes_per_s"]
            rows.append(
                _row(
                    REST_LABELS[run["mode"]], workers, _fmt(writes), _fmt(run["p50_ms"]), _fmt(run["p99_ms"]),
                    _x(_ratio(writes, base)), _x(_ratio(writes, ceiling)),
                )
            )  # fmt: skip
    for workers, b in bare.items():
        cells = (_fmt(b["writes_per_s"]), _fmt(b["p50_ms"]), _fmt(b["p99_ms"]))
        rows.append(_row("bare Starlette endpoint (no Redis)", workers, *cells, "1x", ""))
    if ceiling:
        cells = (_fmt(ceiling), _fmt(store["p50_ms"]), _fmt(store["p99_ms"]))
        rows.append(_row("redis-benchmark EVALSHA doc_write, one doc", "-", *cells, "", "1x"))
    elif store:
        rows.append(_row("redis-benchmark", "-", store.get("skipped"), "", "", "", ""))
    title = (
        f"**REST writes** (1 KiB documents, {rest['connections']} connections, load from {rest['generator']})"
    )
    header = ["what", "workers", "writes/s", "p50 ms", "p99 ms", "vs bare Starlette", "vs Redis ceiling"]
    return _table(title, header, rows)


def _fanout_section(results: dict[str, Any]) -> list[str]:
    closed_rows, rate_rows = [], []
    for run in results["fanout"]:
        design, n = run["design"], run["subscribers"]
        closed = _phase(results, design, n, "closed")
        if closed is not None:
            broadcast_cpu = _get(_phase(results, "ws-broadcast", n, "closed"), "cpuMsPer1k")
            sharedb = _phase(results, "sharedb", n, "closed")
            lat = closed["latencyMs"]
            closed_rows.append(
                _row(
                    design, n, _fmt(closed["deliveriesPerS"]), f"{_fmt(lat['p50'])} / {_fmt(lat['p99'])}",
                    _fmt(closed["cpuMsPer1k"]), _x(_ratio(closed["cpuMsPer1k"], broadcast_cpu)),
                    _x(_ratio(closed["cpuMsPer1k"], _get(sharedb, "cpuMsPer1k"))),
                    _x(_ratio(closed["deliveriesPerS"], _get(sharedb, "deliveriesPerS"))),
                    _losses(run["phases"]),
                )
            )  # fmt: skip
        cells: list[str] = []
        for rate in ("20/s", "100/s"):
            phase = _phase(results, design, n, rate)
            lat = phase["latencyMs"] if phase else {}
            cells.append(f"{_fmt(lat.get('p50'))} / {_fmt(lat.get('p99'))} / {_fmt(lat.get('max'))}")
            cells.append(_fmt(_get(phase, "cpuMsPer1k")))
        ours_p99 = _get(_phase(results, design, n, "20/s"), "latencyMs", "p99")
        broadcast_p99 = _get(_phase(results, "ws-broadcast", n, "20/s"), "latencyMs", "p99")
        rate_rows.append(_row(design, n, *cells, _x(_ratio(ours_p99, broadcast_p99))))
    closed_title = (
        "**Fan-out, closed loop** (one document, one writer; W=4 updates in flight for sync-server and "
        "broadcast(), W=1 for ShareDB, which allows one op in flight per client)"
    )
    closed_header = [
        "design", "N", "deliveries/s", "p50 / p99 ms", "CPU ms per 1k deliveries",
        "CPU vs broadcast()", "CPU vs ShareDB", "deliveries/s vs ShareDB", "missed / duplicated (all phases)",
    ]  # fmt: skip
    rate_title = "**Delivery latency at a fixed rate** (p50 / p99 / max ms; server CPU ms per 1k deliveries)"
    rate_header = ["design", "N", "20/s", "CPU @20/s", "100/s", "CPU @100/s", "p99 @20/s vs broadcast()"]
    return _table(closed_title, closed_header, closed_rows) + _table(rate_title, rate_header, rate_rows)


def _other_sections(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if results.get("idle"):
        rows = []
        baseline = {i["subscribers"]: i for i in results["idle"] if i.get("design") == "ws-broadcast"}
        for idle in results["idle"]:
            added = (idle["rss_after_kib"] - idle["rss_before_kib"]) / 1024
            base = baseline.get(idle["subscribers"], {})
            cells = (
                f"{idle['connect_s']:.2f}", f"{added:.1f} MiB", f"{idle['kib_per_subscriber']:.1f}",
                _x(_ratio(idle["kib_per_subscriber"], base.get("kib_per_subscriber"))),
                _x(_ratio(idle["connect_s"], base.get("connect_s"))),
            )  # fmt: skip
            rows.append(_row(idle.get("design", "sync-server"), f"{idle['subscribers']:,}", *cells))
        header = [
            "design", "subscribers", "connect + subscribe all (s)", "server RSS added", "KiB per subscriber",
            "KiB vs broadcast()", "connect time vs broadcast()",
        ]  # fmt: skip
        lines += _table("**Idle subscribers**", header, rows)
    if results.get("recovery"):
        r = results["recovery"]
        header = [
            "subscribers", "writes/s", "server restart (s)", "until every client has the latest revision (s)",
            "stale", "duplicated",
        ]  # fmt: skip
        cells = (f"{r['server_restart_s']:.2f}", f"{r['recovery_s']:.2f}", r["stale"], r["duplicated"])
        row = _row(f"{r['subscribers']:,}", r["rate"], *cells)
        lines += _table("**Recovery** (server restarted under load)", header, [row])
    if results.get("webhooks"):
        w = results["webhooks"]
        rows = [
            _row("no webhook", f"{w['without_webhook']['writes_per_s']:,}", "1x", "-"),
            _row("webhook, delivered in the serving process", f"{w['with_webhook']['writes_per_s']:,}",
                 _x(w["writes_ratio"]), f"{w['delivered_per_s']:,}"),
        ]  # fmt: skip
        if "with_webhook_separate" in w:
            separate = w["with_webhook_separate"]
            writes, drained = f"{separate['writes_per_s']:,}", f"{separate['drained_per_s']:,}"
            label = "webhook, not delivered meanwhile (vs its own run without)"
            rows.append(_row(label, writes, _x(w["separate_writes_ratio"]), "-"))
            ceiling = f"{separate['httpx_ceiling_per_s']:,}"
            rows.append(
                _row(
                    "(then a second process delivers that backlog)", "-", "-", f"{drained} (httpx: {ceiling})"
                )
            )
        header = ["REST writes (1 KiB, 64 connections)", "writes/s", "vs no webhook", "webhooks delivered/s"]
        lines += _table("**Webhooks** (one local receiver, healthy)", header, rows)
        lat = w["paced"]["latency_ms"]
        row = _row(
            w["paced"]["rate"], w["paced"]["webhooks"], _fmt(lat["p50"]), _fmt(lat["p99"]), _fmt(lat["max"])
        )
        lines += _table("**Write to webhook**", ["writes/s", "webhooks", "p50 ms", "p99 ms", "max ms"], [row])
    if results.get("expiry"):
        e = results["expiry"]
        lag = e["lag_ms"]
        ttl = f"{e['ttl_s'][0]}-{e['ttl_s'][1]}"
        row = _row(f"{e['documents']:,}", ttl, _fmt(lag["p50"]), _fmt(lag["p99"]), _fmt(lag["max"]))
        header = ["documents", "TTLs (s)", "p50 ms", "p99 ms", "max ms"]
        lines += _table("**Expiry lag** (`date_expires` to `removed` event)", header, [row])
    return lines


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    if results.get("rest"):
        lines += _rest_section(results["rest"])
    if results.get("fanout"):
        lines += _fanout_section(results)
    lines += _other_sections(results)
    if results.get("cluster"):
        lines += cluster.markdown(results["cluster"])

    from bench import report_growth

    lines += report_growth.sections(results)
    found = targets(results)
    if found:
        rows = [_row(target[0], _fmt(target[1], 2), verdict(target)) for target in found]
        lines += _table("**Targets**", ["target", "measured", "verdict"], rows)
    if results.get("failures"):
        lines += ["**Failures**", ""] + [f"- {f}" for f in results["failures"]] + [""]
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> bool:
    """Writes a 2x2 PNG; returns False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    rest = results.get("rest") or {}
    ax = axes[0][0]
    labels, values = [], []
    for server in rest.get("server", []):
        for run in server["runs"]:
            labels.append(f"{run['mode']}\nw{server['workers']}")
            values.append(run["writes_per_s"])
    for bare in rest.get("bare_starlette", []):
        labels.append(f"bare\nw{bare['workers']}")
        values.append(bare["writes_per_s"])
    ax.bar(
        labels,
        values,
        color=["tab:blue"] * (len(values) - len(rest.get("bare_starlette", [])))
        + ["tab:gray"] * len(rest.get("bare_starlette", [])),
    )
    store = (rest.get("redis") or {}).get("writes_per_s")
    ax.set_title("REST writes/s" + (f" (Redis ceiling {store:,}/s)" if store else ""))
    ax.tick_params(axis="x", labelsize=8)
    designs = ["sync-server", "ws-broadcast", "sharedb"]
    sizes = results.get("fanout_sizes", [])
    for ax, (title, getter) in zip(
        [axes[0][1], axes[1][0], axes[1][1]],
        [
            ("fan-out deliveries/s (closed loop)", lambda p: _get(p, "deliveriesPerS")),
            ("server CPU ms per 1000 deliveries (closed loop)", lambda p: _get(p, "cpuMsPer1k")),
            ("p99 delivery latency ms at 20/s", None),
        ],
        strict=True,
    ):
        width = 0.8 / len(designs)
        for i, design in enumerate(designs):
            ys = []
            for n in sizes:
                if getter is None:
                    ys.append(_get(_phase(results, design, n, "20/s"), "latencyMs", "p99") or 0)
                else:
                    ys.append(getter(_phase(results, design, n, "closed")) or 0)
            ax.bar([j + i * width for j in range(len(sizes))], ys, width, label=design)
        ax.set_xticks([j + width for j in range(len(sizes))], [f"N={n}" for n in sizes])
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"sync-server benchmark — {results.get('machine', {}).get('summary', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
