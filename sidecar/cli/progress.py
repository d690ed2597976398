"""A one-line progress counter on stderr for long runs: `test`, `replay`, `audit verify`,
`evidence` (which says what stage its load is at rather than counting).

Shown only when stderr is a terminal, so CI logs, pipes and files stay as they
were (and stdout, which carries the report, is never touched). The line is
redrawn at most every `every_s` seconds and erased when the run ends, so the
report that follows starts on a clean line.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

_CHECK_EVERY = 64  # items between clock reads: cheap even for millions of records


class Progress:
    """`label: N/total unit` (or `label: N unit`, or `label: stage`), redrawn in place on
    a terminal."""

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        unit: str = "",
        stage: str = "",
        stream: TextIO | None = None,
        every_s: float = 0.2,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self._stream)
        self._label = label
        self._total = total
        self._unit = unit
        self._every = every_s
        self.count = 0
        self._stage = stage  # when set (here or by `show`), the line says it, not the count
        self._next_check = 0
        self._next_draw = 0.0
        self._drawn = 0  # width of the line on screen
        if self.enabled:
            self._draw()

    def advance(self, n: int = 1) -> None:
        self.count += n
        if not self.enabled or self.count < self._next_check:
            return
        self._next_check = self.count + _CHECK_EVERY if self._total is None else self.count
        if time.monotonic() >= self._next_draw:
            self._draw()

    def show(self, stage: str) -> None:
        """Say what the run is doing now (`label: stage`), drawn at once: stages change
        seldom, and each may be long."""
        self._stage = stage
        if self.enabled:
            self._draw()

    def close(self) -> None:
        """Erase the line (the report follows on stdout)."""
        if self.enabled and self._drawn:
            self._stream.write("\r" + " " * self._drawn + "\r")
            self._stream.flush()
            self._drawn = 0
        self.enabled = False

    def _draw(self) -> None:
        if self._stage:
            text = f"{self._label}: {self._stage}"
        else:
            done = (
                f"{self.count:,}/{self._total:,}" if self._total is not None else f"{self.count:,}"
            )
            text = f"{self._label}: {done} {self._unit}".rstrip()
        pad = " " * max(0, self._drawn - len(text))
        self._stream.write("\r" + text + pad)
        self._stream.flush()
        self._drawn = len(text)
        self._next_draw = time.monotonic() + self._every

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: stay quiet
        return False
