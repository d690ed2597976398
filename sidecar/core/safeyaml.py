"""The one way stepguard reads YAML: no anchors, no aliases, bounded nesting.

PyYAML's `safe_load` builds no arbitrary objects, but it does expand aliases:
a few hundred bytes of nested `&a [*b, *b, ...]` ("billion laughs") made a
396-byte `--config` use 624 MB. Nothing stepguard reads needs aliases (a test
suite shares data through named fixtures), so they are refused outright, with
the line and column, as are anchors (useless without aliases) and nesting
deeper than `MAX_DEPTH` (the composer recurses per level). What is left is
linear in the size of the text. Config files, test suites and fixture files
all load through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.nodes import Node

MAX_DEPTH = 64


class SafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses anchors, aliases and deep nesting."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise ComposerError(
                None,
                None,
                f"aliases (*{event.anchor}) are not allowed: they can expand without limit; "
                "repeat the value, or use a named fixture",
                mark,
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise ComposerError(
                None,
                None,
                f"anchors (&{anchor}) are not allowed: stepguard refuses YAML aliases",
                mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nests more than {MAX_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def loads(text: str, loader: type[SafeLoader] = SafeLoader) -> Any:
    """Parse one YAML document with `loader` (a `SafeLoader` subclass)."""
    return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader that refuses aliases


def load_file(path: Path, loader: type[SafeLoader] = SafeLoader) -> Any:
    """Parse a YAML file; errors name it, with line and column."""
    with path.open(encoding="utf-8") as stream:
        return yaml.load(stream, Loader=loader)  # noqa: S506 - a SafeLoader that refuses aliases
