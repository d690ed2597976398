"""The RESULTS.md block: every figure of a run, its ratios, and the targets of issues 4 and 19.

A target's figure is a paired ratio (benchmarks/stats.py): the median of the
ratios of the two subjects' figures round by round, with a 95% bootstrap
interval; its verdict is met, not met or undecided (the interval straddles
the target). The miss (evaluated) comparisons with Cerbos, which evaluates
every request, are the headline; cache hits against Cerbos are reported
beside them and named cached vs evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from benchmarks.policies import POLICY_COUNTS, SPREAD
from benchmarks.results import table
from benchmarks.stats import NO_RATIO, Ratio, paired_ratio, verdict

NA = "n/a"
# Subject labels: what the cache did is in every name.
HIT = "hit (cached)"
MISS = "miss (evaluated)"
CERBOS = "Cerbos (evaluated)"
CERBOS_B50 = "Cerbos batch 50 (evaluated)"
SG_HIT, SG_MISS = f"stepguard {HIT}", f"stepguard {MISS}"
HEADLINE = "headline, evaluated vs evaluated: "
CACHED_VS = "cached vs evaluated: "
# The targets' issues: 4 (the first targets), 19 (workers, cheaper misses); a
# comparison both bound alike is one row, one they bound apart is a row each.
BOTH = "4, 19"
ISSUE_19_BOUND = ", issue 19's bound"


def with_workers(kind: str, workers: int, every_core: bool) -> str:
    """The scaling group's subject: stepguard (HIT or MISS) with `workers` processes;
    `every_core` when that is `serve`'s default (the usable cores)."""
    noun = "worker" if workers == 1 else "workers"
    return f"stepguard {kind}, {workers} {noun}{' (all usable cores)' if every_core else ''}"


def pinned(n: int) -> str:
    """A bundle of `n` policies of which none applies to the request (the index's best case)."""
    return f"{SG_MISS}, {n} pinned policies (none apply)"


def spread(n: int, applicable: int) -> str:
    """A bundle of `n` policies spread over the schema, `applicable` applying to the request."""
    return f"{SG_MISS}, {n} spread policies ({applicable} apply)"


def _get(res: dict[str, Any], group: str, label: str, key: str) -> float:
    try:
        value = res[group][label][key]
    except KeyError:
        return math.nan
    return float(value) if value is not None else math.nan


def _rounds(res: dict[str, Any], group: str, label: str, key: str) -> list[float]:
    """One figure of a subject, round by round ([] when the subject was not measured)."""
    try:
        rounds = res[group][label]["rounds"]
    except KeyError:
        return []
    return [math.nan if r.get(key) is None else float(r[key]) for r in rounds]


def _x(a: float, b: float) -> str:
    return NA if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}x"


def _n(v: float, digits: int = 0) -> str:
    return NA if math.isnan(v) else f"{v:,.{digits}f}"


def _pair(
    res: dict[str, Any],
    group: str,
    num: str,
    den: str,
    key: str,
    scale: Callable[[float], float] = lambda v: v,
) -> Ratio:
    """The paired ratio num/den of one figure within one interleaved group."""
    a, b = _rounds(res, group, num, key), _rounds(res, group, den, key)
    if not a or not b or len(a) != len(b):
        return NO_RATIO
    return paired_ratio([scale(v) for v in a], b)


def _targets(record: dict[str, Any]) -> list[list[str]]:
    """The targets, headline first: one row each, with its interval and verdict."""
    res = record["results"]
    rows: list[list[str]] = []

    def target(
        name: str, ratio: Ratio, limit: float, *, at_most: bool, how: str, issues: str = "4"
    ) -> None:
        bound = f"{'<=' if at_most else '>='} {limit:g}"
        if not ratio.measured:
            rows.append([name, how, NA, NA, bound, verdict(ratio, limit, at_most=at_most), issues])
            return
        rows.append(
            [
                name,
                how,
                f"{ratio.median:.2f}",
                f"{ratio.low:.2f} to {ratio.high:.2f} ({ratio.rounds} rounds)",
                bound,
                verdict(ratio, limit, at_most=at_most),
                issues,
            ]
        )

    tp, dps = "throughput", "decisions_per_s"
    # The headline: stepguard evaluating every request against Cerbos, which always does.
    target(
        f"{HEADLINE}8 clients, throughput (evaluated) / Cerbos (evaluated)",
        _pair(res, "c8", SG_MISS, CERBOS, dps),
        1.0,
        at_most=False,
        how="decisions/s",
        issues=BOTH,
    )
    for q in ("p50", "p99"):
        target(
            f"{HEADLINE}8 clients, {q} (evaluated) / Cerbos (evaluated) {q}",
            _pair(res, "c8", SG_MISS, CERBOS, f"{q}_us"),
            1.0,
            at_most=True,
            how="below 1 wins",
            issues=BOTH,
        )
    target(
        f"{HEADLINE}8 clients, server CPU per decision (evaluated) / Cerbos (evaluated)",
        _pair(res, "c8", SG_MISS, CERBOS, "server_cpu_us"),
        1.2,
        at_most=True,
        how="whole process trees, below 1 wins",
        issues="19",
    )
    stream_vs = f"{HEADLINE}AuthorizeStream (evaluated) / Cerbos unary (evaluated), decisions/s"
    stream_ratio = _pair(res, tp, f"stepguard stream {MISS}", CERBOS, dps)
    target(stream_vs, stream_ratio, 2.0, at_most=False, how="window 64 vs 8 clients")
    target(
        f"{stream_vs}{ISSUE_19_BOUND}",
        stream_ratio,
        1.5,
        at_most=False,
        how="window 64 vs 8 clients",
        issues="19",
    )
    target(
        f"{HEADLINE}batches of 50 (evaluated) / Cerbos batches of 50 (evaluated), decisions/s",
        _pair(res, tp, f"stepguard batch 50 {MISS}", CERBOS_B50, dps),
        1.0,
        at_most=False,
        how="8 clients",
        issues=BOTH,
    )
    # Evaluated decisions against the empty servicer and across bundle sizes.
    target(
        "miss (evaluated) p50 / empty p50, example policies",
        _pair(res, "seq", SG_MISS, "empty servicer", "p50_us"),
        1.5,
        at_most=True,
        how="1 client",
        issues=BOTH,
    )
    small, large = POLICY_COUNTS[0], POLICY_COUNTS[-1]
    target(
        f"miss p50, {large:,} / {small} pinned policies (none apply)",
        _pair(res, "seq", pinned(large), pinned(small), "p50_us"),
        2.0,
        at_most=True,
        how="1 client",
    )
    (n0, k0), (n1, k1) = SPREAD[0], SPREAD[-1]
    target(
        f"miss p50, {n1:,} / {n0} spread policies ({k1} / {k0} apply)",
        _pair(res, "seq", spread(n1, k1), spread(n0, k0), "p50_us"),
        2.0,
        at_most=True,
        how="1 client",
    )
    target(
        "per decision in a batch of 100 / single call (evaluated)",
        _pair(res, "seq", f"stepguard batch 100 {MISS}", SG_MISS, "p50_us", lambda v: v / 100),
        0.15,
        at_most=True,
        how="1 client, p50",
        issues=BOTH,
    )
    target(
        "8 clients, throughput (evaluated) / empty",
        _pair(res, "c8", SG_MISS, "empty servicer", dps),
        0.85,
        at_most=False,
        how="decisions/s",
    )
    # Cache hits: against the empty servicer, and cached against Cerbos's evaluated.
    target(
        "hit (cached) p50 / empty p50",
        _pair(res, "seq", SG_HIT, "empty servicer", "p50_us"),
        1.15,
        at_most=True,
        how="1 client",
    )
    target(
        "per decision in a batch of 100 / single call (cached)",
        _pair(res, "seq", f"stepguard batch 100 {HIT}", SG_HIT, "p50_us", lambda v: v / 100),
        0.15,
        at_most=True,
        how="1 client, p50",
    )
    target(
        "8 clients, throughput (cached) / empty",
        _pair(res, "c8", SG_HIT, "empty servicer", dps),
        0.85,
        at_most=False,
        how="decisions/s",
    )
    hits_vs = f"{CACHED_VS}8 clients, throughput (cached) / Cerbos (evaluated)"
    hits_ratio = _pair(res, "c8", SG_HIT, CERBOS, dps)
    target(hits_vs, hits_ratio, 1.0, at_most=False, how="decisions/s")
    target(
        f"{hits_vs}{ISSUE_19_BOUND}", hits_ratio, 1.3, at_most=False, how="decisions/s", issues="19"
    )
    for q in ("p50", "p99"):
        target(
            f"{CACHED_VS}8 clients, {q} (cached) / Cerbos (evaluated) {q}",
            _pair(res, "c8", SG_HIT, CERBOS, f"{q}_us"),
            1.0,
            at_most=True,
            how="below 1 wins",
        )
    target(
        f"{CACHED_VS}AuthorizeStream (cached) / Cerbos unary (evaluated), decisions/s",
        _pair(res, tp, f"stepguard stream {HIT}", CERBOS, dps),
        2.0,
        at_most=False,
        how="window 64 vs 8 clients",
    )
    target(
        f"{CACHED_VS}batches of 50 (cached) / Cerbos batches of 50 (evaluated), decisions/s",
        _pair(res, tp, f"stepguard batch 50 {HIT}", CERBOS_B50, dps),
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


def _paired_x(ratio: Ratio) -> str:
    """A paired ratio as a table cell: median and its 95% interval."""
    if not ratio.measured:
        return NA
    return f"{ratio.median:.2f}x ({ratio.low:.2f} to {ratio.high:.2f})"


def _busy(res: dict[str, Any], group: str, label: str) -> str:
    """Cores kept busy by a subject: server and load-generator CPU per decision x decisions/s."""
    cpu = _get(res, group, label, "server_cpu_us") + _get(res, group, label, "client_cpu_us")
    return _n(cpu * _get(res, group, label, "decisions_per_s") / 1e6, 2)


def scaling_table(record: dict[str, Any]) -> str:
    """Throughput with 1, 2 and all usable cores' worker processes, misses and hits, 8 clients,
    beside Cerbos: one row per worker count, ratios paired round by round."""
    res = record["results"]
    group = res.get("scaling", {})
    every = record.get("workers")
    dps = "decisions_per_s"
    rows = []
    for w in record.get("scaling_workers", []):
        miss, hit = (with_workers(k, w, w == every) for k in (MISS, HIT))
        miss1, hit1 = (with_workers(k, 1, every == 1) for k in (MISS, HIT))
        rows.append(
            [
                f"{w}{' (all usable cores, the default)' if w == every else ''}",
                _n(_get(res, "scaling", miss, dps)),
                _paired_x(_pair(res, "scaling", miss, miss1, dps)),
                _paired_x(_pair(res, "scaling", miss, CERBOS, dps)),
                _n(_get(res, "scaling", miss, "p50_us")),
                _n(_get(res, "scaling", miss, "server_cpu_us")),
                _n(_get(res, "scaling", miss, "client_cpu_us")),
                _busy(res, "scaling", miss),
                _n(_get(res, "scaling", hit, dps)),
                _paired_x(_pair(res, "scaling", hit, hit1, dps)),
                _paired_x(_pair(res, "scaling", hit, CERBOS, dps)),
            ]
        )
    if CERBOS in group:
        rows.append(
            [
                "Cerbos (evaluated; a Go process on every core)",
                _n(_get(res, "scaling", CERBOS, dps)),
                "",
                "1.00x",
                _n(_get(res, "scaling", CERBOS, "p50_us")),
                _n(_get(res, "scaling", CERBOS, "server_cpu_us")),
                _n(_get(res, "scaling", CERBOS, "client_cpu_us")),
                _busy(res, "scaling", CERBOS),
                "",
                "",
                "",
            ]
        )
    return table(
        [
            "stepguard worker processes",
            "misses: decisions/s",
            "misses / 1 worker",
            "misses / Cerbos",
            "miss p50 us",
            "server CPU us / miss",
            "load generator CPU us / miss",
            "cores busy (server + load generator)",
            "hits: decisions/s",
            "hits / 1 worker",
            "hits / Cerbos",
        ],
        rows,
    )


def _bundle_name(name: str) -> str:
    """Baseline B's bundle keys: `example`, `<n>` (pinned) and `<n> spread`."""
    if name == "example":
        return name
    n = int(name.split(maxsplit=1)[0])
    if name.endswith("spread"):
        return f"{n} spread ({dict(SPREAD)[n]} apply)"
    return f"{n} pinned (none apply)"


def _bundle_subject(name: str) -> str:
    """The Authorize subject measured on baseline B's bundle `name`."""
    if name == "example":
        return SG_MISS
    n = int(name.split(maxsplit=1)[0])
    return spread(n, dict(SPREAD)[n]) if name.endswith("spread") else pinned(n)


def render(record: dict[str, Any], plot_name: str) -> str:
    m = record["machine"]
    res = record["results"]
    t = record["timing"]
    mem = record["memory"]
    b = record["baseline_b"]
    bb_rows = [
        [
            _bundle_name(name),
            str(v["policies"]),
            str(v["evaluated_by_index"]),
            _n(v["p50_us"]),
            _n(v["p99_us"]),
            _n(v["engine_indexed_p50_us"]),
            _n(_get(res, "seq", _bundle_subject(name), "p50_us")),
        ]
        for name, v in b.items()
    ]
    samples = ", ".join(
        f"{n:,}: {r} MiB" for n, r in mem["samples"][:: max(1, len(mem["samples"]) // 6)]
    )
    within = mem["rss_max_mib"] <= mem["bound_mib"]
    workers = record.get("workers", 1)
    return "\n".join(
        [
            "## Figures of the last `./dev bench` run",
            "",
            f"Command: `{record['command']}`, run {record['started']} on commit "
            f"{record.get('commit', 'unknown')} ({record['wall_s']} s in all). Every round of "
            f"every figure: `{record.get('data_file', 'not written')}`. "
            f"Each measurement: {t['seconds']:g} s of timed calls, in {t['rounds']} "
            f"interleaved rounds of {t['seconds'] / t['rounds']:.2g} s (the order of a group's "
            f"subjects rotated from round to round), after a {t['warmup']:g} s warm-up each.",
            "",
            f"Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}; Python {m['python']}, "
            f"grpcio {m['grpcio']}, protobuf {m['protobuf']}, cedarpy {m['cedarpy']}. "
            f"Load average before / after: {record['load_before']} / {record['load_after']}. "
            "The machine is shared with other engineers running tests, so every figure is "
            "noisy: absolute figures move by tens of percent from run to run; paired ratios "
            "within one interleaved group are the robust ones, and their intervals say how "
            "far this run can be trusted.",
            "",
            "Servers run in their own processes on TCP loopback (unless a Unix socket or the "
            f"other server mode is named), gRPC {record['server_mode']} server (the default), "
            "decision cache "
            "on (defaults), audit trail to a real file "
            f"({record['audit_events']:,} events written by the main stepguard server "
            "in this run). "
            "The main stepguard server (every subject named plain `stepguard`, so every "
            f"headline target) runs as shipped: `serve --workers {workers}`, the default "
            "(the usable cores of this machine's CPU quota), a supervisor and "
            f"{workers} worker process{'' if workers == 1 else 'es'}, each with its own "
            "engine, cache and chain; the server of the other mode does too. The empty "
            "servicer is one process, and so are the policy-count servers (their targets "
            "are one client's latency, which one worker answers). "
            "The request is an approved `grant_access` on `jira` (ALLOW); a *hit (cached)* "
            "repeats it and is answered by the decision cache; a *miss (evaluated)* sends a "
            "new `run_id` each time, as every step of every run does, and is evaluated. Cerbos "
            "has no decision cache: every Cerbos figure is an evaluated one, so the headline "
            "comparisons are stepguard's evaluated decisions against Cerbos's; cached "
            "decisions against Cerbos are shown beside them, named *cached vs evaluated*. "
            "Policy count: *pinned* bundles add policies each pinned to a target system the "
            "request does not name (none applies, so the index leaves the example's 6 at any "
            "size: its best case); *spread* bundles spread them over the schema's actions, "
            "workload groups and targets, one in twenty applying to the request. "
            "Latencies are per call, measured in the "
            "client (Python grpcio, raw bytes in and out). Concurrent clients are asyncio tasks "
            "in one load-generator process, each with its own channel and so its own "
            "connection (for every server alike, Cerbos included), as each process of an "
            "orchestrator's worker pool has its own: the kernel spreads TCP *connections* "
            "over stepguard's workers (SO_REUSEPORT), not calls, so how evenly 8 "
            "connections fall on the workers varies from round to round. Over the Unix "
            "socket each client dials every worker's socket and spreads its calls "
            "round-robin, as sidecar.client does. A stream is one call on one connection, "
            "so one worker answers it; a batch is one call, answered by one worker. Server "
            "CPU is the user+system time per decision of the server's whole process tree "
            "(supervisor and workers, read from /proc before and after each timed window).",
            "",
            f"![latency against policy count and concurrency]({plot_name})",
            "",
            "### Targets (issues 4 and 19), as paired ratios measured in this run",
            "",
            "Each ratio is the median over rounds of the two figures' ratio within a round, "
            "with a 95% bootstrap interval of that median (rounds resampled, "
            "benchmarks/stats.py). Verdict: *met* when the whole interval is on the target's "
            "side, *not met* when the whole interval is on the other side, *undecided* when "
            "it straddles the target. The headline rows come first. *issues* names the "
            "issue(s) that set the target; where issue 19 bounds a comparison of issue 4 "
            "differently, each bound has its row.",
            "",
            table(
                [
                    "target",
                    "how",
                    "measured (median)",
                    "95% interval",
                    "target",
                    "verdict",
                    "issues",
                ],
                _targets(record),
            ),
            "",
            "### Scaling: worker processes (8 concurrent clients, issue 19)",
            "",
            "Throughput of stepguard with 1, 2 and all usable cores' worker processes, "
            "misses (evaluated) and hits (cached), each measured in one interleaved group "
            "with Cerbos; ratios are paired round by round (median, 95% interval). The "
            f"machine has {m.get('usable_cores', m['nproc'])} usable cores, shared with "
            "the load generator (one Python process driving all 8 clients) and with the "
            "other engineers' work: with as many workers as cores, the workers and the "
            "client compete for the same cores. *cores busy* is the CPU the server's process "
            "tree and the load generator spent per decision, times decisions per second: "
            "when it reaches the usable cores, the machine, not the server, is the limit.",
            "",
            scaling_table(record),
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
            "*evaluated with the index* counts the policies whose scope the index cannot rule "
            "out for the benchmarked request: Cedar evaluates those.",
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
            _group_table(res, "transport32", SG_HIT),
            "",
            "### Throughput: AuthorizeStream and batches against Cerbos (evaluated)",
            "",
            _group_table(res, "throughput", CERBOS),
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
            f"Command: `{record['command']}`, run {record['started']} on commit "
            f"{record.get('commit', 'unknown')}; every RSS sample: "
            f"`{record.get('data_file', 'not written')}`. {m['nproc']} CPUs "
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
