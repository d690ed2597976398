"""The RESULTS.md block: every figure of a run, its ratios, and the targets of issue 4."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.results import table

NA = "n/a"


def _get(res: dict[str, Any], group: str, label: str, key: str) -> float:
    try:
        value = res[group][label][key]
    except KeyError:
        return math.nan
    return float(value) if value is not None else math.nan


def _x(a: float, b: float) -> str:
    return NA if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}x"


def _n(v: float, digits: int = 0) -> str:
    return NA if math.isnan(v) else f"{v:,.{digits}f}"


def _targets(record: dict[str, Any]) -> list[list[str]]:
    res = record["results"]
    rows: list[list[str]] = []

    def target(name: str, value: float, limit: float, *, at_most: bool, how: str) -> None:
        if math.isnan(value):
            rows.append([name, how, NA, f"{'<=' if at_most else '>='} {limit:g}", "not measured"])
            return
        ok = value <= limit if at_most else value >= limit
        verdict = "met" if ok else f"missed by {abs(value / limit - 1) * 100:.0f}%"
        rows.append([name, how, f"{value:.2f}", f"{'<=' if at_most else '>='} {limit:g}", verdict])

    seq = "seq"
    empty_p50 = _get(res, seq, "empty servicer", "p50_us")
    hit_p50 = _get(res, seq, "stepguard hit", "p50_us")
    miss_p50 = _get(res, seq, "stepguard miss", "p50_us")
    target("cache hit p50 / empty p50", hit_p50 / empty_p50, 1.15, at_most=True, how="1 client")
    target(
        "miss p50 / empty p50 (example policies)",
        miss_p50 / empty_p50,
        1.5,
        at_most=True,
        how="1 client",
    )
    m20 = _get(res, seq, "stepguard miss, 20 policies", "p50_us")
    m2000 = _get(res, seq, "stepguard miss, 2000 policies", "p50_us")
    target("miss p50, 2,000 / 20 policies", m2000 / m20, 2.0, at_most=True, how="1 client")
    for kind, single in (("miss", miss_p50), ("hit", hit_p50)):
        per = _get(res, seq, f"stepguard batch 100 {kind}", "p50_us") / 100
        target(
            f"per decision in a batch of 100 / single call ({kind})",
            per / single,
            0.15,
            at_most=True,
            how="1 client, p50",
        )
    c8 = "c8"
    empty_tp = _get(res, c8, "empty servicer", "decisions_per_s")
    cerbos_tp = _get(res, c8, "Cerbos", "decisions_per_s")
    for kind in ("hit", "miss"):
        label = f"stepguard {kind}"
        tp = _get(res, c8, label, "decisions_per_s")
        target(
            f"8 clients, {kind}: throughput / empty",
            tp / empty_tp,
            0.85,
            at_most=False,
            how="decisions/s",
        )
        target(
            f"8 clients, {kind}: throughput / Cerbos",
            tp / cerbos_tp,
            1.0,
            at_most=False,
            how="decisions/s",
        )
        for q in ("p50", "p99"):
            mine = _get(res, c8, label, f"{q}_us")
            theirs = _get(res, c8, "Cerbos", f"{q}_us")
            target(
                f"8 clients, {kind}: {q} / Cerbos {q}",
                mine / theirs,
                1.0,
                at_most=True,
                how="below 1 wins",
            )
    tp_group = "throughput"
    cerbos_unary = _get(res, tp_group, "Cerbos", "decisions_per_s")
    for kind in ("miss", "hit"):
        st = _get(res, tp_group, f"stepguard stream {kind}", "decisions_per_s")
        target(
            f"AuthorizeStream ({kind}) / Cerbos unary, decisions/s",
            st / cerbos_unary,
            2.0,
            at_most=False,
            how="window 64 vs 8 clients",
        )
    cerbos_b50 = _get(res, tp_group, "Cerbos batch 50", "decisions_per_s")
    for kind in ("miss", "hit"):
        b50 = _get(res, tp_group, f"stepguard batch 50 {kind}", "decisions_per_s")
        target(
            f"batches of 50 ({kind}) / Cerbos batches of 50, decisions/s",
            b50 / cerbos_b50,
            1.0,
            at_most=False,
            how="8 clients",
        )
    return rows


def _group_table(res: dict[str, Any], group: str, base: str | None) -> str:
    rows = []
    base_row = res[group].get(base) if base else None
    for label, r in res[group].items():
        load = (
            f"window {r['window']}"
            if r["window"]
            else ("1 client" if r["clients"] == 0 else f"{r['clients']} clients")
        )
        ratio = (
            [
                _x(r["p50_us"], base_row["p50_us"]),
                _x(r["decisions_per_s"], base_row["decisions_per_s"]),
            ]
            if base_row
            else []
        )
        rows.append(
            [
                label,
                load,
                _n(r["p50_us"]),
                _n(r["p99_us"]),
                _n(r["decisions_per_s"]),
                *ratio,
                _n(r["server_cpu_us"] if r["server_cpu_us"] is not None else math.nan),
            ]
        )
    headers = ["subject", "load", "p50 us", "p99 us", "decisions/s"]
    if base_row:
        headers += [f"p50 / {base}", f"throughput / {base}"]
    headers.append("server CPU us / decision")
    return table(headers, rows)


def render(record: dict[str, Any], plot_name: str) -> str:
    m = record["machine"]
    res = record["results"]
    t = record["timing"]
    mem = record["memory"]
    b = record["baseline_b"]
    bb_rows = [
        [
            name if name == "example" else f"{name} generated",
            str(v["policies"]),
            str(v["evaluated_by_index"]),
            _n(v["p50_us"]),
            _n(v["p99_us"]),
            _n(v["engine_indexed_p50_us"]),
            _n(
                _get(
                    res,
                    "seq",
                    "stepguard miss" if name == "example" else f"stepguard miss, {name} policies",
                    "p50_us",
                )
            ),
        ]
        for name, v in b.items()
    ]
    samples = ", ".join(
        f"{n:,}: {r} MiB" for n, r in mem["samples"][:: max(1, len(mem["samples"]) // 6)]
    )
    within = mem["rss_max_mib"] <= mem["bound_mib"]
    return "\n".join(
        [
            "## Figures of the last `./dev bench` run",
            "",
            f"Command: `{record['command']}`, run {record['started']} "
            f"({record['wall_s']} s in all). "
            f"Each measurement: {t['seconds']:g} s of timed calls, in {t['rounds']} interleaved "
            f"round(s) after a {t['warmup']:g} s warm-up each.",
            "",
            f"Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}; Python {m['python']}, "
            f"grpcio {m['grpcio']}, protobuf {m['protobuf']}, cedarpy {m['cedarpy']}. "
            f"Load average before / after: {record['load_before']} / {record['load_after']} "
            "(other work on the machine makes every figure noisier; ratios within one "
            "interleaved group are the robust ones).",
            "",
            "Servers run in their own processes on TCP loopback (unless a Unix socket or the "
            f"other server mode is named), gRPC {record['server_mode']} server (the default), "
            "decision cache "
            "on (defaults), audit trail to a real file "
            f"({record['audit_events']:,} events written by the main stepguard server "
            "in this run). "
            "The request is an approved `grant_access` on `jira` (ALLOW); *hit* repeats it, "
            "*miss* sends a new `run_id` each time. Latencies are per call, measured in the "
            "client (Python grpcio, raw bytes in and out); concurrent clients are asyncio tasks "
            "on one channel. Server CPU is the server process's user+system time per decision.",
            "",
            f"![latency against policy count and concurrency]({plot_name})",
            "",
            "### Targets (issue 4), as ratios measured in this run",
            "",
            table(["target", "how", "measured", "target", "verdict"], _targets(record)),
            "",
            "### One client (sequential), against the empty servicer (baseline A)",
            "",
            _group_table(res, "seq", "empty servicer"),
            "",
            "### 8 concurrent clients",
            "",
            _group_table(res, "c8", "empty servicer"),
            "",
            "### 32 concurrent clients",
            "",
            _group_table(res, "c32", "empty servicer"),
            "",
            "### Policy count: baseline B (in-process cedarpy, parsed handles, all policies)",
            "",
            table(
                [
                    "bundle",
                    "policies",
                    "evaluated with the index",
                    "cedarpy p50 us (all policies)",
                    "cedarpy p99 us",
                    "engine.evaluate p50 us (indexed, in-process)",
                    "stepguard Authorize miss p50 us",
                ],
                bb_rows,
            ),
            "",
            "### Transports (1 client): TCP vs Unix socket, server modes, AuthorizeStream",
            "",
            _group_table(res, "transport", "empty servicer"),
            "",
            "### Transports under 8 concurrent clients",
            "",
            _group_table(res, "transport8", "empty servicer"),
            "",
            "### Server modes under 32 concurrent clients",
            "",
            _group_table(res, "transport32", "stepguard hit"),
            "",
            "### Throughput: AuthorizeStream and batches against Cerbos",
            "",
            _group_table(res, "throughput", "Cerbos"),
            "",
            "### Memory",
            "",
            f"A fresh stepguard (default settings: cache of at most "
            f"{mem['cache_max_mib']:g} MiB) was sent {mem['requests']:,} distinct requests over "
            f"AuthorizeStream in {mem['seconds']:g} s ({mem['allowed']:,} allowed). RSS after "
            f"start-up: {mem['rss_start_mib']} MiB; after the last request: {mem['rss_end_mib']} "
            f"MiB; highest sampled: {mem['rss_max_mib']} MiB. Documented bound (start-up + 1.5 x "
            f"cache bytes + 32 MiB, docs/performance.md): {mem['bound_mib']} MiB: "
            f"{'within' if within else 'EXCEEDED'}. RSS by requests: {samples}.",
        ]
    )


def render_memory(record: dict[str, Any]) -> str:
    """The block of a `--only memory` run (the full 1,000,000-request figure)."""
    mem = record["memory"]
    m = record["machine"]
    samples = ", ".join(
        f"{n:,}: {r} MiB" for n, r in mem["samples"][:: max(1, len(mem["samples"]) // 10)]
    )
    within = mem["rss_max_mib"] <= mem["bound_mib"]
    return "\n".join(
        [
            f"## Memory after {mem['requests']:,} distinct requests",
            "",
            f"Command: `{record['command']}`, run {record['started']}; {m['nproc']} CPUs "
            f"({m['cpu']}), Python {m['python']}, grpcio {m['grpcio']}.",
            "",
            f"A fresh stepguard with default settings (asyncio server, cache of at most "
            f"{mem['cache_max_mib']:g} MiB, audit trail to a file) was sent {mem['requests']:,} "
            f"distinct requests (a new `run_id` each: every one a cache miss) over AuthorizeStream "
            f"in {mem['seconds']:,.0f} s; {mem['allowed']:,} were allowed. RSS after start-up: "
            f"{mem['rss_start_mib']} MiB; after the last request: {mem['rss_end_mib']} MiB; "
            f"highest sampled: {mem['rss_max_mib']} MiB. Documented bound (start-up + 1.5 x cache "
            f"bytes + 32 MiB, docs/performance.md): {mem['bound_mib']} MiB: "
            f"{'within' if within else 'EXCEEDED'}.",
            "",
            f"RSS by requests: {samples}.",
        ]
    )
