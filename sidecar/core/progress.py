"""What a long run reports its progress to, and the counting that feeds it.

`audit verify`, `replay` and `test` count what they walk; only the command line
draws a counter (sidecar/cli/progress.py), so the rooms below it depend on
this protocol, never on the terminal.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

T = TypeVar("T")


class Progress(Protocol):
    """A count to advance, one per item walked."""

    def advance(self, n: int = 1) -> None: ...


def counting(items: Iterable[T], progress: Progress | None) -> Iterator[T]:
    """`items`, advancing `progress` by one for each."""
    if progress is None:
        yield from items
        return
    for item in items:
        progress.advance()
        yield item
