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

The parts live beside it, one responsibility each: which files are read and
how (bundlefiles.py), policy files with their annotations and obligations
(policyparse.py), the entity store (entitystore.py), `request-entities.yaml`
(reqentities.py) and `lifecycle.yaml` (lifecycle.py). This module puts them
together and prepares, once, what every decision looks up (the determining
policies' references and obligations).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import cedarpy

from sidecar.core import lifecycle as lifecycle_yaml
from sidecar.core.bundlefiles import (
    LIFECYCLE_FILE,
    MANIFEST,
    REQUEST_ENTITIES_FILE,
    SCHEMA_SUFFIXES,
    Source,
    check_manifest,
    is_entity_name,
    list_bundle,
    read_bytes,
    read_text,
    sha256,
    visible_files,
)
from sidecar.core.cedartext import schema_entity_types
from sidecar.core.entitystore import (
    build_store,
    json_document,
    named_in,
    reachable,
    slice_text,
)
from sidecar.core.errors import BundleError
from sidecar.core.index import WHOLE_CONTEXT, PolicyIndex, context_reads
from sidecar.core.lifecycle import Lifecycle
from sidecar.core.limits import LimitError, check_cedar_text
from sidecar.core.model import EntityUid, Obligations, PolicyRef
from sidecar.core.policyparse import PolicyInfo, parse_iso_duration, parse_policy_file
from sidecar.core.reqentities import RequestEntities, parse_request_entities

__all__ = [
    "LIFECYCLE_FILE",
    "REQUEST_ENTITIES_FILE",
    "Bundle",
    "PolicyInfo",
    "RequestEntities",
    "Source",
    "build_bundle",
    "is_entity_file",
    "load_bundle",
    "parse_iso_duration",
    "visible_files",
]

log = logging.getLogger(__name__)


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
    # Prepared at load for the engine, by policy id: the reference a determining
    # policy is reported as, and the obligations a permit carries.
    refs: Mapping[str, PolicyRef] = field(default_factory=lambda: MappingProxyType({}))
    # The store as slices (entitystore.py): each entity's JSON text and the entities
    # it names; and every stored entity the policies can reach from the entities
    # they name themselves. A request bringing its own entities is decided with
    # those slices it can reach (engine.py), not with a clone of the whole store.
    entity_slices: Mapping[EntityUid, str] = field(default_factory=lambda: MappingProxyType({}))
    entity_refs: Mapping[EntityUid, tuple[EntityUid, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    policy_entities: frozenset[EntityUid] = frozenset()
    # Those entities parsed once (None: no such set could be built; no slices then).
    policy_store: cedarpy.Entities | None = None
    obligations: Mapping[str, Obligations] = field(default_factory=lambda: MappingProxyType({}))

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
        for info, est in parse_policy_file(src, schema_handle, len(static), validate):
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

    store = build_store(entities, schema_handle)

    actions, groups = schema_actions(schema_handle)
    entity_types = schema_entity_types(rendered)
    declaration = RequestEntities()
    if request_entities is not None:
        declaration = parse_request_entities(request_entities, schema_handle, entity_types)
    steps = None
    if lifecycle is not None:
        steps = lifecycle_yaml.parse(lifecycle.text, actions, groups, file=lifecycle.name)
    policy_entities = frozenset(reachable(_named(static.values()), store.refs))
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
        entities=store.handle,
        policies=MappingProxyType(infos),
        entity_types=entity_types,
        actions=actions,
        entity_json=store.by_uid,
        entity_slices=store.slices,
        entity_refs=store.refs,
        policy_entities=policy_entities,
        policy_store=_policy_store(store.slices, policy_entities, schema_handle),
        sources=tuple(s.name for s in inputs),
        index=PolicyIndex(static, json.loads(str(store.handle)), policy_set),
        context_reads=context_reads(static.values()),
        request_entities=declaration,
        lifecycle=steps,
        refs=MappingProxyType(
            {pid: PolicyRef(pid, i.annotations, i.source) for pid, i in infos.items()}
        ),
        obligations=MappingProxyType(
            {pid: Obligations(i.max_credential_ttl, i.revoke_within) for pid, i in infos.items()}
        ),
    )


def _policy_store(
    slices: Mapping[EntityUid, str], uids: frozenset[EntityUid], schema: cedarpy.Schema
) -> cedarpy.Entities | None:
    """The stored entities the policies reach, parsed: the base of every slice."""
    try:
        return cedarpy.Entities.from_json_str(slice_text(slices, set(uids), ""), schema)
    except ValueError:  # pragma: no cover - a part of a store that loaded
        return None


def _named(policies: Any) -> set[EntityUid]:
    """Every entity the policies name (scopes, conditions), generously (named_in)."""
    out: set[EntityUid] = set()
    for body in policies:
        named_in(body, out)
    return out


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
            json_document(src)
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
