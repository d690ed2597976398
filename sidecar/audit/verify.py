"""`stepguard audit verify`: check a whole trail and name the first bad record.

A trail is its segment files in order (rotated `NAME.000001`, `NAME.000002`...,
then the active `NAME`) and its head anchor `NAME.head`. Verification walks
every line once, checking that each is a canonical record whose hash is right
and that it follows the one before (seq + 1, prev = that record's hash), across
files. The first break is classified, with file and 1-based line:

    modified   a line's bytes changed (bad JSON, not canonical, wrong hash) or
               it no longer links to the record before it
    deleted    records are missing (the sequence jumps ahead, none of the
               missing ones appears later), including a missing segment file
    inserted   a line that the chain skips over (its neighbours link to each
               other), or a copy of an earlier record
    reordered  the sequence jumps, and the missing records appear later
    truncated  the last line is torn (no newline), or the trail ends before
               the record the head anchor names

Exit codes (for scripts): 0 intact, 1 cannot verify (unreadable file, missing
or wrong HMAC key, missing head anchor, nothing to verify), 3 modified,
4 deleted, 5 inserted, 6 reordered, 7 truncated, and for a trail of many
workers' chains (chains.py) 8 missing: a chain its manifest lists is not on
disk, or the manifest itself is gone.

With a key, a trail that claims to be unkeyed or keyed with another key is
*modified*: that is what a keyed trail rewritten without its key looks like.
With checkpoints (sidecar/audit/checkpoint.py), every checkpointed record must
be in the trail with its hash: a trail cut and rolled back together with its
head anchor is *truncated*. What could not be checked is listed in the report.

Which files make a trail is segments.py's (`collect`, shared with `audit
query` and `replay`); the anchor's format is anchor.py's. A trail of many
workers' chains is verified chain by chain, as here, by chains.py. What stays here,
past 500 lines, is one thing: the walk, the classification of its first
break and the checkpoints read in step with it share the walk's state (the
line before, the one after, the record due), and apart they would pass it
back and forth. Progress is counted through the `Progress` protocol below,
so the CLI hands in its terminal counter and the audit package imports no CLI.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sidecar.audit.anchor import read_anchor
from sidecar.audit.chain import GENESIS, BadRecord, Hasher, Record, check_hash, parse_line
from sidecar.audit.checkpoint import BadCheckpoint, Checkpoint, read_checkpoints
from sidecar.audit.files import open_read
from sidecar.audit.segments import Trail
from sidecar.core.errors import StepguardError
from sidecar.core.progress import Progress, counting

EXIT_OK, EXIT_ERROR = 0, 1
# Called with each record the walk accepted, its file and 1-based line (`verify`).
OnRecord = Callable[[Record, str, int], None]
UNVERIFIABLE = "cannot verify"  # a Problem kind: exit 1
EXIT_CODES = {"modified": 3, "deleted": 4, "inserted": 5, "reordered": 6, "truncated": 7}
# What a trail of many chains (workers.py) can lack beyond what one chain's walk finds:
# a whole chain, or the manifest that lists them (chains.py).
EXIT_MISSING = 8
SET_EXIT_CODES = {"missing": EXIT_MISSING}
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # one of EXIT_CODES
    file: str
    line: int
    message: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.kind) or SET_EXIT_CODES.get(self.kind, EXIT_ERROR)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.kind}: {self.message}"


@dataclass(slots=True)
class Report:
    trail: str
    records: int = 0
    decisions: int = 0
    files: list[str] = field(default_factory=list)
    algorithm: str = ""
    last_seq: int = -1
    last_hash: str = ""
    notes: list[str] = field(default_factory=list)
    # What this verification could not establish (no anchor, no checkpoints...).
    unchecked: list[str] = field(default_factory=list)
    checkpoints_checked: int = 0
    problem: Problem | None = None
    part_of: str = ""  # a worker's chain: the trail it is one chain of

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "trail": self.trail,
            "ok": self.ok,
            "records": self.records,
            "decisions": self.decisions,
            "files": self.files,
            "algorithm": self.algorithm,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "notes": self.notes,
            "unchecked": self.unchecked,
            "checkpoints_checked": self.checkpoints_checked,
        }
        if self.part_of:
            out["part_of"] = self.part_of
        if self.problem is not None:
            p = self.problem
            out["problem"] = {"kind": p.kind, "file": p.file, "line": p.line, "message": p.message}
        return out


@dataclass(slots=True)
class _Line:
    file: str
    line: int
    record: Record | None
    error: str
    newline: bool
    first_in_file: bool
    index: int = 0  # which segment file

    @property
    def where(self) -> tuple[int, int]:
        return self.index, self.line


def verify(
    trail: Trail,
    key: bytes | None = None,
    *,
    partial: bool = False,
    accept_missing_anchor: bool = False,
    checkpoints: Path | None = None,
    progress: Progress | None = None,
    on_record: OnRecord | None = None,
) -> Report:
    """Check one trail; the report names the first problem, if any.

    `progress` counts the records walked (the CLI draws it on a terminal).
    `on_record(record, file, line)` is called for each record the walk accepted, in
    chain order, so a reader that needs every record (the evidence store) parses the
    trail once, not twice; the walk stops at the first break, and so do the calls.

    Streams: memory stays bounded whatever the trail's size. Only when the chain
    breaks are later (or earlier) lines read again, to say what happened.
    Raises StepguardError when there is nothing to verify or a file cannot be read.
    """
    report = Report(trail.name, files=[str(p) for p in trail.segments])
    # The anchor first: it is written after the records it names, so a trail read
    # after it holds at least those records even while the sidecar is writing.
    hasher = Hasher(key)
    try:
        anchor = read_anchor(trail.head, hasher) if trail.head is not None else None
    except OSError as exc:
        raise StepguardError(f"cannot read the head anchor: {exc}") from exc
    first = next(_lines(trail.segments), None)
    if first is None:
        raise StepguardError(f"nothing to verify: {trail.name}: the trail has no records")
    report.algorithm = hasher.algorithm
    report.problem = _check_key(first, key, hasher)
    if report.problem is not None:
        return report
    anchored = anchor["seq"] if isinstance(anchor, dict) else -1
    pins = None
    try:
        pins = _Pins(checkpoints, hasher, trail) if checkpoints is not None else None
        report.problem, last, at_anchor = _walk(
            trail,
            hasher,
            report,
            partial,
            anchored,
            pins=pins,
            progress=progress,
            on_record=on_record,
        )
        if report.problem is None and last is not None and pins is not None:
            report.problem = pins.finish(last, report)
    except BadCheckpoint as exc:
        report.problem = Problem("modified", str(checkpoints), 0, f"checkpoint file: {exc}")
        return report
    if pins is None:
        report.unchecked.append(
            "no --checkpoints given: a trail cut at the end and rolled back together with "
            "its head anchor verifies as intact, keyed or not (docs/audit.md)"
        )
    if report.problem is None and last is not None:
        report.problem = _check_anchor(
            trail, anchor, last, at_anchor, report, accept_missing=accept_missing_anchor
        )
    return report


class _Pins:
    """The checkpoints of one trail, read in step with the walk (memory stays bounded)."""

    def __init__(self, path: Path, hasher: Hasher, trail: Trail) -> None:
        self.path = path
        self.name = Path(trail.name).name
        try:
            self._all = read_checkpoints(path, hasher)
            self.next = self._advance()
        except OSError as exc:
            raise StepguardError(f"cannot read the checkpoint file: {exc}") from exc
        self.before_start = 0
        self.last: Checkpoint | None = None

    def _advance(self) -> Checkpoint | None:
        previous = getattr(self, "next", None)
        for cp in self._all:
            if cp.trail != self.name:
                continue
            if previous is not None and cp.seq <= previous.seq:
                raise BadCheckpoint(
                    f"{self.path}:{cp.line}: seq {cp.seq} after seq {previous.seq} at line "
                    f"{previous.line}: the sidecar never goes back; the trail was rolled back "
                    "and the sidecar made to continue it"
                )
            return cp
        return None

    def at(self, rec: Record, ln: _Line, checked: Report) -> Problem | None:
        """Called for each record in order: compare it with the checkpoints naming its seq."""
        while self.next is not None and self.next.seq <= rec.seq:
            cp = self.next
            if cp.seq < rec.seq:  # before the first record read (--partial)
                self.before_start += 1
            elif cp.hash != rec.hash:
                return Problem(
                    "modified",
                    ln.file,
                    ln.line,
                    f"the checkpoint at {self.path}:{cp.line} (written {cp.time}) pins another "
                    f"record at seq {cp.seq}: this part of the trail was rewritten after it",
                )
            else:
                checked.checkpoints_checked += 1
            self.last = cp
            self.next = self._advance()
        return None

    def finish(self, last: _Line, report: Report) -> Problem | None:
        """After the walk: a checkpoint beyond the trail's end means records were cut off."""
        cp = self.next
        if cp is not None:
            return Problem(
                "truncated",
                last.file,
                last.line + 1,
                f"the trail ends at seq {report.last_seq}, but the checkpoint at "
                f"{self.path}:{cp.line} (written {cp.time}) pins seq {cp.seq}: records "
                f"{report.last_seq + 1}..{cp.seq} are missing at the end (cut off, or the "
                "trail was rolled back with its head anchor)",
            )
        if self.before_start:
            report.unchecked.append(
                f"{self.before_start} checkpoint(s) pin records before the first one read "
                "(archived segments)"
            )
        if self.last is None:
            report.unchecked.append(
                f"{self.path} holds no checkpoint for this trail: nothing pins its length"
            )
        elif self.last.seq < report.last_seq:
            report.unchecked.append(
                f"records after seq {self.last.seq} (the last checkpoint, {self.last.time}) "
                "are not pinned by a checkpoint: only the head anchor covers them"
            )
        return None


def _lines(segments: Sequence[Path], start: tuple[int, int] = (0, 0)) -> Iterator[_Line]:
    """Every line of the segments in order, from (file index, line number) on."""
    for index in range(start[0], len(segments)):
        path = segments[index]
        try:
            f = open_read(path)  # a FIFO is refused, never waited on
        except OSError as exc:
            raise StepguardError(f"cannot read {path}: {exc}") from exc
        with f:
            for lineno, raw in enumerate(f, 1):
                if index == start[0] and lineno <= start[1]:
                    continue
                newline = raw.endswith(b"\n")
                body = raw[:-1] if newline else raw
                record, error = None, ""
                try:
                    record = parse_line(body)
                except BadRecord as exc:
                    error = str(exc)
                yield _Line(str(path), lineno, record, error, newline, lineno == 1, index)


def _check_key(first: _Line, key: bytes | None, hasher: Hasher) -> Problem | None:
    """The header's claim about its key, against the key given.

    Without a key, a keyed trail cannot be checked (exit 1: pass the key). With a
    key, a header claiming no key or another key is a *modified* trail: a keyed
    trail rewritten without the key (a downgrade) looks exactly like that, so
    the key is never to be dropped to make it verify.
    """
    header = first.record
    if header is None or header.kind != "segment":
        return None
    algorithm = header.body.get("algorithm", "sha256")
    if algorithm == "hmac-sha256" and not key:
        raise StepguardError("this trail is keyed (hmac-sha256): pass the same key with --key-file")
    if not key:
        return None
    here = first.file, first.line
    if algorithm != "hmac-sha256":
        return Problem(
            "modified",
            *here,
            f"a key was given, but the header claims the trail is not keyed ({algorithm}): "
            "a keyed trail rewritten by someone without the key looks like this; nothing "
            "in it can be trusted until its origin is known",
        )
    key_id = str(header.body.get("key_id", ""))
    if not hmac.compare_digest(key_id, hasher.key_id):
        return Problem(
            "modified",
            *here,
            f"the header names key id {key_id or '(none)'}, but --key-file holds key id "
            f"{hasher.key_id}: the trail was rewritten under another key, or this is not the "
            "key the sidecar used",
        )
    return None


def _walk(
    trail: Trail,
    hasher: Hasher,
    report: Report,
    partial: bool,
    anchored: int,
    *,
    pins: _Pins | None = None,
    progress: Progress | None = None,
    on_record: OnRecord | None = None,
) -> tuple[Problem | None, _Line | None, str | None]:
    """The chain walk: (first problem, last line, hash of the record at the anchor's seq)."""
    segments = trail.segments
    lines = counting(_lines(segments), progress)
    ln = next(lines, None)
    exp_seq, exp_prev = 0, GENESIS
    if partial and ln is not None and ln.record is not None:
        exp_seq, exp_prev = ln.record.seq, ln.record.prev
    segment = None
    before: _Line | None = None
    at_anchor: str | None = None
    while ln is not None:
        nxt = next(lines, None)
        continues = _links(nxt, hasher, exp_seq, exp_prev)
        rec = ln.record
        if rec is None or not check_hash(hasher, rec):
            why = ln.error or "its hash does not match its content"
            if nxt is None and not ln.newline:
                problem = Problem(
                    "truncated", ln.file, ln.line, "the last line is torn (no newline)"
                )
            elif continues:
                problem = Problem(
                    "inserted", ln.file, ln.line, f"the chain skips this line ({why})"
                )
            else:
                problem = Problem("modified", ln.file, ln.line, why)
            return problem, ln, at_anchor
        if rec.seq != exp_seq or rec.prev != exp_prev:
            problem = _classify_break(
                segments,
                ln,
                before,
                nxt,
                exp_seq=exp_seq,
                continues=continues,
                segment=segment,
            )
            return problem, ln, at_anchor
        if ln.first_in_file:
            header_problem = _check_header(ln, rec, segment, partial, trail.worker)
            if header_problem is not None:
                return header_problem, ln, at_anchor
            segment = rec.body.get("segment")
        if rec.seq == anchored:
            at_anchor = rec.hash
        if pins is not None:
            pinned = pins.at(rec, ln, report)
            if pinned is not None:
                return pinned, ln, at_anchor
        exp_seq, exp_prev = rec.seq + 1, rec.hash
        report.records += 1
        report.last_seq, report.last_hash = rec.seq, rec.hash
        if rec.kind == "decision":
            report.decisions += 1
        elif rec.kind in ("recovery", "outage"):
            detail = {k: v for k, v in rec.body.items() if k not in ("schema", "kind")}
            report.notes.append(f"{ln.file}:{ln.line}: {rec.kind}: {detail}")
        if on_record is not None:
            on_record(rec, ln.file, ln.line)
        before, ln = ln, nxt
    return None, before, at_anchor


def _classify_break(
    segments: Sequence[Path],
    ln: _Line,
    before: _Line | None,
    nxt: _Line | None,
    *,
    exp_seq: int,
    continues: bool,
    segment: Any,
) -> Problem:
    """A well-formed record that is not the one due: say what happened, and where."""
    rec = ln.record
    assert rec is not None
    here = ln.file, ln.line
    if rec.seq == exp_seq:
        if continues:
            return Problem("inserted", *here, "the chain skips this record (it links to nothing)")
        return Problem("modified", *here, "it does not link to the record before it")
    if before is not None and before.record is not None:
        b = before.record
        if (b.seq, b.prev) == (rec.seq, rec.prev):  # two records claim one place in the chain
            follows_this = nxt is None or (nxt.record is not None and nxt.record.prev == rec.hash)
            odd = before if follows_this else ln
            return Problem(
                "inserted",
                odd.file,
                odd.line,
                f"two records claim seq {rec.seq}; the chain goes on from the other one",
            )
    same = _first(_lines(segments), lambda o: o.record is not None and o.record.hash == rec.hash)
    if same is not None and same.where != ln.where:
        return Problem("inserted", *here, f"a copy of the record at {same.file}:{same.line}")
    if same is not None:  # this is the first copy: is there a later one?
        later_copy = _first(
            _lines(segments, ln.where), lambda o: o.record is not None and o.record.hash == rec.hash
        )
        if later_copy is not None:
            return Problem(
                "inserted", *here, f"a copy of the record at {later_copy.file}:{later_copy.line}"
            )
    due = _first(
        _lines(segments, ln.where), lambda o: o.record is not None and o.record.seq == exp_seq
    )
    if due is not None:
        return Problem(
            "reordered",
            *here,
            f"seq {rec.seq} where {exp_seq} was due ({exp_seq} is at {due.file}:{due.line})",
        )
    if rec.seq < exp_seq:
        return Problem("reordered", *here, f"seq {rec.seq} comes after seq {exp_seq - 1}")
    if continues:
        return Problem("inserted", *here, "the chain skips this record")
    missing = f"records {exp_seq}..{rec.seq - 1}"
    if before is None and rec.kind == "segment":
        return Problem(
            "deleted",
            *here,
            f"the trail begins at segment {rec.body.get('segment')} ({missing} are missing; "
            "pass --partial if earlier segments were archived on purpose)",
        )
    if ln.first_in_file and before is not None and rec.kind == "segment":
        number = rec.body.get("segment")
        if isinstance(segment, int) and number == segment + 1:
            return Problem(
                "truncated",
                before.file,
                before.line + 1,
                f"segment {segment} ends at seq {exp_seq - 1}, but segment {number} follows "
                f"seq {rec.seq - 1}: {missing} are missing at its end",
            )
        return Problem("deleted", *here, f"segment(s) before {number} are missing ({missing})")
    return Problem("deleted", *here, f"{missing} are missing before this line")


def _first(lines: Iterator[_Line], match: Callable[[_Line], bool]) -> _Line | None:
    return next((ln for ln in lines if match(ln)), None)


def _links(ln: _Line | None, hasher: Hasher, seq: int, prev: str) -> bool:
    """Does this line carry exactly the record that was due?"""
    return (
        ln is not None
        and ln.record is not None
        and ln.record.seq == seq
        and ln.record.prev == prev
        and check_hash(hasher, ln.record)
    )


def _check_header(
    ln: _Line, rec: Record, previous: Any, partial: bool, worker: int | None = None
) -> Problem | None:
    if rec.kind != "segment":
        return Problem("modified", ln.file, ln.line, "a segment file must begin with its header")
    claimed = rec.body.get("worker")
    if worker is not None and claimed is not None and claimed != worker:
        return Problem(
            "modified",
            ln.file,
            ln.line,
            f"the header says worker {claimed} wrote this segment, but it is in the chain of "
            f"worker {worker}: chains were renamed or swapped",
        )
    number = rec.body.get("segment")
    if previous is None:
        if number != 1 and not partial:
            return Problem(
                "deleted",
                ln.file,
                ln.line,
                f"the trail begins at segment {number}: segments before it are missing "
                "(pass --partial if they were archived on purpose)",
            )
    elif isinstance(previous, int) and number != previous + 1:
        return Problem("deleted", ln.file, ln.line, f"segment {number} follows segment {previous}")
    if rec.body.get("follows") != rec.prev:
        return Problem("modified", ln.file, ln.line, "the header names another predecessor")
    return None


def _check_anchor(
    trail: Trail,
    anchor: dict[str, Any] | str | None,
    last: _Line,
    at_anchor: str | None,
    report: Report,
    *,
    accept_missing: bool = False,
) -> Problem | None:
    if trail.head is None or anchor is None:
        head = trail.head or Path(trail.name + ".head")
        what = (
            f"the end of the trail: the head anchor {head} is missing or empty, so records "
            "cut off at a line boundary at the end cannot be detected"
        )
        if accept_missing:
            report.unchecked.append(what)
            return None
        return Problem(
            UNVERIFIABLE,
            str(head),
            0,
            f"{what} (a trail written to stdout never has one); pass --accept-missing-anchor "
            "to verify the rest and accept that",
        )
    if isinstance(anchor, str):
        return Problem("modified", str(trail.head), 1, anchor)
    if anchor["seq"] > report.last_seq:
        return Problem(
            "truncated",
            last.file,
            last.line + 1,
            f"the trail ends at seq {report.last_seq}, but the head anchor says seq "
            f"{anchor['seq']} was committed: records {report.last_seq + 1}..{anchor['seq']} "
            "are missing at the end",
        )
    if at_anchor is not None and at_anchor != anchor["hash"]:
        return Problem(
            "modified",
            str(trail.head),
            1,
            f"the head anchor names another hash for seq {anchor['seq']}",
        )
    return None
