"""Recovery at open (sidecar/audit/recovery.py): a restart continues the chain; a torn tail is
kept aside and recorded; records lost at the end are named; another key is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.audit.chain import Hasher, parse_line
from sidecar.audit.filesink import FileSink
from sidecar.audit.segments import collect
from sidecar.audit.verify import EXIT_CODES, verify
from sidecar.cli.main import main
from sidecar.core.errors import AuditError
from tests.audit.trails import KEY, event, ids_in, lines_of, make_trail


def test_restart_continues_the_chain(tmp_path: Path) -> None:
    path = make_trail(tmp_path, 3, rotate_bytes=600)
    sink = FileSink(path, rotate_bytes=600)
    sink.write(event(99))
    sink.close()
    report = verify(collect([path])[0])
    assert report.ok, report.problem
    assert report.notes == []
    assert ids_in(tmp_path)[-1] == "ev-00099"


# -- crash recovery ---------------------------------------------------------------------


def test_torn_last_line_is_kept_aside_and_recorded(tmp_path: Path) -> None:
    path = make_trail(tmp_path, 4)
    torn = b'{"seq":6,"prev":"abc","hash":"def","kind":"decis'
    with path.open("ab") as f:
        f.write(torn)
    code = main(["audit", "verify", str(path)])
    assert code == EXIT_CODES["truncated"]
    sink = FileSink(path)
    sink.write(event(5))
    sink.close()
    aside = list(tmp_path.glob("audit.jsonl.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == torn
    report = verify(collect([tmp_path])[0])
    assert report.ok, report.problem
    recoveries = [json.loads(x) for x in lines_of(path) if json.loads(x)["kind"] == "recovery"]
    assert len(recoveries) == 1
    note = recoveries[0]
    assert note["reason"] == "torn_tail" and note["bytes"] == len(torn)
    assert note["moved_to"] == aside[0].name
    assert any("torn_tail" in n for n in report.notes)


def test_a_file_holding_only_a_torn_header_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"seq":0,"prev":"00')
    sink = FileSink(path)
    sink.write(event(1))
    sink.close()
    report = verify(collect([path])[0])
    assert report.ok, report.problem
    assert len(list(tmp_path.glob("audit.jsonl.torn-*"))) == 1


def test_records_lost_at_the_end_are_named_at_restart(tmp_path: Path) -> None:
    """The head anchor remembers the last commit; a trail that ends before it says so."""
    path = make_trail(tmp_path, 6)
    data = lines_of(path)
    path.write_bytes(b"".join(data[:-3]))  # the shutdown record and two decisions gone
    sink = FileSink(path)
    sink.write(event(7))
    sink.close()
    report = verify(collect([path])[0])
    assert report.ok
    notes = [json.loads(x) for x in lines_of(path) if b'"recovery"' in x]
    assert notes and notes[0]["reason"] == "records_missing"
    last_kept = parse_line(data[-4].rstrip(b"\n")).seq
    assert (notes[0]["from_seq"], notes[0]["to_seq"]) == (last_kept + 1, last_kept + 3)


def test_restart_with_another_key_is_refused(tmp_path: Path) -> None:
    path = make_trail(tmp_path, 2, hasher=Hasher(KEY))
    sink = FileSink(path, hasher=Hasher(b"a different key of 32 bytes!!!!!"))
    assert not sink.healthy
    with pytest.raises(AuditError, match="HMAC key"):
        sink.write(event(3))
    sink.close()
