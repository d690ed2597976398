"""Verification of the trails the evidence is loaded from: `audit verify`'s checks.

Every chain of every trail is checked exactly as `audit verify` checks it
(audit/chains.py); the verdict travels with every answer (answers.py), so
evidence read from a broken chain says so. The store (store.py) runs this
before it loads a record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.audit.chains import chains_to_verify, set_findings, verify_chain
from sidecar.audit.verify import EXIT_ERROR, Report
from sidecar.audit.workers import TrailSet
from sidecar.core.errors import StepguardError


@dataclass(frozen=True, slots=True)
class ChainStatus:
    """One chain's `audit verify` verdict (or a finding about the trail as a whole)."""

    trail: str
    chain: str
    ok: bool
    records: int
    problem: str
    exit_code: int

    def to_json(self) -> dict[str, Any]:
        return {
            "trail": self.trail,
            "chain": self.chain,
            "ok": self.ok,
            "records": self.records,
            "problem": self.problem,
            "exit": self.exit_code,
        }


@dataclass(frozen=True, slots=True)
class Verification:
    """What `audit verify` says of every chain the evidence was loaded from."""

    chains: tuple[ChainStatus, ...]

    @property
    def ok(self) -> bool:
        return bool(self.chains) and all(c.ok for c in self.chains)

    @property
    def exit_code(self) -> int:
        """0 when every chain is intact, else the first broken chain's verify exit code."""
        return next((c.exit_code for c in self.chains if not c.ok), 0)

    def summary(self) -> str:
        records = sum(c.records for c in self.chains)
        if self.ok:
            return f"verified: {len(self.chains)} chain(s) intact, {records} records"
        broken = "; ".join(f"{c.chain}: {c.problem}" for c in self.chains if not c.ok)
        return f"CHAIN BROKEN: this evidence rests on a trail that does not verify ({broken})"

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "chains": [c.to_json() for c in self.chains],
        }


def status_of(report: Report) -> ChainStatus:
    """A chain's `audit verify` report as its status in the evidence."""
    p = report.problem
    return ChainStatus(
        report.part_of or report.trail,
        report.trail,
        p is None,
        report.records,
        str(p) if p is not None else "",
        p.exit_code if p is not None else 0,
    )


def verify_trails(
    sets: Sequence[TrailSet],
    key: bytes | None = None,
    *,
    accept_missing_anchor: bool = False,
    checkpoints: Path | None = None,
) -> Verification:
    """The same checks as `audit verify` on every chain of every trail."""
    found: list[ChainStatus] = []
    for trails in sets:
        found.extend(status_of(r) for r in set_findings(trails))
        for chain in chains_to_verify(trails):
            try:
                report = verify_chain(
                    trails,
                    chain,
                    key,
                    accept_missing_anchor=accept_missing_anchor,
                    checkpoints=checkpoints,
                )
            except StepguardError as exc:
                found.append(ChainStatus(trails.name, chain.name, False, 0, str(exc), EXIT_ERROR))
                continue
            found.append(status_of(report))
    return Verification(tuple(found))


__all__ = ["ChainStatus", "Verification", "status_of", "verify_trails"]
