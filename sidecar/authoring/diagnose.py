"""What `stepguard validate` reports about a policy directory, as data.

Problems are errors (the sidecar refuses the directory; located by the core's
sidecar/core/problems.py, which reads the directory as the loader does) or
warnings: policies that load but can error at run time in a way that fails
open (sidecar/authoring/failopen.py). `--strict` refuses warnings too. Notes
change nothing: a bundle without the optional `lifecycle.yaml` is said to lack
it. The command (sidecar/cli/validate.py) prints a `Diagnosis` and picks the
exit code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sidecar.authoring.failopen import file_warnings
from sidecar.authoring.schematypes import schema_types
from sidecar.core.bundle import LIFECYCLE_FILE, Bundle, is_entity_file, visible_files
from sidecar.core.problems import Problem, check_directory, readable_text

__all__ = [
    "Diagnosis",
    "Problem",
    "check_directory",
    "check_notes",
    "check_warnings",
    "diagnose",
    "unread_data",
]

NO_LIFECYCLE = (
    f"no {LIFECYCLE_FILE}: the bundle does not say which steps create or remove access, "
    "so outcomes cannot be paired into evidence (optional; docs/evidence.md)"
)


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """A directory's bundle (None when refused), its problems, warnings and unread JSON."""

    directory: Path
    bundle: Bundle | None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    not_read: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # informative; never change the verdict

    def ok(self, *, strict: bool) -> bool:
        """The directory loads, and with `strict` has no warnings either."""
        return self.bundle is not None and not (strict and self.warnings)


def diagnose(directory: Path) -> Diagnosis:
    """Every problem, or for a directory that loads its warnings and the JSON it ignores."""
    bundle, problems = check_directory(directory)
    if bundle is None:
        return Diagnosis(directory, None, problems)
    return Diagnosis(
        directory,
        bundle,
        problems,
        check_warnings(directory, bundle),
        unread_data(directory),
        check_notes(bundle),
    )


def check_notes(bundle: Bundle) -> list[str]:
    """What a loading directory leaves out that it may: the lifecycle declaration."""
    return [NO_LIFECYCLE] if bundle.lifecycle is None else []


def check_warnings(directory: Path, bundle: Bundle) -> list[Problem]:
    """Warnings for a directory that loads: reads that can error and fail open."""
    types = schema_types(bundle.schema)
    stored = frozenset((uid.type, uid.id) for uid in bundle.entity_json)
    found: list[Problem] = []
    for path in visible_files(directory):
        if path.suffix != ".cedar":
            continue
        text = readable_text(path)
        if text is None:
            continue
        name = str(path.relative_to(directory))
        for risk in file_warnings(name, text, types, stored):
            found.append(
                Problem(
                    risk.file, risk.line, risk.column, risk.message, risk.source_line, "warning"
                )
            )
    return found


def unread_data(directory: Path) -> list[str]:
    """JSON files the loader does not read: a misnamed entity file would be silently lost."""
    return [
        str(p.relative_to(directory))
        for p in visible_files(directory)
        if p.suffix == ".json"
        and not is_entity_file(p)
        and not p.name.endswith(".cedarschema.json")
    ]
