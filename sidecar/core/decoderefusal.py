"""The refusals protobuf's decoder makes first, named by field path like any other.

upb refuses a message nested deeper than its own limit (about 100 messages, so
about 32 attribute levels) before stepguard sees it, with a message that names no
field. `decode_refusal` walks the raw bytes with the message descriptors to find
the field that nests too deep, so that refusal names its path as validation
would (core/validate.py). Apart from validation: it runs only on bytes the
decoder refused, before there is a message to validate (serving/servicer.py).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.errors import InvalidRequest
from sidecar.core.validate import Limits, depth_message, member


class _Malformed(Exception):
    """The bytes are not wire format at all: the decoder's own refusal stands."""


def decode_refusal(
    raw: bytes, descriptor: Any, limits: Limits, error: Exception
) -> InvalidRequest | None:
    """The field path that made protobuf refuse `raw`, when it refused it for nesting.

    None when the decoder refused the bytes for another reason (the caller keeps
    its own message). Only called for bytes the decoder refused, never per
    decision; subtrees too small to nest that deep are skipped, so even a
    batch at the size limit is walked quickly.
    """
    text = str(error).lower()
    if "depth" not in text and "recursion" not in text:
        return None
    limit = limits.max_attribute_depth
    walker = _Walker(min(limit, _DECODER_LEVELS))
    try:
        found = walker.walk(bytes(raw), descriptor, "", 0)
    except _Malformed:
        return None
    except _OverBudget:  # a hostile message of many tiny fields: name no deeper than this
        found = ("request", 0)
    if found is None:
        return None
    path, level = found
    if level > limit:
        return InvalidRequest(path, depth_message(limit))
    return InvalidRequest(
        path,
        f"nests more than {_DECODER_LEVELS} levels deep, deeper than the protobuf decoder "
        f"accepts (the attribute depth limit is {limit})",
    )


# upb refuses messages nested about 100 deep: about 32 attribute levels.
_DECODER_LEVELS = 30
_VALUE = pb.Value.DESCRIPTOR
_VALUE_MAP = pb.ValueMap.DESCRIPTOR
_VALUE_LIST = pb.ValueList.DESCRIPTOR


class _OverBudget(Exception):
    """The walk visited `_FIELD_BUDGET` fields without finding the deep one."""


# Bounds the walk (about 0.2 s) however a refused message is built.
_FIELD_BUDGET = 200_000


class _Walker:
    """Depth-first over the message fields of raw bytes, counting the Values on the path.

    `walk` gives the path (as validation names it: `context.attributes['a'].b[0]`)
    and level of the first Value more than `threshold` Values deep, else None.
    """

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.budget = _FIELD_BUDGET

    def walk(self, data: bytes, desc: Descriptor, path: str, level: int) -> tuple[str, int] | None:
        if desc is _VALUE:
            level += 1
            if level > self.threshold:
                return path, level
        counts: dict[int, int] = {}
        pos, end = 0, len(data)
        while pos < end:
            self.budget -= 1
            if self.budget < 0:
                raise _OverBudget
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                size, pos = _varint(data, pos)
                body, pos = data[pos : pos + size], pos + size
                if pos > end:
                    raise _Malformed
                fd = desc.fields_by_number.get(number)
                if fd is None or fd.message_type is None:
                    continue
                index = counts.get(number, 0)
                counts[number] = index + 1
                # Each Value level takes at least two bytes: a small subtree cannot be deep.
                if level + size // 2 + 1 <= self.threshold:
                    continue
                found = self.field(body, desc, fd, path, index=index, level=level)
                if found is not None:
                    return found
            else:
                raise _Malformed
            if pos > end:
                raise _Malformed
        return None

    def field(
        self,
        body: bytes,
        desc: Descriptor,
        fd: FieldDescriptor,
        path: str,
        *,
        index: int,
        level: int,
    ) -> tuple[str, int] | None:
        child = fd.message_type
        if child is None:  # pragma: no cover - the caller passes message fields only
            return None
        if child.GetOptions().map_entry:
            key, value = _map_entry(body)
            target = child.fields_by_name["value"].message_type
            if value is None or target is None:
                return None
            segment = (
                member(path, key)[len(path) :]
                if desc is _VALUE_MAP
                else f"{_dot(path)}{fd.name}[{key!r}]"
            )
            return self.walk(value, target, path + segment, level)
        if desc is _VALUE and fd.name in ("record_value", "set_value"):
            segment = ""  # validation names the values inside, not these wrappers
        elif desc is _VALUE_LIST:
            segment = f"[{index}]"
        elif fd.is_repeated:
            segment = f"{_dot(path)}{fd.name}[{index}]"
        else:
            segment = f"{_dot(path)}{fd.name}"
        return self.walk(body, child, path + segment, level)


def _dot(path: str) -> str:
    return "." if path else ""


def _map_entry(body: bytes) -> tuple[str, bytes | None]:
    """A map entry's string key and its value's bytes (None when it has none)."""
    key, value = "", None
    pos = 0
    while pos < len(body):
        tag, pos = _varint(body, pos)
        if tag & 7 != 2:
            raise _Malformed
        size, pos = _varint(body, pos)
        chunk, pos = body[pos : pos + size], pos + size
        if tag >> 3 == 1:
            key = chunk.decode("utf-8", "replace")
        elif tag >> 3 == 2:
            value = chunk
    if pos > len(body):
        raise _Malformed
    return key, value


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
