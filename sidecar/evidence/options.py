"""What an auditor asks the evidence with: the moment the answers are as of, the bundle's
lifecycle declaration, the revocation deadlines and the leaver workflows.

Apart from the store (store.py) so that the CLI parses and checks them (a bad
`--deadline` is refused) before a trail is read, and the answers read them from
the loaded store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sidecar.core.bundle import parse_iso_duration
from sidecar.core.errors import StepguardError
from sidecar.core.lifecycle import Lifecycle

DEFAULT_LEAVER_WORKFLOWS = frozenset({"leaver"})


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long after an access's end its removal may take: per target, per sensitivity,
    else the grant's `@revoke_within` obligation, else `*` (the fallback). Explicit
    targets and sensitivities are the auditor's control, so they win over the bundle's."""

    by_name: Mapping[str, timedelta] = field(default_factory=dict)

    @classmethod
    def parse(cls, specs: Iterable[str]) -> Deadlines:
        """`high=PT24H`, `github=PT1H`, `*=P1D`; StepguardError naming the bad one."""
        out: dict[str, timedelta] = {}
        for spec in specs:
            name, sep, value = spec.partition("=")
            if not sep or not name.strip():
                raise StepguardError(
                    f"--deadline {spec!r}: expected NAME=DURATION (a target, a sensitivity "
                    "or *, and an ISO-8601 duration such as PT24H)"
                )
            try:
                out[name.strip()] = parse_iso_duration(value.strip())
            except ValueError as exc:
                raise StepguardError(f"--deadline {spec!r}: {exc}") from exc
        return cls(out)

    def resolve(self, target: str, sensitivity: str, obligation_s: float | None) -> float | None:
        """The deadline in seconds after the end, None when none applies."""
        for name in (target, sensitivity):
            if name and name in self.by_name:
                return self.by_name[name].total_seconds()
        if obligation_s is not None:
            return obligation_s
        fallback = self.by_name.get("*")
        return fallback.total_seconds() if fallback is not None else None


@dataclass(frozen=True, slots=True)
class Options:
    now: datetime
    lifecycle: Lifecycle | None = None
    deadlines: Deadlines = field(default_factory=Deadlines)
    leaver_workflows: frozenset[str] = frozenset()

    @property
    def leavers(self) -> frozenset[str]:
        """Explicit leaver workflows, else the bundle's, else `leaver`."""
        if self.leaver_workflows:
            return self.leaver_workflows
        if self.lifecycle is not None and self.lifecycle.leaver_workflows:
            return self.lifecycle.leaver_workflows
        return DEFAULT_LEAVER_WORKFLOWS


__all__ = ["DEFAULT_LEAVER_WORKFLOWS", "Deadlines", "Options"]
