"""Load a policy directory into an immutable, validated `Bundle`.

A bundle is everything one decision needs: the parsed cedarpy handles (built
once here, never per request), what each policy is and where it lives, and a
revision that is the hash of every input byte. A reload builds a new bundle
and swaps one reference; nothing is ever mutated in place.

Directory layout: `*.cedar` policy files (found recursively, in path order,
skipping dot-directories such as a ConfigMap's `..data`), exactly one schema
(`*.cedarschema`, or `*.cedarschema.json` in Cedar's JSON schema format) and
optionally entity data (`*.entities.json` or `entities.json`).
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

from sidecar.cedartext import Span, schema_entity_types, split_policies
from sidecar.errors import BundleError
from sidecar.index import WHOLE_CONTEXT, PolicyIndex, context_reads
from sidecar.model import EntityUid

log = logging.getLogger(__name__)

TTL_ANNOTATION = "max_credential_ttl"


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    id: str
    effect: str  # "permit" | "forbid"
    file: str
    line: int
    annotations: Mapping[str, str]
    max_credential_ttl: timedelta | None
    text: str

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Source:
    """One input file: its name (relative path) and text."""

    name: str
    text: str


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
    # Policies by scope (sidecar/index.py); None evaluates the whole set.
    index: PolicyIndex | None = None
    # The `context` attributes the policies read (WHOLE_CONTEXT: all of them);
    # the decision cache keys on `context.now` only when it is read.
    context_reads: frozenset[str] = frozenset({WHOLE_CONTEXT})

    @property
    def policy_count(self) -> int:
        return len(self.policies)


def load_bundle(directory: Path, *, extra_entities: Sequence[Source] = ()) -> Bundle:
    """Read and validate a policy directory; raise BundleError naming file and line.

    `extra_entities` adds entity data to the directory's (a test suite's fixtures).
    """
    if not directory.is_dir():
        raise BundleError(f"policy directory {directory} does not exist or is not a directory")
    files = visible_files(directory)

    def read(p: Path) -> Source:
        try:
            return Source(str(p.relative_to(directory)), p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise BundleError(f"cannot read: {exc}", file=str(p)) from exc

    policies = [read(p) for p in files if p.suffix == ".cedar"]
    schemas = [read(p) for p in files if p.name.endswith((".cedarschema", ".cedarschema.json"))]
    entities = [read(p) for p in files if is_entity_file(p)]
    if not policies:
        raise BundleError(f"no *.cedar policy files in {directory}")
    if len(schemas) != 1:
        found = ", ".join(s.name for s in schemas) or "none"
        raise BundleError(
            f"expected exactly one schema (*.cedarschema) in {directory}, found {found}"
        )
    bundle = build_bundle(policies, schemas[0], [*entities, *extra_entities])
    _log_read(directory, bundle)
    return bundle


def is_entity_file(path: Path) -> bool:
    """Entity data: `entities.json` or `<anything>.entities.json` (docs/policy-testing.md)."""
    return path.name == "entities.json" or path.name.endswith(".entities.json")


def _log_read(directory: Path, bundle: Bundle) -> None:
    """Which files made the bundle: `serve` logs it at start and on every reload."""
    log.info("policy directory %s: read %s", directory, ", ".join(bundle.sources))


def visible_files(directory: Path) -> list[Path]:
    """The files the loader considers, in path order: dot-directories (`..data`) are skipped.

    The watcher, `validate`, `fmt` and `test` use the same rule, so they see what loads.
    """
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


def build_bundle(
    policies: Sequence[Source],
    schema: Source,
    entities: Sequence[Source] = (),
    *,
    validate: bool = True,
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
    except ValueError as exc:  # pragma: no cover - every policy parsed on its own above
        raise BundleError(f"policy set rejected: {exc}") from exc

    entity_list: list[dict[str, Any]] = []
    for src in entities:
        try:
            data = json.loads(src.text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"invalid JSON: {exc.msg}", file=src.name, line=exc.lineno) from exc
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

    actions = frozenset(_action_uids(schema_handle))
    digest = hashlib.sha256()
    for src in (*policies, schema, *entities):
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
        entity_types=schema_entity_types(rendered),
        actions=actions,
        entity_json=MappingProxyType(entity_json),
        sources=tuple(s.name for s in (*policies, schema, *entities)),
        index=PolicyIndex(static, json.loads(str(entities_handle)), policy_set),
        context_reads=context_reads(static.values()),
    )


def _parse_schema(src: Source) -> cedarpy.Schema:
    try:
        if src.name.endswith(".json"):
            return cedarpy.Schema.from_json_str(src.text)
        return cedarpy.Schema.from_str(src.text)
    except ValueError as exc:
        raise BundleError(f"invalid schema: {exc}", file=src.name) from exc


def _action_uids(schema: cedarpy.Schema) -> list[EntityUid]:
    declared = json.loads(str(cedarpy.Entities.from_json_str("[]", schema)))
    return [EntityUid(e["uid"]["type"], e["uid"]["id"]) for e in declared]


_POLICY_REF = re.compile(r"policy(\d+)")


def _parse_policy_file(
    src: Source, schema: cedarpy.Schema, start: int, validate: bool
) -> list[tuple[PolicyInfo, Any]]:
    """Parse and strictly validate one file; ids are `@id` or positional `policyN`."""
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
        ttl_text = annotations.get(TTL_ANNOTATION)
        ttl = None
        if ttl_text is not None:
            try:
                ttl = parse_iso_duration(ttl_text)
            except ValueError as exc:
                raise BundleError(
                    f"@{TTL_ANNOTATION}({ttl_text!r}): {exc}", file=src.name, line=span.line
                ) from exc
        info = PolicyInfo(
            id=pid,
            effect=str(body["effect"]),
            file=src.name,
            line=span.line,
            annotations=MappingProxyType(annotations),
            max_credential_ttl=ttl,
            text=span.text,
        )
        out.append((info, body))
    return out


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
