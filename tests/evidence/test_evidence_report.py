"""`stepguard evidence report --html` opened in a real headless browser (issue 18).

Debian's chromium driven by Playwright, offline (tests/browser.py): the
assertions read the rendered DOM (the revocation confidence, the rows of each
table, the inline SVG charts) and the requests the page made (none but itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.cli.exitcodes import EXIT_ERROR, EXIT_FAILED, EXIT_OK
from sidecar.cli.main import main
from tests.browser import browser, open_page
from tests.evidence.scenario import MON, Story
from tests.helpers import POLICIES

NOW = "2026-11-09T09:00:00Z"
__all__ = ["browser"]  # the fixture, used by name


def test_the_report_shows_revocation_confidence_below_100_percent(
    story_trails: list[Path], tmp_path: Path, browser: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "evidence.html"
    code = main(
        [
            "evidence",
            "report",
            *map(str, story_trails),
            "--now",
            NOW,
            "--html",
            str(out),
            "--policies",
            str(POLICIES),
        ]
    )
    assert code == EXIT_OK, capsys.readouterr()
    page, seen, context = open_page(browser, out)
    try:
        assert page.text_content("#confidence") == "50 %"
        assert page.text_content("#confidence-detail") == "1 of 2 leavers fully deprovisioned"
        assert page.get_attribute("#verification", "data-ok") == "true"
        assert page.locator("#open-grants tbody tr").count() == 3
        assert page.text_content("#open-count") == "3"
        assert page.locator("#violations tbody tr").count() == 1
        leaver_rows = page.locator("#leavers tbody tr").all_inner_texts()
        assert sum('User::"bob"' in r for r in leaver_rows) == 2
        assert page.text_content("#missed-deadline") == 'User::"alice", User::"bob"'
        # time to revoke per target, as a table and an inline SVG chart
        assert page.locator("#time-to-revoke tbody tr").count() == 2
        refs = page.locator("#time-to-revoke td.ref").all_inner_texts()
        assert len(refs) == 2 and all("#seq=" in r for r in refs)
        for table in ("leavers", "open-grants", "violations"):
            refs = page.locator(f"#{table} td.ref").all_inner_texts()
            assert refs and all("#seq=" in r for r in refs), table
        assert page.locator("svg#ttr-chart rect").count() == 6
        assert page.locator("svg#confidence-chart rect").count() == 2
        width = page.evaluate(
            "document.querySelectorAll('#confidence-chart rect')[1].getBBox().width"
        )
        assert width == 200  # half of the 400-pixel bar
        assert seen == [out.as_uri()]  # nothing but itself
    finally:
        context.close()


def test_a_table_shows_at_most_rows_and_says_how_many_it_left_out(
    story_trails: list[Path], tmp_path: Path, browser: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A large trail's tables held 186,665 rows, which took Chromium two minutes to lay
    out: a table shows at most --rows (the figures count every row) and says how many
    it left out and what lists them all; --all-rows shows every one."""
    args = ["evidence", "report", *map(str, story_trails), "--now", NOW]
    args += ["--policies", str(POLICIES)]
    capped, whole = tmp_path / "capped.html", tmp_path / "whole.html"
    assert main([*args, "--html", str(capped), "--rows", "1"]) == EXIT_OK, capsys.readouterr()
    assert main([*args, "--html", str(whole), "--all-rows"]) == EXIT_OK, capsys.readouterr()
    page, seen, context = open_page(browser, whole)
    try:
        every = {t: page.locator(f"#{t} tbody tr").count() for t in ("leavers", "open-grants")}
        assert every == {"leavers": 4, "open-grants": 3}
        assert page.locator(".more").count() == 0
        assert page.text_content("#missed-deadline") == 'User::"alice", User::"bob"'
    finally:
        context.close()
    page, seen, context = open_page(browser, capped)
    try:
        for table, total in every.items():
            assert page.locator(f"#{table} tbody tr").count() == 1
            more = page.text_content(f"#{table}-more") or ""
            assert f"The first 1 of {total} rows" in more
            assert f"stepguard evidence {table} --csv" in more
        assert page.text_content("#open-count") == "3"  # the figure counts every row
        assert page.text_content("#missed-deadline") == 'User::"alice"'
        assert page.text_content("#missed-deadline-more") == "and 1 more"
        assert seen == [capped.as_uri()]
    finally:
        context.close()
    with pytest.raises(SystemExit) as refused:  # a usage error, as argparse gives them
        main([*args, "--html", str(capped), "--rows", "0"])
    assert refused.value.code == EXIT_ERROR
    assert "argument --rows: 0 is less than 1" in capsys.readouterr().err


def test_a_report_from_a_broken_chain_says_so(
    story_trails: list[Path], tmp_path: Path, browser: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    segment = story_trails[0] / "audit.jsonl.000001"
    lines = segment.read_bytes().splitlines(keepends=True)
    del lines[2]  # a record deleted
    segment.write_bytes(b"".join(lines))
    out = tmp_path / "evidence.html"
    code = main(["evidence", "report", *map(str, story_trails), "--now", NOW, "--html", str(out)])
    assert code == EXIT_FAILED
    page, seen, context = open_page(browser, out)
    try:
        assert page.get_attribute("#verification", "data-ok") == "false"
        assert "CHAIN BROKEN" in (page.text_content("#verification") or "")
        assert page.locator("li .broken").count() >= 1
        assert seen == [out.as_uri()]
    finally:
        context.close()


def test_trail_values_are_text_not_markup(
    tmp_path: Path, browser: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run id or identity that holds markup (a caller chose it) is shown as text: it
    neither adds elements nor makes the page load anything."""
    story = Story()
    hostile = '<img src="http://127.0.0.1:9/x.png">'
    story.step(
        MON,
        "grant_access",
        "github",
        "onboarding",
        hostile,
        hostile,
        added=("admin",),
    )
    paths = story.write(tmp_path / "trails")
    out = tmp_path / "evidence.html"
    assert main(["evidence", "report", *map(str, paths), "--now", NOW, "--html", str(out)]) == 0
    page, seen, context = open_page(browser, out)
    try:
        assert page.locator("img").count() == 0
        assert hostile in (page.text_content("#open-grants") or "")
        assert seen == [out.as_uri()]
    finally:
        context.close()
