"""benchmarks/latency.png: latency against policy count and against concurrency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

from benchmarks.policies import POLICY_COUNTS, SPREAD
from benchmarks.report import CERBOS, SG_HIT, SG_MISS, pinned, spread

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def draw(record: dict[str, Any], out: Path) -> None:
    res = record["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))

    counts = list(POLICY_COUNTS)
    sg = [res["seq"][pinned(n)]["p50_us"] for n in counts]
    sg_spread = [res["seq"][spread(n, k)]["p50_us"] for n, k in SPREAD]
    base_b = [record["baseline_b"][str(n)]["p50_us"] for n in counts]
    base_b_spread = [record["baseline_b"][f"{n} spread"]["p50_us"] for n in counts]
    left.plot(counts, sg, "o-", label="stepguard miss (evaluated), pinned: none apply")
    left.plot(counts, sg_spread, "^-", label="stepguard miss (evaluated), spread: 1 in 20 apply")
    left.plot(counts, base_b, "s--", label="in-process cedarpy, all policies, pinned")
    left.plot(counts, base_b_spread, "v--", label="in-process cedarpy, all policies, spread")
    left.axhline(
        res["seq"]["empty servicer"]["p50_us"], color="grey", ls=":", label="empty servicer"
    )
    left.set_xscale("log")
    left.set_xlabel("policies in the bundle")
    left.set_ylabel("p50 latency (us)")
    left.set_title("Latency against policy count (1 client)")
    left.legend(fontsize=8)

    levels = record["concurrency"]
    for label, style in (
        ("empty servicer", ":"),
        (SG_MISS, "-"),
        (SG_HIT, "-"),
        (CERBOS, "--"),
    ):
        ys = [res[_group(c)].get(label, {}).get("p50_us") for c in levels]
        if any(y is not None for y in ys):
            right.plot(levels, ys, "o" + style, label=f"{label} (p50)")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xticks(levels, [str(c) for c in levels])
    right.set_xlabel("concurrent clients")
    right.set_ylabel("p50 latency (us)")
    right.set_title("Latency against concurrency (Authorize)")
    right.legend(fontsize=8)
    fig.suptitle(
        f"stepguard benchmarks, {record['machine']['nproc']} CPUs, {record['started']}, "
        f"commit {record.get('commit', 'unknown')}"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _group(clients: int) -> str:
    return "seq" if clients == 1 else f"c{clients}"
