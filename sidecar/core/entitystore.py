"""The entity store, prepared once at bundle load: what every request is decided with.

Entity files are read (nesting bounded, duplicate keys refused), parsed once into
the cedarpy handle every decision reuses, and kept as Cedar JSON by uid, which
validation reads to check what a request says about an entity against the store.
Nothing here runs per request. A request that brings entities of its own needs a
set with them added: cedarpy's handles are immutable, and adding to the parsed store
clones it (time in proportion to the whole store, 0.3 ms at 1,000 entities). So each
stored entity is also kept as a JSON slice with the entities it names (parents,
attribute and tag values), and the engine builds such a request's set from the
slices it can reach (`reachable`), never by serialising the store again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import cedarpy
import orjson

from sidecar.core.bundlefiles import Source
from sidecar.core.errors import BundleError
from sidecar.core.limits import DuplicateKey, LimitError, check_json_text, loads_unique
from sidecar.core.model import EntityUid


@dataclass(frozen=True, slots=True)
class EntityStore:
    handle: cedarpy.Entities
    # The store's entities as Cedar JSON, by uid (validation checks requests against it).
    by_uid: Mapping[EntityUid, Mapping[str, Any]]
    # Each entity's JSON text, and the entities it names (parents, attributes, tags).
    slices: Mapping[EntityUid, str]
    refs: Mapping[EntityUid, tuple[EntityUid, ...]]


def build_store(sources: Sequence[Source], schema: cedarpy.Schema) -> EntityStore:
    """Parse the entity files into one handle, validated against the schema."""
    entity_list: list[dict[str, Any]] = []
    for src in sources:
        data = json_document(src)
        if not isinstance(data, list):
            raise BundleError("entity data must be a JSON array of entities", file=src.name)
        entity_list.extend(data)
    try:
        handle = cedarpy.Entities.from_json_str(json.dumps(entity_list), schema)
    except ValueError as exc:
        names = ", ".join(s.name for s in sources) or "(no entity files)"
        raise BundleError(f"entities do not conform to the schema: {exc}", file=names) from exc
    by_uid: dict[EntityUid, Mapping[str, Any]] = {}
    slices: dict[EntityUid, str] = {}
    refs: dict[EntityUid, tuple[EntityUid, ...]] = {}
    for ent in entity_list:
        uid = ent.get("uid", {}) if isinstance(ent, dict) else {}
        if isinstance(uid, dict) and "__entity" in uid:
            uid = uid["__entity"]
        key = EntityUid(str(uid.get("type")), str(uid.get("id")))
        by_uid[key] = ent
        slices[key] = json.dumps(ent)
        named: set[EntityUid] = set()
        for part in ("parents", "attrs", "tags"):
            named_in(ent.get(part), named)
        refs[key] = tuple(named)
    return EntityStore(
        handle, MappingProxyType(by_uid), MappingProxyType(slices), MappingProxyType(refs)
    )


def named_in(value: Any, out: set[EntityUid]) -> None:
    """Add to `out` every entity `value` can name, in any of Cedar's JSON forms.

    Generous on purpose: `{"__entity": {...}}`, and any object with a string
    `type` and `id` (the form a schema-typed value or a parent takes). Naming
    too many only makes a slice larger; naming too few would change answers.
    """
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            kind, ident = node.get("type"), node.get("id")
            if isinstance(kind, str) and isinstance(ident, str):
                out.add(EntityUid(kind, ident))
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)


def reachable(
    roots: set[EntityUid], refs: Mapping[EntityUid, tuple[EntityUid, ...]]
) -> set[EntityUid]:
    """`roots` and every entity they name, transitively (through `refs`)."""
    seen = set(roots)
    todo = list(roots)
    while todo:
        for uid in refs.get(todo.pop(), ()):
            if uid not in seen:
                seen.add(uid)
                todo.append(uid)
    return seen


def slice_text(slices: Mapping[EntityUid, str], uids: set[EntityUid], extra: str) -> str:
    """A Cedar entities document: the stored slices of `uids` plus `extra` (a JSON
    array's items, or "")."""
    parts = [text for uid in uids if (text := slices.get(uid)) is not None]
    if extra:
        parts.append(extra)
    return "[" + ",".join(parts) + "]"


def encode(value: Any) -> str:
    """JSON text for cedarpy: orjson, the standard library for what orjson refuses."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer beyond 64 bits: cedarpy refuses it either way
        return json.dumps(value)


def json_document(src: Source) -> Any:
    """Parse JSON input: nesting bounded, duplicate keys refused, errors with line:column."""
    try:
        check_json_text(src.text)
        return loads_unique(src.text)
    except LimitError as exc:
        raise BundleError(f"column {exc.column}: {exc}", file=src.name, line=exc.line) from exc
    except DuplicateKey as exc:
        raise BundleError(
            f"column {exc.column}: duplicate key {exc.key!r} in one object "
            "(JSON parsers disagree on which value wins, so it is refused)",
            file=src.name,
            line=exc.line,
        ) from exc
    except json.JSONDecodeError as exc:
        raise BundleError(f"invalid JSON: {exc.msg}", file=src.name, line=exc.lineno) from exc
    except RecursionError as exc:  # pragma: no cover - check_json_text bounds the depth
        raise BundleError("JSON nests too deeply", file=src.name) from exc
