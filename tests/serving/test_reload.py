"""The policy watcher on real directories: ConfigMap swaps, editors' saves, broken changes.

Each test drives `PolicyWatcher.poll()` by hand (the thread only calls it on a
timer), so every step is deterministic: a change is applied on the second poll
that sees it unchanged.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.bundlefiles import fingerprint
from sidecar.core.errors import ConfigError
from sidecar.decision.metrics import Metrics
from sidecar.serving.config import build_settings
from sidecar.serving.server import BundleHolder
from sidecar.serving.watch import PolicyWatcher, ReloadStatus
from tests.conftest import POLICIES

NO_NOTIFY = 'action == Action::"lookup_identity"'
BROKEN = "\npermit (principal, action, resource)\nwhen { context.nope };\n"


def policy_files() -> dict[str, str]:
    return {
        p.name: p.read_text()
        for p in POLICIES.iterdir()
        if p.is_file() and p.suffix in (".cedar", ".cedarschema", ".json")
    }


def without_notify(files: dict[str, str]) -> dict[str, str]:
    changed = dict(files)
    changed["read_only.cedar"] = files["read_only.cedar"].replace(
        'action in Action::"read-only"', NO_NOTIFY
    )
    assert changed != files
    return changed


def configmap(root: Path, files: dict[str, str], stamp: str) -> None:
    """Lay out or update `root` as the kubelet does a ConfigMap volume."""
    root.mkdir(exist_ok=True)
    data = root / f"..{stamp}"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
    old = os.readlink(root / "..data") if (root / "..data").is_symlink() else None
    tmp = root / "..data_tmp"
    tmp.symlink_to(data.name)
    os.replace(tmp, root / "..data")  # the atomic swap
    for name in files:
        link = root / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    if old is not None:
        shutil.rmtree(root / old)


class Watched:
    """A real holder, real metrics and a watcher over `directory`."""

    def __init__(self, directory: Path, loader: Callable[[Path], Bundle] = load_bundle) -> None:
        self.holder = BundleHolder(load_bundle(directory))
        self.first = self.holder.current().revision
        self.metrics = Metrics()
        self.statuses: list[ReloadStatus] = []
        self.watcher = PolicyWatcher(
            directory,
            self.holder,
            self.metrics,
            interval_s=60,
            loader=loader,
            on_status=self.statuses.append,
        )
        # The first look re-loads once and finds the same revision: nothing to report.
        assert self.watcher.poll() is None and self.watcher.poll() is None
        assert self.holder.current().revision == self.first

    def settle(self) -> ReloadStatus | None:
        """Two polls: the first sees a change, the second applies it."""
        assert self.watcher.poll() is None
        return self.watcher.poll()

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def test_configmap_symlink_swap_is_reloaded(tmp_path: Path) -> None:
    root = tmp_path / "policies"
    configmap(root, policy_files(), "2026_11_25_10_00_00.1")
    watched = Watched(root)
    configmap(root, without_notify(policy_files()), "2026_11_25_10_05_00.2")
    status = watched.settle()
    assert status is not None and status.ok and status.reloads == 1
    new = watched.holder.current()
    assert new.revision != watched.first
    assert new.revision == load_bundle(root).revision
    assert NO_NOTIFY in new.policies["step-runners-read-and-notify"].text
    assert watched.metric("stepguard_policy_reloads_total", result="success") == 1
    assert watched.metric("stepguard_policy_reload_error") == 0
    assert watched.metric("stepguard_policy_revision_info", revision=new.revision) == 1
    assert watched.statuses == [status]
    # Nothing changes any more: no further reloads.
    assert watched.watcher.poll() is None and watched.watcher.poll() is None


def test_configmap_adding_a_key_is_reloaded(tmp_path: Path) -> None:
    root = tmp_path / "policies"
    configmap(root, policy_files(), "a")
    watched = Watched(root)
    files = policy_files()
    files["extra.cedar"] = '@id("extra")\nforbid (principal, action, resource);\n'
    configmap(root, files, "b")
    assert (status := watched.settle()) is not None and status.ok
    assert "extra" in watched.holder.current().policies


def test_editor_rename_on_save_is_reloaded(tmp_path: Path) -> None:
    root = tmp_path / "policies"
    shutil.copytree(POLICIES, root)
    watched = Watched(root)
    target = root / "read_only.cedar"
    # An editor writes a new file beside the old one, then renames it over it.
    swap = root / "read_only.cedar.new"
    swap.write_text(without_notify(policy_files())["read_only.cedar"])
    assert watched.watcher.poll() is None  # a change: wait for it to settle
    os.replace(swap, target)
    assert watched.watcher.poll() is None  # changed again since: still settling
    status = watched.watcher.poll()
    assert status is not None and status.ok
    assert NO_NOTIFY in watched.holder.current().policies["step-runners-read-and-notify"].text


def test_a_file_briefly_missing_is_never_loaded(tmp_path: Path) -> None:
    root = tmp_path / "policies"
    shutil.copytree(POLICIES, root)
    watched = Watched(root)
    forbid = root / "workload_identity.cedar"
    text = forbid.read_text()
    forbid.unlink()  # mid-save: the forbid is gone for a moment...
    assert watched.watcher.poll() is None
    forbid.write_text(text)  # ...and back before the change settled
    assert watched.watcher.poll() is None and watched.watcher.poll() is None
    assert watched.holder.current().revision == watched.first
    assert watched.metric("stepguard_policy_reloads_total", result="success") == 0


def test_broken_change_is_refused_reported_once_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "policies"
    shutil.copytree(POLICIES, root)
    watched = Watched(root)
    target = root / "read_only.cedar"
    good = target.read_text()
    target.write_text(good + BROKEN)
    line = len(target.read_text().splitlines())
    with caplog.at_level(logging.ERROR, logger="sidecar.serving.watch"):
        status = watched.settle()
    assert status is not None and not status.ok and status.failures == 1
    assert status.error.startswith(f"read_only.cedar:{line}:16: validation error: ")
    assert watched.holder.current().revision == watched.first  # the last good bundle serves
    assert watched.metric("stepguard_policy_reloads_total", result="failure") == 1
    assert watched.metric("stepguard_policy_reload_error") == 1
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"read_only.cedar:{line}:16" in record.getMessage()
    assert watched.first[:12] in record.getMessage()  # says which revision still serves
    # The same broken content is reported once, not on every poll.
    assert watched.watcher.poll() is None and watched.watcher.poll() is None
    assert watched.metric("stepguard_policy_reloads_total", result="failure") == 1
    # A fix is applied.
    target.write_text(without_notify(policy_files())["read_only.cedar"])
    status = watched.settle()
    assert status is not None and status.ok and status.error == "" and status.reloads == 1
    assert watched.holder.current().revision != watched.first
    assert watched.metric("stepguard_policy_reload_error") == 0
    assert watched.metric("stepguard_policy_reloads_total", result="success") == 1


def test_the_server_hears_of_a_change_before_any_reader_sees_it(tmp_path: Path) -> None:
    """Whoever reads a refused or applied change (healthz, a probe) finds the gRPC policy
    health already set from it: the watcher tells the server first, then publishes."""
    root = tmp_path / "policies"
    shutil.copytree(POLICIES, root)
    watched = Watched(root)
    visible: list[tuple[bool, int, int]] = []

    def told(status: ReloadStatus) -> None:
        now = watched.watcher.status()
        visible.append((now.ok, now.failures, now.reloads))

    watched.watcher._on_status = told
    target = root / "read_only.cedar"
    target.write_text(target.read_text() + BROKEN)
    refused = watched.settle()
    assert refused is not None and refused.failures == 1
    target.write_text(without_notify(policy_files())["read_only.cedar"])
    applied = watched.settle()
    assert applied is not None and applied.reloads == 1
    # When the server was told, readers still saw the state before each change.
    assert visible == [(True, 0, 0), (False, 1, 0)]
    assert watched.watcher.status() == applied


def test_reverting_a_broken_change_clears_the_error_without_a_swap(tmp_path: Path) -> None:
    root = tmp_path / "policies"
    shutil.copytree(POLICIES, root)
    watched = Watched(root)
    target = root / "read_only.cedar"
    good = target.read_text()
    target.write_text(good + BROKEN)
    assert (status := watched.settle()) is not None and not status.ok
    target.write_text(good)
    status = watched.settle()
    assert status is not None and status.ok and status.reloads == 0
    assert watched.holder.current().revision == watched.first
    assert watched.metric("stepguard_policy_reload_error") == 0
    assert watched.metric("stepguard_policy_reloads_total", result="success") == 0


def test_a_directory_that_changes_while_loading_is_loaded_again(tmp_path: Path) -> None:
    root = tmp_path / "policies"
    shutil.copytree(POLICIES, root)
    edits = iter([without_notify(policy_files())["read_only.cedar"]])

    def racing_loader(directory: Path) -> Bundle:
        bundle = load_bundle(directory)
        nxt = next(edits, None)
        if nxt is not None:  # somebody saves again while this bundle was being built
            (directory / "read_only.cedar").write_text(nxt)
        return bundle

    watched = Watched(root, loader=load_bundle)
    watched.watcher = PolicyWatcher(root, watched.holder, watched.metrics, loader=racing_loader)
    (root / "extra.cedar").write_text('@id("extra")\nforbid (principal, action, resource);\n')
    assert watched.settle() is None  # built, but the directory moved on: not swapped
    assert watched.holder.current().revision == watched.first
    status = watched.settle()
    assert status is not None and status.ok
    current = watched.holder.current()
    assert current.revision == load_bundle(root).revision
    assert "extra" in current.policies
    assert NO_NOTIFY in current.policies["step-runners-read-and-notify"].text


def test_fingerprint_reads_through_symlinks_and_skips_dot_directories(tmp_path: Path) -> None:
    root = tmp_path / "policies"
    configmap(root, {"a.cedar": "x"}, "one")
    before = fingerprint(root)
    configmap(root, {"a.cedar": "y"}, "two")
    assert fingerprint(root) != before
    (root / "..scratch").mkdir()
    after = fingerprint(root)
    (root / "..scratch" / "b.cedar").write_text("z")
    assert fingerprint(root) == after
    assert fingerprint(tmp_path / "missing") == "absent"


def test_watch_settings() -> None:
    assert build_settings({"watch": True}).watch is True
    env = {"STEPGUARD_WATCH": "true", "STEPGUARD_WATCH_INTERVAL_S": "0.5"}
    settings = build_settings({}, env)
    assert settings.watch is True and settings.watch_interval_s == 0.5
    assert build_settings({}).watch is False
    with pytest.raises(ConfigError, match="watch_interval_s must be positive"):
        build_settings({"watch_interval_s": 0})
    with pytest.raises(ConfigError, match="watch: 'maybe' is not a boolean"):
        build_settings({}, {"STEPGUARD_WATCH": "maybe"})


def test_serve_watch_from_the_command_line(tmp_path: Path) -> None:
    """`stepguard serve --watch` reloads a rename-on-save and logs it; SIGTERM stops it."""
    from sidecar.client import StepguardClient
    from tests.helpers import notify_request, serve_process

    root = tmp_path / "policies"
    shutil.copytree(POLICIES, root, ignore=shutil.ignore_patterns("tests"))
    args = (
        *("--policies", str(root), "--listen", "none", "--socket", str(tmp_path / "sg.sock")),
        *("--metrics-listen", "off", "--audit-file", str(tmp_path / "audit.jsonl")),
        *("--watch", "--watch-interval", "0.05"),
        # One process: the reload line below is its own. With several workers each
        # reloads on its own poll (test_workers.py: a policy change reaches every worker).
        *("--workers", "1"),
    )
    with serve_process(*args) as server:
        with StepguardClient(f"unix://{server.serving['socket']}") as client:
            assert client.authorize(notify_request()).allowed
            new = root / "read_only.cedar.new"
            new.write_text(without_notify(policy_files())["read_only.cedar"])
            os.replace(new, root / "read_only.cedar")
            reloaded = next(line for line in server.stderr if "policies reloaded" in line)
            decision = client.authorize(notify_request())
        assert server.terminate() == 0
    assert load_bundle(root).revision[:12] in reloaded
    assert not decision.allowed and decision.policy_revision == load_bundle(root).revision
