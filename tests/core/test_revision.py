"""The policy revision is the formula docs/api.md documents (issue 22 point 14).

Recomputed here from the files with hashlib alone, by the documented rules
(inputs, order, names, framing), and compared with what the loader says.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

from sidecar.core.bundle import load_bundle
from tests.helpers import POLICIES, ROOT


def documented_formula() -> str:
    """The Python block of docs/api.md's "The policy revision" section, verbatim."""
    text = (ROOT / "docs/api.md").read_text()
    section = text.split("### The policy revision", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "docs/api.md documents the revision formula as a Python block"
    return match.group(1)


def _path_order(names: list[str]) -> list[str]:
    """Path order: directory by directory (team/a.cedar before team.cedar)."""
    return sorted(names, key=lambda n: n.split("/"))


def expected_revision(directory: Path) -> str:
    names = [
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(directory).parts)
    ]

    def base(name: str) -> str:
        return name.rsplit("/", 1)[-1]

    order = [
        *_path_order([n for n in names if n.endswith(".cedar")]),
        *[n for n in names if n.endswith((".cedarschema", ".cedarschema.json"))],
        *_path_order([n for n in names if base(n).endswith("entities.json")]),
        *[n for n in names if base(n) == "request-entities.yaml"],
        *[n for n in names if base(n) == "lifecycle.yaml"],
    ]
    inputs = [(name, (directory / name).read_bytes()) for name in order]
    scope: dict[str, object] = {"hashlib": hashlib, "inputs": inputs}
    exec(documented_formula(), scope)
    revision = scope["policy_revision"]
    assert isinstance(revision, str)
    # and the same, written out here, so the block cannot drift into something else
    digest = hashlib.sha256()
    for name, data in inputs:
        for part in (name.encode(), data):
            digest.update(len(part).to_bytes(8, "big") + part)
    assert revision == digest.hexdigest()
    return revision


def test_the_example_bundle_revision_is_the_documented_formula() -> None:
    assert load_bundle(POLICIES).revision == expected_revision(POLICIES)


def test_order_names_and_what_is_not_hashed(tmp_path: Path) -> None:
    bundle = tmp_path / "a"
    shutil.copytree(POLICIES, bundle)
    (bundle / "team").mkdir()
    # a policy file in a subdirectory sorts before a sibling file of the same stem
    (bundle / "credentials.cedar").rename(bundle / "team" / "credentials.cedar")
    (bundle / "team.cedar").write_text((bundle / "read_only.cedar").read_text())
    (bundle / "read_only.cedar").unlink()
    (bundle / "people.entities.json").write_text("[]\n")
    (bundle / "notes.txt").write_text("not a bundle file\n")
    (bundle / ".hidden").mkdir()
    (bundle / ".hidden" / "x.cedar").write_text("not even parsed")
    revision = load_bundle(bundle).revision
    assert revision == expected_revision(bundle)
    assert revision != load_bundle(POLICIES).revision

    # not hashed: other files, the directory's path; hashed: names
    (bundle / "README.md").write_text("changed\n")
    (bundle / "tests" / "read_only.yaml").write_text("changed: true\n")
    moved = shutil.move(bundle, tmp_path / "elsewhere")
    assert load_bundle(Path(moved)).revision == revision
    (Path(moved) / "team.cedar").rename(Path(moved) / "zz.cedar")
    renamed = load_bundle(Path(moved)).revision
    assert renamed != revision and renamed == expected_revision(Path(moved))


def test_lifecycle_yaml_is_an_input_after_request_entities(tmp_path: Path) -> None:
    """Which steps create and remove access is policy: changing it changes the revision."""
    bundle = tmp_path / "b"
    shutil.copytree(POLICIES, bundle)
    loaded = load_bundle(bundle)
    assert loaded.sources[-2:] == ("request-entities.yaml", "lifecycle.yaml")
    assert loaded.revision == expected_revision(bundle)
    lifecycle = bundle / "lifecycle.yaml"
    text = lifecycle.read_text()
    lifecycle.write_text(
        text.replace("leaver_workflows: [leaver, legacy-offboarding]", "leaver_workflows: [leaver]")
    )
    changed = load_bundle(bundle).revision
    assert changed != loaded.revision and changed == expected_revision(bundle)
    lifecycle.unlink()  # optional: without it the bundle loads, and hashes one input less
    without = load_bundle(bundle)
    assert without.lifecycle is None and "lifecycle.yaml" not in without.sources
    assert without.revision not in (loaded.revision, changed)
    assert without.revision == expected_revision(bundle)
