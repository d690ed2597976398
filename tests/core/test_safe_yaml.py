"""Every YAML stepguard reads refuses aliases, deep nesting and fixture cycles (issue 27, point 6).

A 396-byte `--config` of nested aliases used 624 MB and a 612-byte test suite
230 MB; fixtures naming each other ended in a RecursionError traceback.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidecar.cli.main import main
from sidecar.core import safeyaml
from sidecar.core.errors import ConfigError
from sidecar.serving.config import build_settings
from tests.conftest import POLICIES


def bomb(levels: int = 9) -> str:
    """Nested aliases: `levels` levels of ten references each (10**levels leaves)."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for n in range(1, levels + 1):
        refs = ", ".join([f"*a{n - 1}"] * 10)
        lines.append(f"a{n}: &a{n} [{refs}]")
    return "\n".join(lines) + "\n"


def test_config_with_nested_aliases_is_refused_by_the_real_command(tmp_path: Path) -> None:
    """Under a 1 GiB address-space limit the old loader died of MemoryError."""
    config = tmp_path / "stepguard.yaml"
    config.write_text(bomb())
    assert len(config.read_bytes()) < 700

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_memory,
    )
    assert done.returncode == 1, done.stderr[-800:]
    assert "anchors (&a0) are not allowed" in done.stderr
    assert f'"{config}", line 1, column 5' in done.stderr
    assert "Traceback" not in done.stderr


def test_config_anchor_alone_and_deep_nesting_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("threads: &w 4\n")
    with pytest.raises(ConfigError, match=r"anchors \(&w\) are not allowed"):
        build_settings({}, {}, config)
    config.write_text("threads: " + "[" * 200 + "]" * 200 + "\n")
    with pytest.raises(ConfigError, match="nests more than 64 levels"):
        build_settings({}, {}, config)
    config.write_text("threads: 3\nwatch: true\n")
    settings = build_settings({}, {}, config)
    assert settings.threads == 3 and settings.watch


def stepguard(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_suite_with_aliases_is_reported_not_expanded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / "bomb_test.yaml"
    suite.write_text(f"policies: {POLICIES}\n" + bomb() + "cases: []\n")
    code, out = stepguard(capsys, "test", str(suite))
    assert code != 0
    assert "anchors (&a0) are not allowed" in out


def test_included_fixtures_with_aliases_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "fx.yaml").write_text(
        "fixtures:\n  principals:\n    p: &p 'Workload::\"x\"'\n    q: *p\n"
    )
    suite = tmp_path / "s_test.yaml"
    suite.write_text(
        f"policies: {POLICIES}\ninclude: fx.yaml\ncases:\n"
        "  - {principal: q, action: notify, resource: 'TargetSystem::\"slack\"', expect: DENY}\n"
    )
    code, out = stepguard(capsys, "test", str(suite))
    assert code != 0 and "fx.yaml" in out and "anchors (&p) are not allowed" in out


@pytest.mark.parametrize(
    ("fixtures", "where", "chain"),
    [
        ("  principals:\n    a: b\n    b: c\n    c: a\n", "principal: a", "principals"),
        ("  actions:\n    x: y\n    y: x\n", "action: x", "actions"),
        ("  contexts:\n    one: [two]\n    two: [one]\n", "context: one", "contexts"),
    ],
)
def test_fixture_cycles_are_reported_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fixtures: str, where: str, chain: str
) -> None:
    case = {
        "principal": "'Workload::\"w\"'",
        "action": "notify",
        "resource": "'TargetSystem::\"slack\"'",
    }
    key, value = where.split(": ")
    case[key] = value
    body = ", ".join(f"{k}: {v}" for k, v in case.items())
    suite = tmp_path / "cycle_test.yaml"
    suite.write_text(
        f"policies: {POLICIES}\nfixtures:\n{fixtures}cases:\n"
        f"  - {{name: loops, {body}, expect: DENY}}\n"
    )
    code, out = stepguard(capsys, "test", str(suite))
    assert code != 0
    assert f"fixtures.{chain} refer to each other in a cycle" in out
    expected = {"principals": "a -> b -> c -> a", "actions": "x -> y -> x"}.get(
        chain, "one -> two -> one"
    )
    assert expected in out
    assert "RecursionError" not in out


def test_plain_yaml_still_loads() -> None:
    assert safeyaml.loads("a: [1, {b: c}]\nd: 'e'\n") == {"a": [1, {"b": "c"}], "d": "e"}
    with pytest.raises(yaml.YAMLError, match=r"aliases \(\*nope\) are not allowed"):
        safeyaml.loads("a: *nope\n")
