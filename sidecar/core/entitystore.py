"""The entity store, prepared once at bundle load: what every request is decided with.

Entity files are read (nesting bounded, duplicate keys refused), parsed once into
the cedarpy handle every decision reuses, and kept as Cedar JSON by uid, which
validation reads to check what a request says about an entity against the store.
Nothing here runs per request: a request's own entities are added to the parsed
handle (sidecar/core/engine.py), never by serialising the store again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import cedarpy

from sidecar.core.bundlefiles import Source
from sidecar.core.errors import BundleError
from sidecar.core.limits import DuplicateKey, LimitError, check_json_text, loads_unique
from sidecar.core.model import EntityUid


@dataclass(frozen=True, slots=True)
class EntityStore:
    handle: cedarpy.Entities
    # The store's entities as Cedar JSON, by uid (validation checks requests against it).
    by_uid: Mapping[EntityUid, Mapping[str, Any]]


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
    for ent in entity_list:
        uid = ent.get("uid", {}) if isinstance(ent, dict) else {}
        if isinstance(uid, dict) and "__entity" in uid:
            uid = uid["__entity"]
        by_uid[EntityUid(str(uid.get("type")), str(uid.get("id")))] = ent
    return EntityStore(handle, MappingProxyType(by_uid))


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
