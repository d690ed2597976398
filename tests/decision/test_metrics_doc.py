"""The metrics table in docs/deployment.md names exactly what the code exports.

Dashboards and alerts are written from the docs; a renamed metric or label
that the docs still show breaks them silently, so the table is checked
against the registry: names, types and label names.
"""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from sidecar.decision.metrics import Metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
ROW = re.compile(r"^\| `(?P<name>stepguard_[a-z_]+)` \| (?P<type>\w+) \|(?P<labels>[^|]*)\|")


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            labels = tuple(sorted(re.findall(r"`([a-z_]+)`", m["labels"])))
            assert m["name"] not in rows, f"{m['name']} is documented twice"
            rows[m["name"]] = (m["type"], labels)
    return rows


def exported() -> dict[str, tuple[str, tuple[str, ...]]]:
    metrics = Metrics()
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            kind = str(value._type)
            name = value._name + ("_total" if kind == "counter" else "")
            out[name] = (kind, tuple(sorted(value._labelnames)))
    return out


def test_every_exported_metric_is_documented_as_it_is() -> None:
    code, docs = exported(), documented()
    assert len(code) >= 13  # the registry was read (a broken lookup would find nothing)
    assert set(code) - set(docs) == set(), "exported but not in docs/deployment.md"
    assert set(docs) - set(code) == set(), "in docs/deployment.md but not exported"
    for name, (kind, labels) in code.items():
        assert docs[name] == (kind, labels), f"{name}: docs say {docs[name]}, code {kind, labels}"


def test_exported_names_follow_prometheus_conventions() -> None:
    for name, (kind, _) in exported().items():
        assert re.fullmatch(r"stepguard_[a-z][a-z0-9_]*", name), name
        if kind == "counter":
            assert name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), f"{name}: durations are in seconds"
