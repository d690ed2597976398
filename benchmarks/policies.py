"""Policy bundles of a given size, for the policy-count benchmarks.

Each bundle is the example bundle (policies/, 11 policies) plus generated
policies in the same style, up to the requested total: per-target-system
permits for team workload groups, approval-guarded identity changes and
conditional forbids, over `sys-<k>` target systems (four policies per system).
Generated policies strictly validate against the example schema, like any
bundle the sidecar loads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from benchmarks.procs import ROOT

EXAMPLE = ROOT / "policies"
SENSITIVITY = ("low", "medium", "high", "critical")


def _generated(i: int) -> str:
    k, team = i // 4, i % 7
    system = f'TargetSystem::"sys-{k}"'
    group = f'WorkloadGroup::"team-{team}"'
    kind = i % 4
    if kind == 0:
        return (
            f'@id("gen-{i}-read")\n'
            f"permit (\n  principal in {group},\n"
            f'  action in [Action::"lookup_identity", Action::"notify"],\n'
            f"  resource == {system}\n);\n"
        )
    if kind == 1:
        return (
            f'@id("gen-{i}-grant")\n'
            f"permit (\n  principal is Workload in {group},\n"
            f'  action in [Action::"grant_access", Action::"change_access"],\n'
            f"  resource == {system}\n)\nwhen\n{{\n"
            "  context has approval &&\n"
            '  context.approval.approver in Group::"identity-approvers"\n};\n'
        )
    if kind == 2:
        return (
            f'@id("gen-{i}-no-critical-revoke")\n'
            'forbid (\n  principal,\n  action == Action::"revoke_access",\n'
            f"  resource == {system}\n)\n"
            f'when {{ context has sensitivity && context.sensitivity == "critical" }};\n'
        )
    return (
        f'@id("gen-{i}-credential")\n'
        f"permit (\n  principal is Workload in {group},\n"
        f'  action == Action::"issue_credential",\n  resource == {system}\n)\n'
        f"when {{ context has workflow && context.workflow has owner }};\n"
    )


def bundle_dir(total: int, work: Path) -> Path:
    """A policy directory holding `total` policies (the 11 example ones included)."""
    out = work / f"policies-{total}"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(EXAMPLE, out, ignore=shutil.ignore_patterns("tests", "*.md"))
    example_count = 11
    extra = max(0, total - example_count)
    (out / "generated.cedar").write_text("\n".join(_generated(i) for i in range(extra)))
    entities: list[dict[str, Any]] = json.loads((out / "entities.json").read_text())
    systems = (extra + 3) // 4
    for k in range(systems):
        entities.append(
            {
                "uid": {"type": "TargetSystem", "id": f"sys-{k}"},
                "attrs": {"sensitivity": SENSITIVITY[k % 2]},  # low or medium
                "parents": [],
            }
        )
    for team in range(7):
        entities.append(
            {"uid": {"type": "WorkloadGroup", "id": f"team-{team}"}, "attrs": {}, "parents": []}
        )
    for ent in entities:  # the provisioner is in team-1 as well
        if ent["uid"] == {
            "type": "Workload",
            "id": "spiffe://example.org/ns/identity/sa/provisioner",
        }:
            ent["parents"].append({"type": "WorkloadGroup", "id": "team-1"})
    (out / "entities.json").write_text(json.dumps(entities, indent=1))
    return out
