"""What the Hypothesis fuzz tests of the real server share (tests/serving/test_fuzz_*.py,
tests/serving/authzen/test_authzen_fuzz.py): odd text, JSON of any shape, a raw call,
and the check that a refusal starts with the path of the field it refuses."""

from __future__ import annotations

import re
from typing import Any

import grpc
from hypothesis import strategies as st

# A field path as refusals write it (`validate.member`): plain names, `[n]`, and odd
# record keys quoted as `['...']`; then `: ` and why.
_QUOTED = r"""\[(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\]"""
_PATH = re.compile(
    rf"(?:[A-Za-z_]\w*|{_QUOTED})(?:\.[A-Za-z_]\w*|\[\d+\]|{_QUOTED})*: \S", re.ASCII
)


def assert_named(details: str, prefix: str = "") -> None:
    """The refusal starts with the path of the field it refuses (under `prefix`), then
    `: ` and why, and is printable (it is logged and shown)."""
    assert _PATH.match(details), details
    assert details.startswith(prefix), details
    assert details.isprintable(), details


def json_values(texts: st.SearchStrategy[str], leaves: int = 8) -> st.SearchStrategy[Any]:
    """Any JSON value, its strings drawn from `texts`."""
    return st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | texts,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
        max_leaves=leaves,
    )


def mangle(data: bytes) -> bytes:
    """A message with two bytes pushed into its middle."""
    return data[: len(data) // 2] + b"\x00\x01" + data[len(data) // 2 :]


def unary(channel: grpc.Channel, method: str, payload: bytes, answer: Any) -> Any:
    """The raw bytes to `/stepguard.v1.Authorizer/METHOD`: its answer (decoded as
    `answer`), or the RpcError it ended with."""
    call = channel.unary_unary(
        f"/stepguard.v1.Authorizer/{method}",
        request_serializer=None,
        response_deserializer=answer.FromString,
    )
    try:
        return call(payload, timeout=30)
    except grpc.RpcError as exc:
        return exc
