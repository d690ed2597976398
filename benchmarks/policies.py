"""Policy bundles of a given size, for the policy-count benchmarks.

Each bundle is the example bundle (policies/) plus generated
policies in the same style, up to the requested total. Two workloads:

- *pinned* (`bundle_dir`): per-target-system permits for team workload
  groups, approval-guarded identity changes and conditional forbids, each
  pinned to one `sys-<k>` target system (four policies per system). None of
  them applies to the benchmarked request (a `grant_access` on `jira`), so
  the index leaves the same example policies to evaluate at any size: the
  best case for the index, flat by construction.
- *spread* (`spread_bundle_dir`): policies spread over the schema's actions,
  the workload groups and the target systems (the example ones and
  `sys-<k>`), of which `applicable` apply to the benchmarked request (their
  scope matches it, so Cedar evaluates their conditions; none changes its
  ALLOW). The others each miss it on one dimension only: another target,
  another action, or a workload group the principal is not in.

Generated policies strictly validate against the example schema, like any
bundle the sidecar loads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from benchmarks.procs import ROOT
from sidecar.core.cedartext import split_policies

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


# How many policies the example bundle holds (counted, so the totals stay exact as it grows).
EXAMPLE_COUNT = sum(len(split_policies(p.read_text())) for p in EXAMPLE.glob("*.cedar"))
ACTIONS = (
    "create_account",
    "grant_access",
    "change_access",
    "issue_credential",
    "revoke_access",
    "disable_credential",
    "delete_account",
    "verify_revocation",
    "lookup_identity",
    "notify",
)
EXAMPLE_TARGETS = ("okta", "aws-prod", "github", "google-workspace", "slack")  # not jira
TEAMS = 7  # team-0 .. team-6; the benchmarked principal is in team-1


def _applicable(j: int) -> str:
    """A policy whose scope matches the benchmarked request and whose condition is false."""
    kind = j % 4
    if kind == 0:
        return (
            f'@id("spread-{j}-applies-step")\n'
            'permit (\n  principal in WorkloadGroup::"team-1",\n'
            '  action == Action::"grant_access",\n  resource == TargetSystem::"jira"\n)\n'
            f'when {{ context has step_id && context.step_id == "grant-jira-{j}" }};\n'
        )
    if kind == 1:
        return (
            f'@id("spread-{j}-applies-attempts")\n'
            'forbid (\n  principal,\n  action in Action::"identity-change",\n'
            '  resource == TargetSystem::"jira"\n)\n'
            f"when {{ context has attempt && context.attempt > {5 + j} }};\n"
        )
    if kind == 2:
        return (
            f'@id("spread-{j}-applies-requester")\n'
            'permit (\n  principal is Workload in WorkloadGroup::"provisioning",\n'
            '  action in [Action::"grant_access", Action::"change_access"],\n'
            "  resource is TargetSystem\n)\nwhen\n{\n"
            '  resource.sensitivity == "medium" &&\n'
            f'  context has requester && context.requester == User::"user-{j}"\n}};\n'
        )
    return (
        f'@id("spread-{j}-applies-frozen")\n'
        'forbid (\n  principal in WorkloadGroup::"team-1",\n'
        '  action == Action::"grant_access",\n  resource\n)\n'
        f'when {{ context has workflow_id && context.workflow_id == "frozen-{j}" }};\n'
    )


def _not_applicable(i: int) -> str:
    """A policy that misses the benchmarked request on one dimension (target, action, group)."""
    team = i % TEAMS
    action = ACTIONS[i % len(ACTIONS)]
    effect = "forbid" if i % 5 == 4 else "permit"
    when = (
        'when { context has sensitivity && context.sensitivity == "critical" }'
        if effect == "forbid"
        else "when { context has workflow && context.workflow has owner }"
    )
    miss = i % 3
    if miss == 0:  # another target system (any action, any group)
        target = EXAMPLE_TARGETS[i % len(EXAMPLE_TARGETS)] if i % 4 == 0 else f"sys-{i // 4}"
        scope = f'WorkloadGroup::"team-{team}"', f'Action::"{action}"', target
    elif miss == 1:  # another action on jira
        other = ACTIONS[i % len(ACTIONS)] if action != "grant_access" else "notify"
        scope = f'WorkloadGroup::"team-{team}"', f'Action::"{other}"', "jira"
    else:  # a group the principal is not in, the request's action and target
        outside = (0, 2, 3, 4, 5, 6)[i % 6]
        scope = f'WorkloadGroup::"team-{outside}"', f'Action::"{action}"', "jira"
    group, act, target = scope
    return (
        f'@id("spread-{i}-other")\n'
        f"{effect} (\n  principal in {group},\n  action == {act},\n"
        f'  resource == TargetSystem::"{target}"\n)\n{when};\n'
    )


def spread_bundle_dir(total: int, applicable: int, work: Path) -> Path:
    """A policy directory of `total` policies (the example ones included), spread over the
    schema, `applicable` of the generated ones applying to the benchmarked request."""
    extra = max(0, total - EXAMPLE_COUNT)
    if applicable > extra:
        raise ValueError(f"{applicable} applicable policies do not fit in {total}")
    text = [_applicable(j) for j in range(applicable)]
    text += [_not_applicable(i) for i in range(extra - applicable)]
    return _write(work / f"policies-{total}-spread-{applicable}", text, (extra + 3) // 4)


def bundle_dir(total: int, work: Path) -> Path:
    """A policy directory holding `total` policies (the example ones included), every
    generated one pinned to a target system the benchmarked request does not name."""
    extra = max(0, total - EXAMPLE_COUNT)
    return _write(
        work / f"policies-{total}", [_generated(i) for i in range(extra)], (extra + 3) // 4
    )


def _write(out: Path, policies: list[str], systems: int) -> Path:
    """The example bundle plus `policies`, `sys-0` .. `sys-<systems - 1>` and the team groups."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(EXAMPLE, out, ignore=shutil.ignore_patterns("tests", "*.md"))
    (out / "generated.cedar").write_text("\n".join(policies))
    entities: list[dict[str, Any]] = json.loads((out / "entities.json").read_text())
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


# The bundles `./dev bench` measures: pinned ones of these sizes, and spread ones of
# the same sizes with a realistic share (one in twenty) applying to the request.
POLICY_COUNTS = (20, 200, 2000)
SPREAD = tuple((n, n // 20) for n in POLICY_COUNTS)  # (20, 1), (200, 10), (2000, 100)
