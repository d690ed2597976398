"""The chain's record format, pinned to what docs/audit.md tells an outside verifier.

The trail's own verifier uses the same `Hasher`, so a change to how a hash
is computed would still verify; these tests compute it independently, from
the documented formula, so such a change breaks them instead of old trails.
"""

from __future__ import annotations

import hashlib
import hmac

import orjson
from hypothesis import given
from hypothesis import strategies as st

from sidecar.audit.chain import (
    DOMAIN,
    GENESIS,
    Hasher,
    canonical,
    parse_line,
    record_line,
    record_lines,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
bodies = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k not in ("seq", "prev", "hash")), json_values, max_size=6
)
hashes = st.text("0123456789abcdef", min_size=64, max_size=64)
keys = st.none() | st.binary(min_size=16, max_size=40)


def documented_hash(key: bytes | None, seq: int, prev: str, body: bytes) -> str:
    """docs/audit.md: H(b"stepguard-audit-v1\\n" + b"<seq>\\n" + b"<prev>\\n" + canonical(body))."""
    data = b"stepguard-audit-v1\n" + str(seq).encode() + b"\n" + prev.encode() + b"\n" + body
    if key:
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


@given(key=keys, seq=st.integers(0, 2**63 - 1), prev=hashes, body=bodies)
def test_a_record_line_carries_the_documented_hash_and_parses_back(
    key: bytes | None, seq: int, prev: str, body: dict[str, object]
) -> None:
    encoded = canonical(body)
    line, digest = record_line(Hasher(key), seq, prev, encoded)
    assert digest == documented_hash(key, seq, prev, encoded)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = parse_line(line[:-1])  # raises unless the line is exactly canonical
    assert (record.seq, record.prev, record.hash, record.body) == (seq, prev, digest, body)
    # The line is the chain fields followed by the body's own fields, in that order.
    assert orjson.loads(line) == {"seq": seq, "prev": prev, "hash": digest, **body}


ZEROS = "0" * 64


def test_known_answers() -> None:
    """Fixed vectors (from the release that introduced the chain): a record's line
    and hash never change between versions, keyed or not, empty body or not."""
    assert DOMAIN == b"stepguard-audit-v1\n" and GENESIS == ZEROS
    body = canonical({"kind": "decision", "id": "x"})
    plain = "8d6c545429e505b96e7548c998f82841006126dfd097a7d705b42544f21d75e3"
    assert record_line(Hasher(), 7, GENESIS, body) == (
        b'{"seq":7,"prev":"%s","hash":"%s","id":"x","kind":"decision"}\n'
        % (ZEROS.encode(), plain.encode()),
        plain,
    )
    keyed = "8c6bddcee80a4aacb52f44b88b4ecaa77c1bf9327e982e2053ce5dfdb8b47b87"
    assert record_line(Hasher(b"k" * 16), 7, GENESIS, body)[1] == keyed
    empty = "41991e4f55836fc4596f56f535ea45224aab0102284739dba78337dab3460db3"
    assert record_line(Hasher(), 0, GENESIS, b"{}") == (
        b'{"seq":0,"prev":"%s","hash":"%s"}\n' % (ZEROS.encode(), empty.encode()),
        empty,
    )


@given(
    key=keys,
    seq=st.integers(0, 2**62),
    prev=hashes,
    batch=st.lists(bodies.map(canonical), max_size=5),
)
def test_a_batch_of_lines_is_each_record_line_in_turn(
    key: bytes | None, seq: int, prev: str, batch: list[bytes]
) -> None:
    """`record_lines` (a commit's loop) is `record_line` for each body, chained: the
    same bytes and the same last hash, empty bodies (`{}`) and an empty batch included."""
    hasher = Hasher(key)
    want, last = [], prev
    for i, body in enumerate(batch):
        line, last = record_line(hasher, seq + i, last, body)
        want.append(line)
    assert record_lines(hasher, seq, prev, batch) == (b"".join(want), last)
