"""Replay: what a policy change would have decided on real, recorded traffic.

Each decision event of an audit trail carries the request as the engine saw
it (principal, action, resource, the Cedar context including `now`, and the
entities the caller supplied), so it can be decided again, against candidate
policies, at the time it was first asked. The report lists every decision
that would change (allow->deny, deny->allow), grouped by policy and by action.

Events are read defensively: the audit format grows (chain fields, redaction,
segment headers, recovery records), so anything that is not a decision record
is skipped and counted, never fatal. A decision whose recorded request holds
redacted values is replayed with the redacted text, and flagged: the policies
saw the real value. The chains of many workers (`serve --workers N`) are read
as one trail, in time order (`trail_sources`, `trail_lines`). `stepguard
replay` (sidecar/cli/replay.py) prints the `ReplayReport` this returns.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from sidecar.audit.workers import collect_sets, merged
from sidecar.core.bundle import Bundle
from sidecar.core.engine import deny, evaluate
from sidecar.core.errors import StepguardError
from sidecar.core.model import AuthzRequest, Decision, EntityData, EntityUid, PolicyErrors, Result

ALLOW_TO_DENY, DENY_TO_ALLOW = "allow->deny", "deny->allow"
_REDACTED = "redacted"


@dataclass(frozen=True, slots=True)
class Recorded:
    """One decision read back from the trail."""

    id: str
    time: str
    source: str  # file:line
    request: AuthzRequest
    decision: Decision
    reasons: tuple[str, ...]
    errors: tuple[str, ...]  # errors not tied to a policy (the server's, not the policies')
    revision: str
    redacted: bool
    # What an erroring policy did when it was decided; trails from before the
    # setting existed were decided under Cedar's own semantics.
    policy_errors: PolicyErrors = PolicyErrors.CEDAR


@dataclass(frozen=True, slots=True)
class Change:
    recorded: Recorded
    before: Decision
    before_reasons: tuple[str, ...]
    after: Result
    invalid: str  # the candidate schema would refuse the request (INVALID_ARGUMENT)

    @property
    def direction(self) -> str:
        return ALLOW_TO_DENY if self.before is Decision.ALLOW else DENY_TO_ALLOW

    def policies(self, bundle: Bundle) -> list[str]:
        """The policies this change is attributed to (the report's grouping)."""
        if self.invalid:
            return ["(request refused by the candidate schema)"]
        if self.after.reasons:
            return [_policy_label(bundle, r.id) for r in self.after.reasons]
        if self.after.errors:
            return ["(evaluation error)"]
        if self.before_reasons:
            return [f"permit {pid} no longer applies" for pid in self.before_reasons]
        return ["(no permit applies)"]


@dataclass(slots=True)
class ReplayReport:
    policies: str
    revision: str
    baseline: str  # "recorded" or the baseline policy directory
    files: list[str]
    decisions: int = 0
    # decisions read from each file, in the order the files were read
    read_from: Counter[str] = field(default_factory=Counter)
    unchanged: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    redacted: int = 0
    changes: list[Change] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(ch.direction for ch in self.changes)
        return {ALLOW_TO_DENY: c[ALLOW_TO_DENY], DENY_TO_ALLOW: c[DENY_TO_ALLOW]}

    def grouped(self, bundle: Bundle, key: str) -> list[tuple[str, dict[str, int]]]:
        groups: dict[str, Counter[str]] = {}
        for ch in self.changes:
            names = ch.policies(bundle) if key == "policy" else [str(ch.recorded.request.action)]
            for name in names:
                groups.setdefault(name, Counter())[ch.direction] += 1
        rows = [
            (name, {ALLOW_TO_DENY: c[ALLOW_TO_DENY], DENY_TO_ALLOW: c[DENY_TO_ALLOW]})
            for name, c in groups.items()
        ]
        return sorted(rows, key=lambda row: (-sum(row[1].values()), row[0]))


def replay(
    bundle: Bundle,
    events: Iterable[tuple[str, int, str]],
    *,
    files: list[str],
    label: str,
    baseline: Bundle | None = None,
    baseline_label: str = "recorded",
    policy_errors: PolicyErrors | None = None,
) -> ReplayReport:
    """Decide every recorded request again on `bundle`; compare with the record (or `baseline`).

    Each request is decided under the semantics it was recorded under, unless
    `policy_errors` names one for all: a change of semantics is not a policy change.
    """
    report = ReplayReport(label, bundle.revision, baseline_label, files)
    for name, lineno, line in events:
        recorded, skip = parse_event(line, f"{name}:{lineno}")
        if recorded is None:
            report.skipped[skip] += 1
            continue
        report.decisions += 1
        report.read_from[name] += 1
        report.redacted += recorded.redacted
        if baseline is not None:
            old, _ = _decide(baseline, recorded.request, policy_errors or recorded.policy_errors)
            before, before_reasons = old.decision, tuple(r.id for r in old.reasons)
        else:
            before, before_reasons = recorded.decision, recorded.reasons
        after, invalid = _decide(bundle, recorded.request, policy_errors or recorded.policy_errors)
        if after.decision is before:
            report.unchanged += 1
        else:
            report.changes.append(Change(recorded, before, before_reasons, after, invalid))
    return report


def _decide(
    bundle: Bundle, request: AuthzRequest, policy_errors: PolicyErrors
) -> tuple[Result, str]:
    """The candidate's answer; a request its schema would refuse counts as a DENY."""
    problem = _refusal(bundle, request)
    if problem:
        return deny(bundle.revision, problem, policy_errors), problem
    return evaluate(bundle, request, policy_errors=policy_errors), ""


def _recorded_semantics(value: Any) -> PolicyErrors:
    try:
        return PolicyErrors.parse(str(value)) if value is not None else PolicyErrors.CEDAR
    except ValueError:
        return PolicyErrors.DENY  # unreadable: the strict one


def _refusal(bundle: Bundle, request: AuthzRequest) -> str:
    if request.action not in bundle.actions:
        return f"action: {request.action} is not an action declared by the schema"
    for name, uid in (("principal", request.principal), ("resource", request.resource)):
        if uid.type not in bundle.entity_types:
            return f"{name}.type: {uid.type!r} is not an entity type of the schema"
    return ""


def parse_event(line: str, where: str) -> tuple[Recorded | None, str]:
    """A decision record, or None and why it was skipped."""
    text = line.strip()
    if not text:
        return None, "blank lines"
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        return None, "unreadable lines (not JSON: a torn write?)"
    if not isinstance(event, dict):
        return None, "unreadable lines (not JSON: a torn write?)"
    kind = event.get("kind", "decision")
    if kind != "decision":
        return None, f"{kind} records" if isinstance(kind, str) else "records of unknown kind"
    try:
        request = AuthzRequest(
            principal=_uid(event["principal"]),
            action=_uid(event["action"]),
            resource=_uid(event["resource"]),
            context=_mapping(event.get("context", {})),
            entities=tuple(_entity(e) for e in event.get("entities") or ()),
        )
        decision = Decision(str(event["decision"]).upper())
    except (KeyError, TypeError, ValueError):
        return None, "records without a complete request and decision"
    reasons = tuple(
        str(r.get("policy", "")) for r in event.get("reasons") or () if isinstance(r, dict)
    )
    errors = tuple(
        str(e.get("message", ""))
        for e in event.get("errors") or ()
        if isinstance(e, dict) and not e.get("policy")
    )
    redacted = _has_redaction(event.get("context")) or _has_redaction(event.get("entities"))
    return (
        Recorded(
            id=str(event.get("id", "")),
            time=str(event.get("time", "")),
            source=where,
            request=request,
            decision=decision,
            reasons=reasons,
            errors=errors,
            revision=str(event.get("policy_revision", "")),
            redacted=redacted,
            policy_errors=_recorded_semantics(event.get("policy_errors")),
        ),
        "",
    )


def _uid(value: Any) -> EntityUid:
    if isinstance(value, dict) and "__entity" in value:
        value = value["__entity"]
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise ValueError("not an entity reference")
    return EntityUid(value["type"], str(value.get("id", "")))


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("context is not a mapping")
    return value


def _entity(value: Any) -> EntityData:
    if not isinstance(value, dict):
        raise TypeError("entity is not a mapping")
    attrs = value.get("attrs") or {}
    if not isinstance(attrs, dict):
        raise TypeError("attrs is not a mapping")
    return EntityData(
        _uid(value.get("uid")), attrs, tuple(_uid(p) for p in value.get("parents") or ())
    )


def _has_redaction(value: Any) -> bool:
    if isinstance(value, str):
        return value == _REDACTED or value.startswith(_REDACTED + ":")
    if isinstance(value, dict):
        return any(_has_redaction(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_redaction(v) for v in value)
    return False


def trail_files(names: list[str]) -> list[str]:
    """Every file to read, in order: a trail (its directory, or any of its files) is all
    of its segments, oldest first, then the active file; `-` and other files as given.

    Reading only the active file would replay the newest segment and silently
    leave out everything rotated before it.
    """
    return [f for source in trail_sources(names) for chain in source for f in chain]


def trail_sources(names: list[str]) -> list[list[list[str]]]:
    """The files to read, as sources of chains of files: `-` and other files are a source
    of one chain of one file; a trail is a source of its chains (one, or one per worker:
    sidecar/audit/workers.py), each chain its segments, oldest first. A file named twice
    is read once."""
    seen: set[str] = set()
    out: list[list[list[str]]] = []
    for name in names:
        if name == "-" or name.endswith(".gz"):
            if name not in seen:
                seen.add(name)
                out.append([[name]])
            continue
        try:
            sets = collect_sets([Path(name)])
        except (StepguardError, OSError) as exc:
            raise StepguardError(f"cannot read audit file {name}: {exc}") from exc
        for trail in sets:
            chains = []
            for chain in trail.chains:
                files = [str(s) for s in chain.segments if str(s) not in seen]
                seen.update(files)
                if files:
                    chains.append(files)
            if chains:
                out.append(chains)
    return out


def trail_lines(sources: list[list[list[str]]]) -> Iterator[tuple[str, int, str]]:
    """(file, line number, line) of every source in turn; the chains of a trail of many
    workers as one stream, by time, then chain, then seq (workers.merged)."""
    for chains in sources:
        yield from merged([read_lines(files) for files in chains], _time_of, _seq_of)


def _fields(line: str) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def _time_of(item: tuple[str, int, str]) -> str:
    """A decision's time; "" for other records (they keep their place in their chain)."""
    event = _fields(item[2])
    time = event.get("time")
    return time if isinstance(time, str) and event.get("kind", "decision") == "decision" else ""


def _seq_of(item: tuple[str, int, str]) -> int:
    seq = _fields(item[2]).get("seq")
    return seq if isinstance(seq, int) else -1


def read_lines(paths: list[str]) -> Iterator[tuple[str, int, str]]:
    """(file, line number, line) over every file; `-` is stdin, `*.gz` is decompressed."""
    for name in paths:
        stream: IO[str]
        if name == "-":
            stream = sys.stdin
        else:
            path = Path(name)
            try:
                raw = _open_binary(path)
            except OSError as exc:
                raise StepguardError(f"cannot read audit file {name}: {exc}") from exc
            stream = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
        try:
            for lineno, line in enumerate(stream, 1):
                yield name, lineno, line
        except (OSError, EOFError) as exc:
            raise StepguardError(f"cannot read audit file {name}: {exc}") from exc
        finally:
            if stream is not sys.stdin:
                stream.close()


def _open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when it is gzip (rotated segments); the caller closes it."""
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _policy_label(bundle: Bundle, pid: str) -> str:
    info = bundle.policies.get(pid)
    return f"{info.effect} {pid} ({info.source})" if info else pid
