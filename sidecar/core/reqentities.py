"""`request-entities.yaml`: what a request may say about entities the store lacks.

Parsed once at bundle load and checked against the schema (every type, attribute
and parent type named must exist there); validation (sidecar/core/validate.py)
then admits supplied entity data by it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import cedarpy
import yaml

from sidecar.core import safeyaml
from sidecar.core.bundlefiles import Source
from sidecar.core.cedartext import schema_member_of
from sidecar.core.errors import BundleError


@dataclass(frozen=True, slots=True)
class Describable:
    """What a request may say about an entity of one type that the store lacks."""

    attributes: frozenset[str] = frozenset()
    parents: frozenset[str] = frozenset()  # entity types


@dataclass(frozen=True, slots=True)
class RequestEntities:
    """The bundle's `request-entities.yaml`: which entity types a request may name
    although the store lacks the entity, and which attributes and parent types it may
    give them. A type not listed may not be described at all: the store is the only
    source of who a principal is and what a target is (issue 16: a workload declaring
    its own group gained its rights). Empty (no file) admits nothing.
    """

    types: Mapping[str, Describable] = field(default_factory=lambda: MappingProxyType({}))

    def admits(self, entity_type: str) -> Describable | None:
        return self.types.get(entity_type)


def parse_request_entities(
    src: Source, schema: cedarpy.Schema, entity_types: frozenset[str]
) -> RequestEntities:
    """Parse `request-entities.yaml` and check every name in it against the schema."""
    try:
        data = safeyaml.loads(src.text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise BundleError(f"invalid YAML: {exc}", file=src.name, line=line) from exc
    data = {} if data is None else data
    if not isinstance(data, dict) or set(data) - {"entity_types"}:
        raise BundleError(
            "expected a mapping with one key, entity_types (entity type -> "
            "{attributes: [...], parents: [...]})",
            file=src.name,
        )
    declared = data.get("entity_types") or {}
    if not isinstance(declared, dict):
        raise BundleError("entity_types must map entity types to declarations", file=src.name)
    member_of = schema_member_of(str(schema))
    types: dict[str, Describable] = {}
    for type_, given in declared.items():
        where = f"entity_types.{type_}"
        if type_ not in entity_types:
            raise BundleError(f"{where}: not an entity type of the schema", file=src.name)
        spec = {} if given is None else given
        if not isinstance(spec, dict) or set(spec) - {"attributes", "parents"}:
            raise BundleError(
                f"{where}: expected a mapping with attributes and/or parents", file=src.name
            )
        attributes = _names(spec.get("attributes"), f"{where}.attributes", src)
        parents = _names(spec.get("parents"), f"{where}.parents", src)
        for attr in sorted(attributes):
            if not _declares_attribute(schema, type_, attr):
                raise BundleError(
                    f"{where}.attributes: the schema gives {type_} no attribute {attr!r}",
                    file=src.name,
                )
        for parent in sorted(parents):
            if parent not in member_of.get(type_, frozenset()):
                raise BundleError(
                    f"{where}.parents: the schema does not let a {type_} be in a {parent}",
                    file=src.name,
                )
        types[str(type_)] = Describable(attributes, parents)
    return RequestEntities(MappingProxyType(types))


def _names(value: Any, where: str, src: Source) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BundleError(f"{where}: expected a list of names", file=src.name)
    return frozenset(value)


def _declares_attribute(schema: cedarpy.Schema, entity_type: str, attr: str) -> bool:
    """Whether the schema declares `attr` (required or optional) for `entity_type`.

    cedarpy has no schema introspection; Cedar's validator answers: reading an
    undeclared attribute is "not found", reading an optional one only unsafe.
    """
    probe = f'{entity_type}::"probe"'
    quoted = json.dumps(attr)
    read = f"{probe}[{quoted}]"
    text = f"permit (principal, action, resource) when {{ {read} == {read} }};"
    result = cedarpy.validate_policies(text, schema)
    return not any("not found" in str(e.error) for e in result.errors)
