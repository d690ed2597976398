"""Which files a bundle is made of (issue 27, point 3): nothing skipped without an error.

A forbid that is silently not loaded is an ALLOW: symlinked subdirectories (a
ConfigMap item with `path: team/deny.cedar`) must be followed, and a bundle
file that cannot be read (dangling link, FIFO) or leads outside the bundle
must fail the load. The optional manifest (`bundle.sha256`) lets a publisher
that cannot swap a directory atomically say when a bundle is complete.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli.exitcodes import EXIT_INVALID
from sidecar.core.bundle import load_bundle
from sidecar.core.bundlefiles import MANIFEST, visible_files
from sidecar.core.engine import evaluate
from sidecar.core.errors import BundleError
from sidecar.core.jsonreq import request_from_json
from sidecar.core.validate import Limits, request_from_proto
from sidecar.decision.metrics import Metrics
from sidecar.serving.server import BundleHolder
from sidecar.serving.watch import PolicyWatcher
from tests.conftest import POLICIES
from tests.helpers import BUSINESS_HOURS, notify_request

DENY_NOTIFY = '@id("team-deny")\nforbid (principal, action == Action::"notify", resource);\n'


def bundle_files() -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in POLICIES.iterdir()
        if p.is_file() and p.suffix in (".cedar", ".cedarschema", ".json")
    }


def allowed(root: Path) -> bool:
    bundle = load_bundle(root)
    request = request_from_proto(
        request_from_json(notify_request()), bundle, Limits(), now=BUSINESS_HOURS
    )
    return evaluate(bundle, request).allowed


def kubelet_layout(root: Path, items: dict[str, bytes]) -> None:
    """A ConfigMap volume with `items`: paths may have directories, linked via `..data`."""
    root.mkdir()
    payload = root / "..2026_12_06_00_00_00.000000001"
    for rel, data in items.items():
        (payload / rel).parent.mkdir(parents=True, exist_ok=True)
        (payload / rel).write_bytes(data)
    (root / "..data").symlink_to(payload.name)
    for top in sorted({rel.split("/")[0] for rel in items}):
        (root / top).symlink_to(f"..data/{top}")


def test_configmap_item_in_a_subdirectory_is_loaded(tmp_path: Path) -> None:
    """`team -> ..data/team` is followed: the forbid in it is in force."""
    root = tmp_path / "cm"
    kubelet_layout(root, {**bundle_files(), "team/deny.cedar": DENY_NOTIFY.encode()})
    assert (root / "team").is_symlink()
    bundle = load_bundle(root)
    assert "team-deny" in bundle.policies
    assert bundle.policies["team-deny"].file == "team/deny.cedar"
    assert not allowed(root)
    assert root / "team" / "deny.cedar" in visible_files(root)


def copy(tmp_path: Path) -> Path:
    root = tmp_path / "policies"
    shutil.copytree(POLICIES, root, ignore=shutil.ignore_patterns("tests"))
    return root


@pytest.mark.parametrize("kind", ["dangling", "fifo", "fifo-entities", "socket"])
def test_a_bundle_file_that_is_not_a_regular_file_fails_the_load(tmp_path: Path, kind: str) -> None:
    root = copy(tmp_path)
    if kind == "dangling":
        (root / "deny.cedar").symlink_to("gone.cedar")
        name, why = "deny.cedar", "dangling symbolic link"
    elif kind == "fifo":
        os.mkfifo(root / "deny.cedar")
        name, why = "deny.cedar", "FIFO"
    elif kind == "fifo-entities":
        os.mkfifo(root / "more.entities.json")
        name, why = "more.entities.json", "FIFO"
    else:
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(root / "odd.cedar"))
        name, why = "odd.cedar", "socket"
    with pytest.raises(BundleError, match=why) as caught:
        load_bundle(root)  # a FIFO must not block: the test would hang
    assert caught.value.file == name
    assert f"{name}: " in str(caught.value)


def test_links_leading_outside_the_bundle_are_refused(tmp_path: Path) -> None:
    """`validate` printed /proc/self/environ as an error snippet through such a link."""
    root = copy(tmp_path)
    (root / "env.cedar").symlink_to("/proc/self/environ")
    env = {**os.environ, "STEPGUARD_TEST_SECRET": "hunter2-do-not-print"}
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "validate", str(root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == EXIT_INVALID
    assert re.search(r"env\.cedar: symbolic link to /proc/\w+/environ leads outside", done.stderr)
    assert "hunter2" not in done.stderr + done.stdout
    (root / "env.cedar").unlink()

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "extra.cedar").write_text(DENY_NOTIFY)
    (root / "team").symlink_to(outside)
    with pytest.raises(BundleError, match="leads outside the policy directory") as caught:
        load_bundle(root)
    assert caught.value.file == "team"


def test_a_symlink_loop_is_an_error_not_a_hang(tmp_path: Path) -> None:
    root = copy(tmp_path)
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to("..")
    with pytest.raises(BundleError, match="symbolic link loop") as caught:
        load_bundle(root)
    assert caught.value.file == "sub/up"


def write_manifest(root: Path, names: list[str] | None = None) -> None:
    files = [p for p in visible_files(root) if p.name != MANIFEST]
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}"
        for p in files
        if names is None or p.relative_to(root).as_posix() in names
    ]
    (root / MANIFEST).write_text("\n".join(lines) + "\n")


def test_manifest_must_match_before_a_bundle_loads(tmp_path: Path) -> None:
    root = copy(tmp_path)
    write_manifest(root)
    assert load_bundle(root).policy_count > 0
    # sha256sum writes the same format, and can check it
    check = subprocess.run(
        ["sha256sum", "--check", "--quiet", MANIFEST], cwd=root, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr

    (root / "deny.cedar").write_text(DENY_NOTIFY)  # arrived before the new manifest
    with pytest.raises(BundleError, match=r"not listed in bundle\.sha256") as caught:
        load_bundle(root)
    assert caught.value.file == "deny.cedar"

    write_manifest(root)
    (root / "deny.cedar").write_text(DENY_NOTIFY + "// half copied")
    with pytest.raises(BundleError, match="sha256 differs"):
        load_bundle(root)

    (root / "deny.cedar").unlink()
    with pytest.raises(BundleError, match="does not hold"):
        load_bundle(root)

    (root / MANIFEST).write_text("not a manifest\n")
    with pytest.raises(BundleError, match="sha256sum"):
        load_bundle(root)


def test_watcher_waits_for_the_manifest_of_a_non_atomic_copy(tmp_path: Path) -> None:
    """A publisher copies files one by one, manifest last: no half bundle is ever served."""
    root = copy(tmp_path)
    write_manifest(root)
    holder = BundleHolder(load_bundle(root))
    first = holder.current().revision
    watcher = PolicyWatcher(root, holder, Metrics(), interval_s=60)
    assert watcher.poll() is None and watcher.poll() is None

    (root / "deny.cedar").write_text(DENY_NOTIFY)  # copied, manifest not yet
    assert watcher.poll() is None
    status = watcher.poll()
    assert status is not None and not status.ok and "not listed" in status.error
    assert holder.current().revision == first and allowed_with(holder)

    write_manifest(root)  # the publisher's last step
    assert watcher.poll() is None
    status = watcher.poll()
    assert status is not None and status.ok and status.reloads == 1
    assert "team-deny" in holder.current().policies and not allowed_with(holder)


def allowed_with(holder: BundleHolder) -> bool:
    bundle = holder.current()
    request = request_from_proto(
        request_from_json(notify_request()), bundle, Limits(), now=BUSINESS_HOURS
    )
    return evaluate(bundle, request).allowed


def test_watcher_refuses_a_fifo_without_hanging(tmp_path: Path) -> None:
    root = copy(tmp_path)
    holder = BundleHolder(load_bundle(root))
    watcher = PolicyWatcher(root, holder, Metrics(), interval_s=60)
    assert watcher.poll() is None and watcher.poll() is None
    os.mkfifo(root / "deny.cedar")
    assert watcher.poll() is None
    status = watcher.poll()
    assert status is not None and not status.ok
    assert status.error.startswith("deny.cedar") and "FIFO" in status.error


def test_directories_nested_too_deep_are_refused(tmp_path: Path) -> None:
    root = copy(tmp_path)
    deep = root.joinpath(*["d"] * 40)
    deep.mkdir(parents=True)
    (deep / "x.cedar").write_text(DENY_NOTIFY)
    with pytest.raises(BundleError, match="nest more than 32 deep"):
        load_bundle(root)
