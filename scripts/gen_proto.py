"""Generate sidecar/_proto from proto/ (python, grpc and mypy stubs).

`--check` regenerates into a temporary directory and fails when the checked-in
code differs, so stale generated code cannot land.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "sidecar" / "_proto"
# protoc emits absolute imports (`from stepguard.v1 import x_pb2`); they are
# rewritten to live under the sidecar package.
IMPORT_RE = re.compile(r"^from stepguard\.v1 import", re.MULTILINE)
IMPORT_SUB = "from sidecar._proto.stepguard.v1 import"


def generate(out: Path) -> None:
    # protoc finds the mypy plugins next to the interpreter running this script.
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for path in out.rglob("*.py*"):
        text = path.read_text()
        path.write_text(IMPORT_RE.sub(IMPORT_SUB, text))
    for module in list(out.rglob("*.py")):
        for pkg in module.relative_to(out).parents:
            (out / pkg / "__init__.py").touch()


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if sidecar/_proto is stale")
    args = parser.parse_args()
    if not args.check:
        shutil.rmtree(OUT_DIR, ignore_errors=True)
        OUT_DIR.mkdir(parents=True)
        generate(OUT_DIR)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "_proto"
        fresh.mkdir()
        generate(fresh)
        want, have = tree(fresh), tree(OUT_DIR) if OUT_DIR.exists() else {}
        if want != have:
            stale = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
            print(
                "sidecar/_proto is stale against proto/ (run ./dev proto): " + ", ".join(stale),
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
