"""Property: the evidence loader's fast walk (walk.py) never confirms a chain that
`audit verify` refuses, and what it confirms it hands over record for record as
`audit verify` does.

The fast walk only ever confirms an intact chain; at any doubt it gives up and
the loader's verdict is `audit verify`'s own. So a chain it confirms must be one
`audit verify` passes, with the same records in the same order; otherwise
evidence from a changed trail would load as verified. Giving up is never wrong,
only slower (a last line without its newline, which `audit verify` accepts, is
left to it); an unchanged trail is confirmed. Each example
changes a real rotated trail (plain or keyed) in one to three ways: bytes
flipped, cut or added; lines dropped, doubled or swapped; a record re-encoded in
a form that is not canonical yet hashed as written (keys unsorted, a space, an
escaped letter, a key twice, a number spelled otherwise), its chain re-linked
after it or not; a segment removed; a file cut short; the head anchor kept or removed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sidecar.audit.chain import Hasher, canonical, record_line
from sidecar.audit.chains import verify_chain
from sidecar.audit.workers import collect_sets
from sidecar.core.errors import StepguardError
from sidecar.evidence.walk import walk_intact
from tests.audit.trails import KEY, make_trail

RECORDS = 24
ROTATE = 1500  # bytes: a few records a segment, so segment headers are changed too


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One plain and one keyed trail, each of several segments with a head anchor."""
    root = tmp_path_factory.mktemp("pristine")
    return {
        "plain": make_trail(root / "plain", RECORDS, rotate_bytes=ROTATE).parent,
        "keyed": make_trail(
            root / "keyed", RECORDS, rotate_bytes=ROTATE, hasher=Hasher(KEY)
        ).parent,
    }


def _segments(directory: Path) -> list[Path]:
    """The trail's segment files in chain order (the live file is the newest)."""
    numbered = sorted(directory.glob("audit.jsonl.[0-9]*"))
    return [*numbered, directory / "audit.jsonl"]


# --- records re-encoded: not canonical, yet hashed over the bytes as written ----------------


def _unsorted(body: dict[str, Any]) -> bytes:
    return orjson.dumps(dict(reversed(list(body.items()))))


def _space(body: dict[str, Any]) -> bytes:
    return canonical(body).replace(b",", b", ", 1)


def _escaped(body: dict[str, Any]) -> bytes:
    return canonical(body).replace(b'"kind"', b'"\\u006bind"', 1)


def _twice(body: dict[str, Any]) -> bytes:
    return canonical(body)[:-1] + b',"kind":"decision"}'


def _number(body: dict[str, Any]) -> bytes:
    return canonical(body).replace(b'"schema":1', b'"schema":1e0', 1)


def _edited(body: dict[str, Any]) -> bytes:
    """Canonical, another value (a segment header: naming another predecessor)."""
    if body.get("kind") == "segment":
        return canonical({**body, "follows": "0" * 64})
    return canonical({**body, "decision": "DENY"})


def _renumbered(body: dict[str, Any]) -> bytes:
    """Canonical, another number (a segment header: out of the segments' order)."""
    if body.get("kind") == "segment":
        return canonical({**body, "segment": body.get("segment", 0) + 1})
    return canonical({**body, "schema": 2})


ENCODINGS = {
    "unsorted": _unsorted,
    "space": _space,
    "escaped": _escaped,
    "twice": _twice,
    "number": _number,
    "edited": _edited,
    "renumbered": _renumbered,
}


def _record(raw: bytes) -> tuple[int, Any, dict[str, Any]] | None:
    """A line's seq, prev and body (its chain fields taken out); None when it is not one."""
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int):
        return None
    seq, prev = rec.pop("seq"), rec.pop("prev", "")
    rec.pop("hash", None)
    return seq, prev, rec


def _relink(lines: list[tuple[Path, int, bytes]], start: int, prev: str, hasher: Hasher) -> None:
    """Re-chain every record after `start` (whose hash is `prev`) onto the one before it,
    as a forger holding the key would, segment headers' `follows` included; stops at a
    line it cannot read."""
    for i in range(start + 1, len(lines)):
        path, n, raw = lines[i]
        found = _record(raw)
        if found is None:
            return
        seq, _, rec = found
        if rec.get("kind") == "segment":
            rec["follows"] = prev
        line, prev = record_line(hasher, seq, prev, canonical(rec))
        lines[i] = (path, n, line.rstrip(b"\n"))


# (op, which line, how, re-link the records after it, a segment header's line only)
reencode = st.tuples(
    st.just("re-encode"),
    st.integers(0, 10**6),
    st.sampled_from(sorted(ENCODINGS)),
    st.booleans(),
    st.booleans(),
)
# A forgery by one who holds the key: a record changed, the chain re-linked after it.
forge = st.tuples(
    st.just("re-encode"),
    st.integers(0, 10**6),
    st.sampled_from(sorted(ENCODINGS)),
    st.just(True),
    st.booleans(),
)
change = st.one_of(
    forge,  # the forgeries, most often
    forge,
    st.tuples(st.just("byte"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("cut byte"), st.integers(0, 10**6)),
    st.tuples(st.just("add byte"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("drop line"), st.integers(0, 10**6)),
    st.tuples(st.just("double line"), st.integers(0, 10**6)),
    st.tuples(st.just("swap lines"), st.integers(0, 10**6)),
    reencode,
    st.tuples(st.just("drop segment"), st.integers(0, 10**6)),
    st.tuples(st.just("cut file"), st.integers(0, 10**6), st.integers(0, 10**6)),
)
# The head anchor: kept; removed, a missing anchor accepted (then a re-linked forgery
# has nothing to be checked against but the records themselves); removed, refused.
# Listed twice: the forgeries meet the walks' record checks alone there.
ANCHORS = ["kept", "removed, accepted", "removed, accepted", "removed, refused"]


def _apply(directory: Path, changes: list[tuple[Any, ...]], hasher: Hasher) -> None:
    """Make the changes to the trail in `directory`, in order."""
    for op, *args in changes:
        segments = [p for p in _segments(directory) if p.exists()]
        if not segments:
            return
        if op == "drop segment":
            segments[args[0] % len(segments)].unlink()
            continue
        if op == "cut file":
            path = segments[args[0] % len(segments)]
            data = path.read_bytes()
            path.write_bytes(data[: args[1] % (len(data) + 1)])
            continue
        if op in ("byte", "cut byte", "add byte"):
            whole = [(p, p.read_bytes()) for p in segments]
            total = sum(len(d) for _, d in whole)
            if total == 0:
                continue
            at = args[0] % total
            for path, data in whole:
                if at < len(data):
                    if op == "byte":
                        new = bytes([args[1]]) if args[1] != data[at] else bytes([args[1] ^ 1])
                        data = data[:at] + new + data[at + 1 :]
                    elif op == "cut byte":
                        data = data[:at] + data[at + 1 :]
                    else:
                        data = data[:at] + bytes([args[1]]) + data[at:]
                    path.write_bytes(data)
                    break
                at -= len(data)
            continue
        # line changes, over the chain's lines in order
        lines = [
            (p, n, raw)
            for p in segments
            for n, raw in enumerate(p.read_bytes().split(b"\n"))
            if raw or n < p.read_bytes().count(b"\n")
        ]
        if not lines:
            continue
        i = args[0] % len(lines)
        if op == "re-encode" and args[3]:
            headers = [k for k, (_, n, _) in enumerate(lines) if n == 0]
            i = headers[args[0] % len(headers)] if headers else i
        if op == "drop line":
            del lines[i]
        elif op == "double line":
            lines.insert(i, lines[i])
        elif op == "swap lines":
            j = (i + 1) % len(lines)  # contents swapped, each file keeping its length
            (pi, ni, ri), (pj, nj, rj) = lines[i], lines[j]
            lines[i], lines[j] = (pi, ni, rj), (pj, nj, ri)
        elif op == "re-encode":
            path, n, raw = lines[i]
            found = _record(raw)
            if found is None or not isinstance(found[1], str):
                continue
            seq, prev, rec = found
            line, digest = record_line(hasher, seq, prev, ENCODINGS[args[1]](rec))
            lines[i] = (path, n, line.rstrip(b"\n"))
            if args[2]:
                _relink(lines, i, digest, hasher)
        by_file: dict[Path, list[bytes]] = {p: [] for p in segments}
        for path, _, raw in lines:
            by_file[path].append(raw + b"\n")
        for path, content in by_file.items():
            path.write_bytes(b"".join(content))


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(["plain", "keyed"]),
    changes=st.lists(change, min_size=0, max_size=3),
    anchor=st.sampled_from(ANCHORS),
)
def test_the_fast_walk_confirms_exactly_what_audit_verify_passes(
    pristine: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    kind: str,
    changes: list[tuple[Any, ...]],
    anchor: str,
) -> None:
    key = KEY if kind == "keyed" else None
    directory = tmp_path_factory.mktemp("walk") / "trail"
    shutil.copytree(pristine[kind], directory)
    try:
        _apply(directory, changes, Hasher(key))
        if anchor != "kept":
            (directory / "audit.jsonl.head").unlink()
        missing_anchor_ok = anchor == "removed, accepted"
        try:
            (trails,) = collect_sets([directory])
        except (StepguardError, ValueError):
            return  # nothing left that is a trail: neither walk is asked
        (chain,) = trails.chains
        fast: list[tuple[Any, ...]] = []
        count = walk_intact(
            chain,
            key,
            lambda body, file, line, seq: fast.append((dict(body), file, line, seq)),
            accept_missing_anchor=missing_anchor_ok,
        )
        walked: list[tuple[Any, ...]] = []
        report = verify_chain(
            trails,
            chain,
            key,
            accept_missing_anchor=missing_anchor_ok,
            on_record=lambda rec, file, line: walked.append((dict(rec.body), file, line, rec.seq)),
        )
        event("confirmed" if count is not None else "left to audit verify")
        if count is not None:  # confirmed: audit verify passes it, with the same records
            assert report.problem is None, (changes, str(report.problem))
            assert count == report.records
            assert fast == walked
        elif not changes and anchor != "removed, refused":
            raise AssertionError("the fast walk gave up on an unchanged trail")
    finally:
        shutil.rmtree(directory.parent)
