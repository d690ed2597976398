"""A real headless browser for the tests that open the evidence HTML report.

Debian's chromium (installed by scripts/ensure_browser.sh from `./dev test`)
driven by Playwright, offline. Without chromium or Playwright a test that uses
`browser` skips locally and fails in CI (tests/conftest.py `missing`). Import
the fixture into a test module: `from tests.browser import browser, open_page`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing


def chromium() -> str:
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
    executable = chromium()
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
