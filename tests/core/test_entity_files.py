"""Entity files are `entities.json` or `*.entities.json`, and the loader says what it read
(issue 22.5): `validate` lists the files, `serve` logs them."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli.main import main
from sidecar.core.bundle import load_bundle
from tests.conftest import POLICIES

PERSON = {"uid": {"type": "User", "id": "zoe"}, "attrs": {}, "parents": []}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    copy = tmp_path / "policies"
    shutil.copytree(POLICIES, copy)
    return copy


def test_named_entity_files_are_read_and_others_are_not(bundle: Path) -> None:
    (bundle / "people.entities.json").write_text(json.dumps([PERSON]))
    stray = {"uid": {"type": "User", "id": "stray"}, "attrs": {}, "parents": []}
    (bundle / "moreentities.json").write_text(json.dumps([stray]))  # no dot: not entity data
    loaded = load_bundle(bundle)
    uids = {(u.type, u.id) for u in loaded.entity_json}
    assert ("User", "zoe") in uids and ("User", "maria") in uids
    assert ("User", "stray") not in uids
    assert "people.entities.json" in loaded.sources and "moreentities.json" not in loaded.sources


def test_validate_lists_what_it_read_and_the_json_it_did_not(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (bundle / "entities.json").rename(bundle / "entites.json")  # a typo loses the entities
    code = main(["validate", str(bundle)])
    out = capsys.readouterr().out
    assert code == 0
    read = next(line for line in out.splitlines() if line.startswith("read: "))
    assert "schema.cedarschema" in read and "read_only.cedar" in read
    assert "entites.json" not in read
    assert "not read: entites.json (entity data is entities.json or *.entities.json)" in out
    code = main(["validate", str(bundle), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["not_read"] == ["entites.json"]
    assert "schema.cedarschema" in doc["files"] and "entites.json" not in doc["files"]


def test_serve_logs_the_files_it_read(bundle: Path, tmp_path: Path) -> None:
    args = ["--policies", str(bundle), "--listen", "127.0.0.1:0", "--metrics-listen", "off"]
    args += ["--audit-file", str(tmp_path / "audit.jsonl")]
    with subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            seen: list[str] = []
            for line in proc.stderr:
                seen.append(line)
                if "stepguard serving" in line or line.startswith("{"):
                    break  # started: the files were read before this
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    read = [line for line in seen if f"policy directory {bundle}: read " in line]
    assert read, "".join(seen)
    assert "entities.json" in read[0] and "schema.cedarschema" in read[0]
