""" "Did you mean ...": the closest known names to a mistyped one.

Used on error paths only (an unknown action, entity type, entity id or
context key), never per decision. A name longer than `_MAX_LEN` gets no
suggestion, so a hostile request cannot make the comparison expensive.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

_MAX_LEN = 200
_MAX_CANDIDATES = 5000


def closest(word: str, candidates: Iterable[str], *, limit: int = 3) -> list[str]:
    """Up to `limit` candidates that look like `word`, best first.

    Only those nearly as close as the best: among long ids that share a prefix
    (SPIFFE ids) everything is somewhat alike, and one good guess beats three.
    """
    if len(word) > _MAX_LEN:
        return []
    pool = sorted({c for c in candidates if len(c) <= _MAX_LEN})[:_MAX_CANDIDATES]
    found = difflib.get_close_matches(word, pool, n=limit, cutoff=0.6)
    scores = [difflib.SequenceMatcher(None, word, c).ratio() for c in found]
    return [c for c, score in zip(found, scores, strict=True) if score >= scores[0] - 0.1]


def did_you_mean(
    word: str, candidates: Iterable[str], *, show: Mapping[str, str] | None = None
) -> str:
    """'; did you mean X?' (or 'X or Y'), or '' when nothing is close.

    `show` maps a candidate to how to print it (an id to its `Type::"id"`).
    """
    found = closest(word, candidates)
    if not found:
        return ""
    shown = [show.get(c, c) if show else c for c in found]
    return "; did you mean " + " or ".join(shown) + "?"
