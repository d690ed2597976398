"""Inputs that crashed or silently broke the loader (issue 27, points 1, 2 and 9).

cedarpy 4.12.2's parser recurses without a limit: about 650 nested brackets or
16,000 chained operators kill the process with SIGSEGV. Each such shape is
written into the directory of a real `stepguard serve --watch` (a child
process): the reload is refused with file:line, health and metrics say so, and
the server keeps answering with the last good bundle. The real `validate`
reports the same shapes with file:line and exit 4.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.cli.exitcodes import EXIT_INVALID
from sidecar.core.bundle import load_bundle
from sidecar.core.errors import BundleError
from sidecar.core.limits import (
    MAX_EXPRESSION_DEPTH,
    MAX_JSON_DEPTH,
    MAX_NESTING,
    LimitError,
    check_cedar_text,
    check_json_text,
)
from sidecar.decision.metrics import Metrics
from sidecar.serving.server import POLICY_HEALTH, BundleHolder
from sidecar.serving.watch import PolicyWatcher
from tests.conftest import POLICIES

HEAD = 'permit (principal, action == Action::"lookup_identity", resource)\nwhen { '
FORBID = 'forbid (principal, action == Action::"lookup_identity", resource)\nwhen { '

# Each of these crashed `serve --watch` and `validate` with SIGSEGV (exit 139).
CRASHING = {
    "parens": HEAD + "(" * 700 + "true" + ")" * 700 + " };\n",
    "brackets": HEAD + "[" * 700 + "true" + "]" * 700 + ".isEmpty() };\n",
    "or_chain": HEAD + " || ".join(["true"] * 20_000) + " };\n",
    "plus_chain": HEAD + " + ".join(["1"] * 20_000) + " == 2 };\n",
}
# Not a crash, but a RecursionError the watcher only logged as "poll failed".
OR_700 = FORBID + " || ".join(["context.attempt == 7"] * 700) + " };\n"
DEEP_ENTITIES = "[" * 3000 + "]" * 3000


def bundle_copy(tmp_path: Path) -> Path:
    root = tmp_path / "policies"
    shutil.copytree(POLICIES, root, ignore=shutil.ignore_patterns("tests"))
    return root


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def healthz(metrics: str) -> dict[str, Any]:
    # verbose (from loopback): the refusal with its file and line
    with urllib.request.urlopen(f"http://{metrics}/healthz?verbose=1", timeout=10) as reply:
        body: dict[str, Any] = json.loads(reply.read())
    return body


def reload_error_metric(metrics: str) -> float:
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    line = next(x for x in text.splitlines() if x.startswith("stepguard_policy_reload_error "))
    return float(line.split()[1])


def policy_health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=POLICY_HEALTH), timeout=10
        )
    return int(reply.status)


def test_every_crashing_shape_is_refused_under_serve_watch(tmp_path: Path) -> None:
    """The real `serve --watch` outlives each shape; health and metrics report the refusal."""
    from sidecar.client import StepguardClient
    from tests.helpers import notify_request, serve_process

    root = bundle_copy(tmp_path)
    args = (
        *("--policies", str(root), "--listen", "127.0.0.1:0"),
        *("--socket", str(tmp_path / "sg.sock"), "--metrics-listen", "127.0.0.1:0"),
        *("--audit-file", str(tmp_path / "audit.jsonl"), "--watch", "--watch-interval", "0.05"),
    )
    revision = load_bundle(root).revision
    shapes = [*CRASHING.items(), ("or_700_forbid", OR_700)]
    with serve_process(*args) as server:
        metrics, target = server.serving["metrics"], server.serving["grpc"]
        with StepguardClient(f"unix://{server.serving['socket']}") as client:
            for failures, (name, text) in enumerate(shapes, 1):
                (root / f"{name}.cedar").write_text(text)

                def refused(n: int = failures) -> bool:
                    return bool(healthz(metrics)["reload"]["failures"] == n)

                wait_for(refused, name)
                assert server.proc.poll() is None, f"{name}: the server died"
                status = healthz(metrics)["reload"]
                assert not status["ok"] and status["error"].startswith(f"{name}.cedar:2"), status
                assert reload_error_metric(metrics) == 1.0
                assert policy_health(target) == health_pb2.HealthCheckResponse.NOT_SERVING
                answer = client.authorize(notify_request())
                assert answer.allowed and answer.policy_revision == revision
                (root / f"{name}.cedar").unlink()
                wait_for(lambda: healthz(metrics)["reload"]["ok"], f"{name} removed")
            # A deeply nested entities file is refused the same way.
            (root / "deep.entities.json").write_text(DEEP_ENTITIES)
            wait_for(lambda: not healthz(metrics)["reload"]["ok"], "deep entities")
            assert healthz(metrics)["reload"]["error"].startswith("deep.entities.json:1")
            assert reload_error_metric(metrics) == 1.0
            assert client.authorize(notify_request()).allowed
        assert server.terminate() == 0


@pytest.mark.parametrize("name", [*CRASHING, "or_700"])
def test_validate_reports_each_shape_with_file_and_line(tmp_path: Path, name: str) -> None:
    """The real `stepguard validate` exits 4 with file:line instead of dying (exit 139)."""
    root = bundle_copy(tmp_path)
    (root / "zz_deep.cedar").write_text(
        "// a comment line first\n" + (OR_700 if name == "or_700" else CRASHING[name])
    )
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "validate", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == EXIT_INVALID, (done.returncode, done.stderr[-500:])
    assert "zz_deep.cedar:3:" in done.stderr
    assert "nests more than" in done.stderr


@pytest.mark.parametrize("name", ["parens", "or_chain"])
def test_fmt_check_reports_each_shape_instead_of_crashing(tmp_path: Path, name: str) -> None:
    """`stepguard fmt --check` in CI died with SIGSEGV on the same shapes."""
    path = tmp_path / "deep.cedar"
    path.write_text(CRASHING[name])
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "fmt", "--check", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == EXIT_INVALID, (done.returncode, done.stderr[-300:])
    assert f"{path}:2:" in done.stdout + done.stderr


@pytest.mark.parametrize("where", ["cedar-test", "yaml-suite"])
def test_policy_tests_report_a_crashing_shape(tmp_path: Path, where: str) -> None:
    """`stepguard test` reaches cedarpy through the loader: a Cedar JSON test's
    policies and a YAML suite's policy directory are refused, not a SIGSEGV."""
    if where == "cedar-test":
        (tmp_path / "p.cedar").write_text(CRASHING["parens"])
        (tmp_path / "s.cedarschema").write_text(
            "entity U; action lookup_identity appliesTo { principal: U, resource: U };"
        )
        (tmp_path / "e.entities.json").write_text("[]")
        suite = tmp_path / "t.json"
        request = {
            "description": "one",
            "principal": {"type": "U", "id": "a"},
            "action": {"type": "Action", "id": "lookup_identity"},
            "resource": {"type": "U", "id": "b"},
            "context": {},
            "decision": "allow",
            "reason": [],
            "errors": [],
        }
        suite.write_text(
            json.dumps(
                {
                    "policies": "p.cedar",
                    "schema": "s.cedarschema",
                    "entities": "e.entities.json",
                    "shouldValidate": True,
                    "requests": [request],
                }
            )
        )
    else:
        root = bundle_copy(tmp_path)
        (root / "deep.cedar").write_text(CRASHING["or_chain"])
        suite = tmp_path / "s_test.yaml"
        suite.write_text(
            f"policies: {root}\ncases:\n  - principal: 'Workload::\"w\"'\n"
            "    action: notify\n    resource: 'TargetSystem::\"slack\"'\n    expect: DENY\n"
        )
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "test", str(suite)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode > 0, (done.returncode, done.stderr[-300:])
    assert "nests more than" in done.stdout + done.stderr


def test_deep_entities_and_schema_are_located(tmp_path: Path) -> None:
    root = bundle_copy(tmp_path)
    (root / "entities.json").write_text('[\n  {"uid": ' + "[" * 100 + "]" * 100 + "}\n]\n")
    with pytest.raises(BundleError, match="nests more than 64") as caught:
        load_bundle(root)
    assert (caught.value.file, caught.value.line) == ("entities.json", 2)

    root = bundle_copy(tmp_path / "schema")
    schema = root / "schema.cedarschema"
    deep = "{ a: " * 5000 + "Long" + " }" * 5000
    schema.write_text(schema.read_text() + f"\nentity Deep = {{ a: {deep} }};\n")
    with pytest.raises(BundleError, match="schema nests more than 64") as caught:
        load_bundle(root)
    assert caught.value.file == "schema.cedarschema" and caught.value.line > 1


def test_a_chain_cedar_refuses_is_located_to_its_policy(tmp_path: Path) -> None:
    """Between Cedar's JSON limit (128 levels) and ours, the refusal names file:line."""
    root = bundle_copy(tmp_path)
    (root / "chain.cedar").write_text("\n\n" + FORBID + " || ".join(["true"] * 150) + " };\n")
    with pytest.raises(BundleError, match="levels deep in Cedar's JSON form") as caught:
        load_bundle(root)
    assert (caught.value.file, caught.value.line) == ("chain.cedar", 3)


def test_limits_leave_real_policies_alone() -> None:
    """Every policy and schema of the example bundle and the Cedar corpus passes the scanner."""
    shared = Path("/work/wt/shared/conformance")
    files = [*POLICIES.rglob("*.cedar"), *POLICIES.rglob("*.cedarschema")]
    if shared.is_dir():
        files += [*shared.rglob("*.cedar"), *shared.rglob("*.cedarschema")]
    for path in files:
        check_cedar_text(path.read_text(), schema=path.suffix == ".cedarschema")


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("(" * (MAX_NESTING + 1) + ")" * (MAX_NESTING + 1), "brackets"),
        (" || ".join(["a"] * (MAX_EXPRESSION_DEPTH + 2)), "operators"),
        ("x" + ".a" * (MAX_EXPRESSION_DEPTH + 1), "operators"),
        ("if a then " * (MAX_EXPRESSION_DEPTH + 1) + "b", "operators"),
        # nested chains add up: 150 operators around a bracket holding 60 more
        (" && ".join(["a"] * 150) + " && (" + " || ".join(["a"] * 60) + ")", "operators"),
    ],
)
def test_scanner_refuses_past_each_limit(text: str, limit: str) -> None:
    with pytest.raises(LimitError, match=limit):
        check_cedar_text(f"permit (principal, action, resource) when {{ {text} }};")


@pytest.mark.parametrize(
    "text",
    [
        '"' + "(" * 1000 + '"',  # brackets in a string
        "// " + "(" * 1000 + "\n true",  # brackets in a comment
        "[" + ", ".join(f'"{i}" == "{i}"' for i in range(5000)) + "].isEmpty()",  # wide, flat
        "(" * (MAX_NESTING - 1) + "true" + ")" * (MAX_NESTING - 1),  # `when {` is one
        " || ".join(["a"] * MAX_EXPRESSION_DEPTH),
        # side by side, chains do not add up: the tree is only as deep as the deeper one
        "(" + " && ".join(["a"] * 150) + ") || (" + " && ".join(["a"] * 150) + ")",
    ],
)
def test_scanner_accepts_up_to_the_limits(text: str) -> None:
    check_cedar_text(f"permit (principal, action, resource) when {{ {text} }};")


def test_json_depth_ignores_strings_and_stops_past_the_limit() -> None:
    check_json_text('[{"a": "' + "[" * 1000 + '"}]')
    check_json_text("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
    with pytest.raises(LimitError) as caught:
        check_json_text("[\n" + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "]")
    assert (caught.value.line, caught.value.column) == (2, MAX_JSON_DEPTH)


def test_duplicate_entity_keys_are_refused_with_their_place(tmp_path: Path) -> None:
    """`"shared": false, "shared": true` silently became true (the last wins)."""
    root = bundle_copy(tmp_path)
    entities = json.loads((root / "entities.json").read_text())
    text = json.dumps(entities, indent=2)
    assert '"shared": false' in text
    text = text.replace('"shared": false', '"shared": false, "shared": true', 1)
    (root / "entities.json").write_text(text)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if '"shared": false,' in x)
    column = text.splitlines()[line - 1].index('"shared": true') + 1
    with pytest.raises(BundleError, match="duplicate key 'shared'") as caught:
        load_bundle(root)
    assert (caught.value.file, caught.value.line) == ("entities.json", line)
    assert f"column {column}:" in str(caught.value)


def test_duplicate_keys_in_a_json_schema_are_refused(tmp_path: Path) -> None:
    schema: dict[str, Any] = {"": {"entityTypes": {"U": {}}, "actions": {"a": {}}}}
    root = tmp_path / "b"
    root.mkdir()
    (root / "p.cedar").write_text("permit (principal, action, resource);\n")
    text = json.dumps(schema).replace('"U": {}', '"U": {}, "U": {"memberOfTypes": ["U"]}')
    (root / "s.cedarschema.json").write_text(text)
    with pytest.raises(BundleError, match="duplicate key 'U'"):
        load_bundle(root)


class Boom(Exception):
    pass


def test_any_loader_exception_is_a_refused_reload(tmp_path: Path) -> None:
    """Not only BundleError: metric, status and health callback all say refused."""
    root = bundle_copy(tmp_path)
    holder = BundleHolder(load_bundle(root))
    metrics = Metrics()
    statuses: list[Any] = []

    def loader(directory: Path) -> Any:
        if (directory / "boom.cedar").exists():
            raise RecursionError("maximum recursion depth exceeded")
        return load_bundle(directory)

    watcher = PolicyWatcher(
        root, holder, metrics, interval_s=60, loader=loader, on_status=statuses.append
    )
    assert watcher.poll() is None and watcher.poll() is None
    (root / "boom.cedar").write_text("permit (principal, action, resource);\n")
    assert watcher.poll() is None
    status = watcher.poll()
    assert status is not None and not status.ok and status.failures == 1
    assert "RecursionError" in status.error
    assert metrics.registry.get_sample_value("stepguard_policy_reload_error") == 1.0
    assert (
        metrics.registry.get_sample_value("stepguard_policy_reloads_total", {"result": "failure"})
        == 1.0
    )
    assert statuses and not statuses[-1].ok
