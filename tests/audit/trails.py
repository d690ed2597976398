"""Trails on real files for the audit tests: events, a trail written by FileSink, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.audit.filesink import FileSink
from sidecar.audit.segments import collect
from sidecar.cli.main import main

KEY = b"0123456789abcdef0123456789abcdef"


def event(i: int, **extra: Any) -> dict[str, Any]:
    return {"schema": 1, "kind": "decision", "id": f"ev-{i:05d}", "decision": "ALLOW", **extra}


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def ids_in(directory: Path) -> list[str]:
    out = []
    for trail in collect([directory]):
        for seg in trail.segments:
            for raw in lines_of(seg):
                rec = json.loads(raw)
                if rec["kind"] == "decision":
                    out.append(rec["id"])
    return out


def run_cli(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def make_trail(directory: Path, count: int, *, rotate_bytes: int = 0, **kw: Any) -> Path:
    path = directory / "audit.jsonl"
    sink = FileSink(path, rotate_bytes=rotate_bytes, **kw)
    for i in range(count):
        sink.write(event(i, pad="x" * 40))
    sink.close()
    return path
