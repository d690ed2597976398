"""The auditor's HTML report: one self-contained file (inline CSS and SVG, no scripts,
no URL of any kind), so it can be mailed, archived with the trail and opened offline.

Every value from the trail is HTML-escaped: identities, run ids and error classes
are whatever callers sent. The figures are those of answers.py and offboarding.py; the page says
first whether the trail verified.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from sidecar.evidence import answers, offboarding
from sidecar.evidence.store import Store

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1d2330;max-width:72rem}
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.15rem;margin:2rem 0 .5rem}
.ok{color:#0b6b2f}.broken{color:#a40000;font-weight:600}
.figures{display:flex;gap:1rem;flex-wrap:wrap}
.figure{border:1px solid #d5d9e0;border-radius:6px;padding:.75rem 1rem;min-width:11rem}
.figure b{display:block;font-size:1.8rem}
table{border-collapse:collapse;width:100%;margin:.25rem 0}
th,td{border-bottom:1px solid #e3e6eb;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f8}td{overflow-wrap:anywhere}
td.ref{font:12px ui-monospace,monospace;color:#4a5261}
.none,.more{color:#6b7280}svg text{font:12px system-ui,sans-serif}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(
    ident: str,
    columns: Sequence[str],
    rows: Sequence[dict[str, Any]],
    *,
    limit: int | None = None,
    every: str = "",
) -> str:
    """The rows as a table, at most `limit` of them; when some are left out, a line says
    how many and the command (`every`) that lists them all."""
    if not rows:
        return f'<p class="none" id="{ident}-none">None.</p>'
    shown = rows if limit is None else rows[:limit]
    head = "".join(f"<th>{_e(c)}</th>" for c in (*columns, "evidence"))
    body = []
    for r in shown:
        cells = "".join(f"<td>{_e(_cell(r.get(c)))}</td>" for c in columns)
        refs = "<br>".join(_e(x) for x in r.get("evidence", []))
        body.append(f"<tr>{cells}<td class=ref>{refs}</td></tr>")
    table = (
        f'<table id="{ident}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )
    if len(shown) == len(rows):
        return table
    return (
        f'{table}<p class="more" id="{ident}-more">The first {len(shown):,} of {len(rows):,} '
        f"rows, in the order <code>{_e(every)}</code> lists them all (or write this report "
        "with <code>--all-rows</code>).</p>"
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _confidence_chart(complete: int, total: int) -> str:
    """A horizontal bar: leavers fully deprovisioned against those who are not."""
    width = 400
    done = round(width * complete / total) if total else 0
    return (
        f'<svg id="confidence-chart" width="{width + 20}" height="60" role="img" '
        f'aria-label="{complete} of {total} leavers fully deprovisioned">'
        f'<rect x="10" y="10" width="{width}" height="24" fill="#f4c7c3"/>'
        f'<rect x="10" y="10" width="{done}" height="24" fill="#3a9a5b"/>'
        f'<text x="10" y="52">{complete} fully deprovisioned, {total - complete} not</text>'
        "</svg>"
    )


def _ttr_chart(stats: Sequence[dict[str, Any]]) -> str:
    """Bars per target: p50, p95 and max time to revoke, in hours."""
    if not stats:
        return '<p class="none" id="ttr-chart-none">No revocation with a known end.</p>'
    peak = max(s["max_s"] for s in stats) or 1.0
    row, width, left = 3 * 14 + 12, 420, 110
    parts = []
    colors = (("p50_s", "#7aa7d9"), ("p95_s", "#3b6fb0"), ("max_s", "#1d3f6e"))
    for i, s in enumerate(stats):
        y = 10 + i * row
        parts.append(f'<text x="0" y="{y + 22}">{_e(s["target"])}</text>')
        for j, (name, color) in enumerate(colors):
            w = max(1, round(width * s[name] / peak))
            label = f"{name[:-2]} {answers.duration_text(s[name])}"
            parts.append(
                f'<rect x="{left}" y="{y + j * 14}" width="{w}" height="12" fill="{color}">'
                f"<title>{_e(s['target'])} {_e(label)}</title></rect>"
                f'<text x="{left + w + 4}" y="{y + j * 14 + 10}">{_e(label)}</text>'
            )
    height = 20 + len(stats) * row
    return (
        f'<svg id="ttr-chart" width="{left + width + 120}" height="{height}" role="img" '
        f'aria-label="time to revoke per target">{"".join(parts)}</svg>'
    )


# How many rows a table of the report shows unless asked for more: with every row, the
# benchmark's 10-million-event trail made about 187,000 table rows (77 MB; docs/evidence.md),
# more than a browser lays out in reasonable time. The figures count every row, and the
# CLI lists them all.
DEFAULT_ROWS = 1000


def render_html(store: Store, *, rows: int | None = DEFAULT_ROWS) -> str:
    """The whole report as one HTML document; each table at most `rows` rows (None: all)."""
    ver = store.verification
    leavers = offboarding.leavers(store)
    complete, total = leavers.summary["fully_deprovisioned"], leavers.summary["leavers"]
    ratio = offboarding.confidence(complete, total)
    shown = f"{ratio * 100:.0f} %" if ratio is not None else "n/a"
    opened = answers.open_grants(store)
    exc = answers.exceptions(store)
    violations = [r for r in exc.rows if r["category"] in ("violation", "denied step ran")]
    stats = offboarding.time_to_revoke(store)
    ttr_rows = [
        {
            "target": s["target"],
            "revocations": s["revocations"],
            "p50": answers.duration_text(s["p50_s"]),
            "p95": answers.duration_text(s["p95_s"]),
            "max": answers.duration_text(s["max_s"]),
            "evidence": s["evidence"],  # the slowest revocation's records
        }
        for s in stats
    ]
    chains = "".join(
        f"<li>{_e(c.chain)}: "
        + ("intact" if c.ok else f'<span class="broken">{_e(c.problem)}</span>')
        + f" ({c.records} records)</li>"
        for c in ver.chains
    )
    status = "ok" if ver.ok else "broken"
    late = leavers.summary["missed_deadline"]
    missed = ", ".join(late if rows is None else late[:rows]) or "none"
    more = (
        f' <span class="more" id="missed-deadline-more">and {len(late) - rows:,} more</span>'
        if rows is not None and len(late) > rows
        else ""
    )
    # The long tables, each at most `rows` rows, and the command that lists them all.
    tables = {
        ident: _table(ident, columns, found, limit=rows, every=f"stepguard evidence {cmd} --csv")
        for ident, columns, found, cmd in (
            ("leavers", offboarding.LEAVER_COLUMNS, leavers.rows, "leavers"),
            ("open-grants", answers.OPEN_COLUMNS, opened.rows, "open-grants"),
            ("violations", answers.EXCEPTION_COLUMNS, violations, "exceptions"),
            ("exceptions", answers.EXCEPTION_COLUMNS, exc.rows, "exceptions"),
        )
    }
    body = f"""
<h1>Access evidence</h1>
<p>Answered at {_e(store.now)} from {len(ver.chains)} chain(s).</p>
<p id="verification" class="{status}" data-ok="{str(ver.ok).lower()}">{_e(ver.summary())}</p>
<ul>{chains}</ul>
<div class="figures">
<div class="figure">Revocation confidence<b id="confidence">{_e(shown)}</b>
<span id="confidence-detail">{complete} of {total} leavers fully deprovisioned</span></div>
<div class="figure">Open grants<b id="open-count">{len(opened.rows)}</b></div>
<div class="figure">Violations<b id="violation-count">{len(violations)}</b></div>
<div class="figure">Exceptions<b id="exception-count">{len(exc.rows)}</b></div>
</div>
{_confidence_chart(complete, total)}
<h2>Leavers</h2>
<p>Missed their removal deadline: <span id="missed-deadline">{_e(missed)}</span>{more}.</p>
{tables["leavers"]}
<h2>Time to revoke, per target</h2>
<p>From the end of an access (its time bound, or its holder's leaver event) to its removal;
the evidence is the slowest one's.</p>
{_ttr_chart(stats)}
{_table("time-to-revoke", ("target", "revocations", "p50", "p95", "max"), ttr_rows)}
<h2>Open grants</h2>
{tables["open-grants"]}
<h2>Violations</h2>
{tables["violations"]}
<h2>All exceptions</h2>
{tables["exceptions"]}
"""
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width'>"
        f"<title>stepguard evidence</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )
