"""`stepguard evidence report --html` opened in a real headless browser (issue 18).

Debian's chromium (installed by scripts/ensure_browser.sh from `./dev test`)
driven by Playwright, offline: the assertions read the rendered DOM (the
revocation confidence, the rows of each table, the inline SVG charts) and the
requests the page made (none but itself). Without chromium or Playwright the
test skips locally and fails in CI (tests/conftest.py `missing`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli.exitcodes import EXIT_FAILED, EXIT_OK
from sidecar.cli.main import main
from tests.conftest import missing
from tests.evidence.scenario import MON, Story
from tests.helpers import POLICIES

NOW = "2026-11-09T09:00:00Z"


def _chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM", ""), "/usr/lib/chromium/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("chromium")
    if found is None:
        missing("chromium is not installed (scripts/ensure_browser.sh installs Debian's)")
    return found


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (the dev extra pins it)")
    executable = _chromium()
    home = tmp_path_factory.mktemp("browser-home")
    saved = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    os.environ["XDG_CONFIG_HOME"] = str(home / "config")  # chromium writes there
    os.environ["XDG_CACHE_HOME"] = str(home / "cache")
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            yield b
            b.close()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def open_page(browser: Any, path: Path) -> tuple[Any, list[str], Any]:
    """The report in an offline page that records every request it makes."""
    context = browser.new_context(offline=True)
    page = context.new_page()
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url))
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:") else r.abort())
    page.goto(path.as_uri())
    return page, seen, context


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
