"""Load a policy directory into an immutable, validated `Bundle`.

A bundle is everything one decision needs: the parsed cedarpy handles (built
once here, never per request), what each policy is and where it lives, and a
revision that is the hash of every input byte. A reload builds a new bundle
and swaps one reference; nothing is ever mutated in place.

Directory layout: `*.cedar` policy files (found recursively, in path order,
skipping dot-directories such as a ConfigMap's `..data`), exactly one schema
(`*.cedarschema`, or `*.cedarschema.json` in Cedar's JSON schema format) and
optionally entity data (`*.entities.json` or `entities.json`), the
declaration of what requests may say about entities the store lacks
(`request-entities.yaml`, see `RequestEntities`) and the declaration of which
steps create and remove access (`lifecycle.yaml`, see sidecar/core/lifecycle.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import cedarpy
import yaml

from sidecar.core import lifecycle as lifecycle_yaml
from sidecar.core import safeyaml
from sidecar.core.bundlefiles import (
    LIFECYCLE_FILE,
    MANIFEST,
    REQUEST_ENTITIES_FILE,
    SCHEMA_SUFFIXES,
    check_manifest,
    is_entity_name,
    list_bundle,
    read_bytes,
    read_text,
    sha256,
    visible_files,
)
from sidecar.core.cedartext import Span, schema_entity_types, schema_member_of, split_policies
from sidecar.core.errors import BundleError
from sidecar.core.index import WHOLE_CONTEXT, PolicyIndex, context_reads
from sidecar.core.lifecycle import Lifecycle
from sidecar.core.limits import (
    DuplicateKey,
    LimitError,
    check_cedar_text,
    check_json_text,
    loads_unique,
)
from sidecar.core.model import EntityUid

__all__ = [
    "LIFECYCLE_FILE",
    "REQUEST_ENTITIES_FILE",
    "Bundle",
    "PolicyInfo",
    "Source",
    "build_bundle",
    "is_entity_file",
    "load_bundle",
    "visible_files",
]

log = logging.getLogger(__name__)

TTL_ANNOTATION = "max_credential_ttl"
# An access a permit grants must be removed within this long of its end (docs/evidence.md).
REVOKE_ANNOTATION = "revoke_within"


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    id: str
    effect: str  # "permit" | "forbid"
    file: str
    line: int
    annotations: Mapping[str, str]
    max_credential_ttl: timedelta | None
    text: str
    revoke_within: timedelta | None = None

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Source:
    """One input file: its name (relative path) and text."""

    name: str
    text: str


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


@dataclass(frozen=True, slots=True, eq=False)
class Bundle:
    revision: str
    policy_set: cedarpy.PolicySet
    schema: cedarpy.Schema
    entities: cedarpy.Entities
    policies: Mapping[str, PolicyInfo]
    entity_types: frozenset[str]
    actions: frozenset[EntityUid]
    # The store's entities as Cedar JSON, by uid: merged with request data.
    entity_json: Mapping[EntityUid, Mapping[str, Any]]
    sources: tuple[str, ...] = field(default=())
    # Policies by scope (sidecar/core/index.py); None evaluates the whole set.
    index: PolicyIndex | None = None
    # The `context` attributes the policies read (WHOLE_CONTEXT: all of them);
    # the decision cache keys on `context.now` only when it is read.
    context_reads: frozenset[str] = frozenset({WHOLE_CONTEXT})
    # What requests may say about entities the store lacks (request-entities.yaml).
    request_entities: RequestEntities = field(default_factory=RequestEntities)
    # Which steps create and remove access (lifecycle.yaml); None when not declared.
    lifecycle: Lifecycle | None = None

    @property
    def policy_count(self) -> int:
        return len(self.policies)


def load_bundle(directory: Path, *, extra_entities: Sequence[Source] = ()) -> Bundle:
    """Read and validate a policy directory; raise BundleError naming file and line.

    `extra_entities` adds entity data to the directory's (a test suite's fixtures).
    Which files are read, and how, is `sidecar.core.bundlefiles`. Any other failure
    while building (cedarpy or the standard library raising something
    unexpected) is a BundleError too: a directory either loads or is refused.
    """
    if not directory.is_dir():
        raise BundleError(f"policy directory {directory} does not exist or is not a directory")
    listing = list_bundle(directory)
    if listing.problems:
        raise listing.problems[0]
    files = listing.files
    names = {p: p.relative_to(directory).as_posix() for p in files}
    manifest = next((p for p in files if names[p] == MANIFEST), None)
    digests: dict[str, str] = {}

    def read(p: Path) -> Source:
        data = read_bytes(p, names[p])
        if manifest is not None:
            digests[names[p]] = sha256(data)
        try:
            return Source(names[p], data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise BundleError(
                f"cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})", file=names[p]
            ) from exc

    policies = [read(p) for p in files if p.suffix == ".cedar"]
    schemas = [read(p) for p in files if p.name.endswith(SCHEMA_SUFFIXES)]
    entities = [read(p) for p in files if is_entity_file(p)]
    declared = [read(p) for p in files if p.name == REQUEST_ENTITIES_FILE]
    lifecycles = [read(p) for p in files if p.name == LIFECYCLE_FILE]
    if manifest is not None:
        by_name = {n: p for p, n in names.items()}
        check_manifest(
            read_text(manifest, MANIFEST),
            digests,
            lambda n: read_bytes(by_name[n], n) if n in by_name else None,
        )
    if not policies:
        raise BundleError(f"no *.cedar policy files in {directory}")
    if len(schemas) != 1:
        found = ", ".join(s.name for s in schemas) or "none"
        raise BundleError(
            f"expected exactly one schema (*.cedarschema) in {directory}, found {found}"
        )
    if len(declared) > 1:
        found = ", ".join(s.name for s in declared)
        raise BundleError(f"expected at most one {REQUEST_ENTITIES_FILE}, found {found}")
    if len(lifecycles) > 1:
        found = ", ".join(s.name for s in lifecycles)
        raise BundleError(f"expected at most one {LIFECYCLE_FILE}, found {found}")
    try:
        bundle = build_bundle(
            policies,
            schemas[0],
            [*entities, *extra_entities],
            request_entities=declared[0] if declared else None,
            lifecycle=lifecycles[0] if lifecycles else None,
        )
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(f"cannot be loaded: {type(exc).__name__}: {exc}") from exc
    _log_read(directory, bundle)
    return bundle


def is_entity_file(path: Path) -> bool:
    """Entity data: `entities.json` or `<anything>.entities.json` (docs/policy-testing.md)."""
    return is_entity_name(path.name)


def _log_read(directory: Path, bundle: Bundle) -> None:
    """Which files made the bundle: `serve` logs it at start and on every reload."""
    log.info("policy directory %s: read %s", directory, ", ".join(bundle.sources))


def build_bundle(
    policies: Sequence[Source],
    schema: Source,
    entities: Sequence[Source] = (),
    *,
    validate: bool = True,
    request_entities: Source | None = None,
    lifecycle: Source | None = None,
) -> Bundle:
    """Build a bundle from sources already in memory (the loader's and tests' entry).

    `validate=False` skips strict validation against the schema; only the Cedar
    conformance corpus uses it, to evaluate policy sets that are meant not to
    validate. The server always validates.
    """
    schema_handle = _parse_schema(schema)
    rendered = str(schema_handle)
    infos: dict[str, PolicyInfo] = {}
    static: dict[str, Any] = {}
    for src in policies:
        for info, est in _parse_policy_file(src, schema_handle, len(static), validate):
            if info.id in infos:
                other = infos[info.id]
                raise BundleError(
                    f"duplicate policy id {info.id!r} (also at {other.source})",
                    file=info.file,
                    line=info.line,
                )
            infos[info.id] = info
            static[info.id] = est
    try:
        policy_set = cedarpy.PolicySet.from_json_str(
            json.dumps({"staticPolicies": static, "templates": {}, "templateLinks": []})
        )
    except ValueError as exc:  # Cedar's JSON reader stops at 128 levels
        levels = {pid: _json_levels(est) for pid, est in static.items()}
        deepest = max(levels, key=levels.__getitem__, default="")
        if not deepest or levels[deepest] < 120:  # pragma: no cover - not the depth, then
            raise BundleError(f"policy set rejected: {exc}") from exc
        info = infos[deepest]
        raise BundleError(
            f"policy set rejected: {exc}; policy {deepest} nests {levels[deepest]} levels "
            "deep in Cedar's JSON form, which Cedar reads up to 128: split long chains "
            "of operators",
            file=info.file,
            line=info.line,
        ) from exc

    entity_list: list[dict[str, Any]] = []
    for src in entities:
        data = _json_document(src)
        if not isinstance(data, list):
            raise BundleError("entity data must be a JSON array of entities", file=src.name)
        entity_list.extend(data)
    try:
        entities_handle = cedarpy.Entities.from_json_str(json.dumps(entity_list), schema_handle)
    except ValueError as exc:
        names = ", ".join(s.name for s in entities) or "(no entity files)"
        raise BundleError(f"entities do not conform to the schema: {exc}", file=names) from exc
    entity_json: dict[EntityUid, Mapping[str, Any]] = {}
    for ent in entity_list:
        uid = ent.get("uid", {}) if isinstance(ent, dict) else {}
        if isinstance(uid, dict) and "__entity" in uid:
            uid = uid["__entity"]
        entity_json[EntityUid(str(uid.get("type")), str(uid.get("id")))] = ent

    actions, groups = schema_actions(schema_handle)
    entity_types = schema_entity_types(rendered)
    declaration = RequestEntities()
    if request_entities is not None:
        declaration = _request_entities(request_entities, schema_handle, entity_types)
    steps = None
    if lifecycle is not None:
        steps = lifecycle_yaml.parse(lifecycle.text, actions, groups, file=lifecycle.name)
    optional = [src for src in (request_entities, lifecycle) if src is not None]
    inputs = (*policies, schema, *entities, *optional)
    digest = hashlib.sha256()
    for src in inputs:
        for part in (src.name, src.text):
            data = part.encode()
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
    return Bundle(
        revision=digest.hexdigest(),
        policy_set=policy_set,
        schema=schema_handle,
        entities=entities_handle,
        policies=MappingProxyType(infos),
        entity_types=entity_types,
        actions=actions,
        entity_json=MappingProxyType(entity_json),
        sources=tuple(s.name for s in inputs),
        index=PolicyIndex(static, json.loads(str(entities_handle)), policy_set),
        context_reads=context_reads(static.values()),
        request_entities=declaration,
        lifecycle=steps,
    )


def _request_entities(
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


def _json_document(src: Source) -> Any:
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


def _json_levels(value: Any) -> int:
    """How deep a JSON value nests (iterative: the value may be deep)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(node, dict):
            stack.extend((v, level + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, level + 1) for v in node)
    return deepest


def _parse_schema(src: Source) -> cedarpy.Schema:
    try:
        if src.name.endswith(".json"):
            _json_document(src)
        else:
            check_cedar_text(src.text, schema=True)
    except LimitError as exc:
        raise BundleError(f"column {exc.column}: {exc}", file=src.name, line=exc.line) from exc
    try:
        if src.name.endswith(".json"):
            return cedarpy.Schema.from_json_str(src.text)
        return cedarpy.Schema.from_str(src.text)
    except ValueError as exc:
        raise BundleError(f"invalid schema: {exc}", file=src.name) from exc


def schema_actions(schema: cedarpy.Schema) -> tuple[frozenset[EntityUid], frozenset[EntityUid]]:
    """The schema's actions, and which of them are groups (another action is in them)."""
    declared = json.loads(str(cedarpy.Entities.from_json_str("[]", schema)))
    actions = frozenset(EntityUid(e["uid"]["type"], e["uid"]["id"]) for e in declared)
    groups = frozenset(
        EntityUid(p["type"], p["id"]) for e in declared for p in e.get("parents") or ()
    )
    return actions, groups


_POLICY_REF = re.compile(r"policy(\d+)")


def _parse_policy_file(
    src: Source, schema: cedarpy.Schema, start: int, validate: bool
) -> list[tuple[PolicyInfo, Any]]:
    """Parse and strictly validate one file; whatever fails names the file."""
    try:
        return _parse_policies(src, schema, start, validate)
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(f"cannot be loaded: {type(exc).__name__}: {exc}", file=src.name) from exc


def _parse_policies(
    src: Source, schema: cedarpy.Schema, start: int, validate: bool
) -> list[tuple[PolicyInfo, Any]]:
    """Parse and strictly validate one file; ids are `@id` or positional `policyN`."""
    try:
        check_cedar_text(src.text)
    except LimitError as exc:
        raise BundleError(f"column {exc.column}: {exc}", file=src.name, line=exc.line) from exc
    spans = split_policies(src.text)
    try:
        est = json.loads(cedarpy.policies_to_json_str(src.text))
    except ValueError as exc:
        span = _first_bad_span(spans)
        raise BundleError(
            f"syntax error: {exc}" + (f" in: {_snippet(span.text)}" if span else ""),
            file=src.name,
            line=span.line if span else 0,
        ) from exc
    if est.get("templates"):
        raise BundleError(
            "policy templates are not supported; write static policies", file=src.name
        )
    local = sorted(est["staticPolicies"].items(), key=lambda kv: _policy_index(kv[0]))
    if len(local) != len(spans):  # pragma: no cover - the lexer and Cedar disagree
        spans = [Span("", 0, 0)] * len(local)
    if validate:
        _validate(src, schema, spans)
    out: list[tuple[PolicyInfo, Any]] = []
    for i, ((_, body), span) in enumerate(zip(local, spans, strict=True)):
        annotations = {str(k): str(v) for k, v in (body.get("annotations") or {}).items()}
        pid = annotations.get("id") or f"policy{start + i}"
        effect = str(body["effect"])
        revoke = _duration_annotation(src, span, annotations, REVOKE_ANNOTATION)
        if revoke is not None and effect != "permit":
            line, column = _annotation_at(span, REVOKE_ANNOTATION)
            raise BundleError(
                f"@{REVOKE_ANNOTATION} on a forbid: obligations come only from the permits "
                "that allow a step; put it on the permit",
                file=src.name,
                line=line,
                column=column,
            )
        info = PolicyInfo(
            id=pid,
            effect=effect,
            file=src.name,
            line=span.line,
            annotations=MappingProxyType(annotations),
            max_credential_ttl=_duration_annotation(src, span, annotations, TTL_ANNOTATION),
            text=span.text,
            revoke_within=revoke,
        )
        out.append((info, body))
    return out


def _duration_annotation(
    src: Source, span: Span, annotations: Mapping[str, str], name: str
) -> timedelta | None:
    """An obligation's ISO-8601 duration (`@max_credential_ttl("PT15M")`); a value that
    is not one is refused at its line and column."""
    text = annotations.get(name)
    if text is None:
        return None
    try:
        return parse_iso_duration(text)
    except ValueError as exc:
        line, column = _annotation_at(span, name)
        raise BundleError(
            f"@{name}({text!r}): {exc}", file=src.name, line=line, column=column
        ) from exc


def _annotation_at(span: Span, name: str) -> tuple[int, int]:
    """Line and column of `@name(`'s value in the file (the policy's start if not found)."""
    m = re.search(rf"@\s*{name}\s*\(\s*", span.text)
    if m is None:  # pragma: no cover - Cedar parsed the annotation from this text
        return span.line, span.column
    before = span.text[: m.end()]
    newlines = before.count("\n")
    if not newlines:
        return span.line, span.column + m.end()
    return span.line + newlines, m.end() - before.rfind("\n")


def _validate(src: Source, schema: cedarpy.Schema, spans: list[Span]) -> None:
    result = cedarpy.validate_policies(src.text, schema)
    if result.validation_passed:
        return
    first = result.errors[0]
    m = _POLICY_REF.fullmatch(first.policy_id)
    span = spans[int(m.group(1))] if m and int(m.group(1)) < len(spans) else None
    more = len(result.errors) - 1
    raise BundleError(
        f"validation error: {first.error}"
        + (f" in: {_snippet(span.text)}" if span else "")
        + (f" ({more} more validation error(s) in this file)" if more else ""),
        file=src.name,
        line=span.line if span else 0,
    )


def _first_bad_span(spans: list[Span]) -> Span | None:
    for span in spans:
        try:
            cedarpy.policies_to_json_str(span.text)
        except ValueError:
            return span
    return spans[-1] if spans else None


def _policy_index(pid: str) -> int:
    m = _POLICY_REF.fullmatch(pid)
    return int(m.group(1)) if m else 0


def _snippet(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


_DURATION = re.compile(
    r"P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


def parse_iso_duration(text: str) -> timedelta:
    """Parse an ISO-8601 duration of days, hours, minutes, seconds (`PT15M`, `P1DT2H`)."""
    m = _DURATION.fullmatch(text)
    if not m or text in ("P", "PT") or text.endswith("T"):
        raise ValueError("expected an ISO-8601 duration such as PT15M or PT1H")
    return timedelta(
        days=int(m["d"] or 0),
        hours=int(m["h"] or 0),
        minutes=int(m["m"] or 0),
        seconds=float(m["s"] or 0),
    )
