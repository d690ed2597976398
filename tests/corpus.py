"""The Cedar integration corpus (../shared/conformance/cedar), read the way a gRPC call is.

Each corpus file names its policies, schema and entities and lists requests
with Cedar's answers. `CorpusFile.requests` turns every request into the JSON
request form, then protobuf, then the validated model (`request_from_proto`):
the exact path an Authorize call takes. The tests that check stepguard against
Cedar (conformance, indexing, explanations) all read it through here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from sidecar.core.bundle import Bundle, Source, build_bundle
from sidecar.core.jsonreq import request_from_json
from sidecar.core.model import AuthzRequest
from sidecar.core.validate import Limits, request_from_proto
from tests.conftest import shared_dir

EXPECTED_REQUESTS = 7890
EXPECTED_FILES = 999
# The corpus nests deeper and sends larger requests than the server's defaults allow.
LIMITS = Limits(max_request_bytes=1 << 20, max_attribute_depth=64)


def corpus_files() -> list[Path]:
    """Every corpus file: the hand-written tests, then the generated corpus."""
    root = shared_dir("conformance", "cedar")
    files = sorted((root / "tests").rglob("*.json"))
    files += sorted(
        p for p in (root / "corpus-tests").glob("*.json") if not p.name.endswith(".entities.json")
    )
    return files


@dataclass(frozen=True)
class CorpusFile:
    path: Path

    @cached_property
    def test(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.path.read_text())
        return loaded

    @property
    def should_validate(self) -> bool:
        return bool(self.test["shouldValidate"])

    def bundle(self, *, validate: bool = False) -> Bundle:
        """The file's policies, schema and entities as a bundle (BundleError if refused)."""
        root = self.path.parent.parent if self.path.parent.name == "corpus-tests" else None
        root = root or self.path.parents[2]

        def source(rel: str) -> Source:
            return Source(rel, (root / rel).read_text())

        return build_bundle(
            [source(self.test["policies"])],
            source(self.test["schema"]),
            [source(self.test["entities"])],
            validate=validate,
        )

    def requests(self, bundle: Bundle) -> Iterator[tuple[dict[str, Any], AuthzRequest]]:
        """Each corpus request (with Cedar's answer) and its validated model."""
        for req in self.test["requests"]:
            message = request_from_json(
                {
                    "principal": req["principal"],
                    "action": req["action"],
                    "resource": req["resource"],
                    "context": {"attributes": req["context"]},
                }
            )
            yield req, request_from_proto(message, bundle, LIMITS, now=None, cedar_entities=True)

    def where(self, req: dict[str, Any]) -> str:
        return f"{self.path.name} {req['description']!r}"
