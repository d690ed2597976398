"""The bundle's lifecycle declaration (`lifecycle.yaml`): which steps create access,
which remove it, and which removal closes which creation.

A decision proves what was allowed; evidence about access (who holds what, and
when it was removed) also needs to know what each allowed step *means*. That is
policy, so it lives in the bundle beside the schema, is checked against the
schema when the bundle loads, and is part of the revision:

    creates:                      # action -> the kind of access it creates
      grant_access: entitlement
      issue_credential: credential
      create_account: account
    removes:                      # action -> the kind of access it removes
      revoke_access: entitlement
      disable_credential: credential
      delete_account: account
    pairs:                        # which removals close which creations
      - create: grant_access      # an action or a list of them
        closed_by: revoke_access  # an action or a list of them
      - create: issue_credential
        closed_by: disable_credential
      - create: create_account
        closed_by: delete_account
    leaver_workflows: [leaver]    # workflow ids whose runs are leaver runs

An access of a kind is identified by the effect fields in `Kind.key` (an
entitlement by identity, target and entitlement): a removal closes a creation
when the pair admits it and the two agree on every key field. A credential is
also closed by its expiry. The meaning, for an auditor, is docs/evidence.md.

Everything here is plain data for the parts that read the trail (outcomes,
`stepguard evidence`); this module does no I/O. `check` reports every problem
at its line and column, `parse` raises the first as a `BundleError`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sidecar.core import safeyaml
from sidecar.core.bundlefiles import LIFECYCLE_FILE
from sidecar.core.errors import BundleError
from sidecar.core.model import EntityUid

__all__ = [
    "EFFECT_FIELDS",
    "LIFECYCLE_FILE",
    "Finding",
    "Kind",
    "Lifecycle",
    "Pair",
    "check",
    "describe",
    "parse",
]

# The fields of a step's effect that can identify one access (an outcome's effect).
EFFECT_FIELDS = ("identity", "target", "entitlement", "credential_id")


class Kind(enum.Enum):
    """What kind of access an action creates or removes."""

    ACCOUNT = "account"
    ENTITLEMENT = "entitlement"
    CREDENTIAL = "credential"

    @property
    def key(self) -> tuple[str, ...]:
        """The effect fields that identify one access of this kind: a removal closes a
        creation only when both name the same values for all of them."""
        return _KEYS[self]

    @property
    def expires(self) -> bool:
        """Whether an access of this kind is also closed by its expiry (a credential)."""
        return self is Kind.CREDENTIAL


_KEYS = {
    Kind.ACCOUNT: ("identity", "target"),
    Kind.ENTITLEMENT: ("identity", "target", "entitlement"),
    Kind.CREDENTIAL: ("identity", "target", "credential_id"),
}


@dataclass(frozen=True, slots=True)
class Pair:
    """A removal that closes a creation: `remover` closes what `creator` created, when
    their effects agree on `kind.key`."""

    creator: EntityUid
    remover: EntityUid
    kind: Kind

    @property
    def key(self) -> tuple[str, ...]:
        return self.kind.key


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """The declaration: `creates` and `removes` map actions to kinds, `pairs` say which
    removal closes which creation, `leaver_workflows` name the workflows (the step
    context's `workflow_id`) whose runs are leaver runs (docs/evidence.md)."""

    creates: Mapping[EntityUid, Kind] = field(default_factory=lambda: MappingProxyType({}))
    removes: Mapping[EntityUid, Kind] = field(default_factory=lambda: MappingProxyType({}))
    pairs: tuple[Pair, ...] = ()
    leaver_workflows: frozenset[str] = frozenset()

    def kind_of(self, action: EntityUid) -> Kind | None:
        """The kind of access `action` creates or removes; None for any other action."""
        return self.creates.get(action) or self.removes.get(action)

    def closed_by(self, creator: EntityUid) -> frozenset[EntityUid]:
        """The removing actions that close an access `creator` created."""
        return frozenset(p.remover for p in self.pairs if p.creator == creator)

    def closes(self, remover: EntityUid) -> frozenset[EntityUid]:
        """The creating actions whose access `remover` closes."""
        return frozenset(p.creator for p in self.pairs if p.remover == remover)


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem of a declaration, at its 1-based line and column."""

    line: int
    column: int
    message: str


_TOP_KEYS = ("creates", "removes", "pairs", "leaver_workflows")
_PAIR_KEYS = ("create", "closed_by")
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"


def parse(
    text: str,
    actions: frozenset[EntityUid],
    groups: frozenset[EntityUid] = frozenset(),
    *,
    file: str = LIFECYCLE_FILE,
) -> Lifecycle:
    """The declaration in `text`, checked against the schema's `actions` (of which
    `groups` are action groups); BundleError at the first problem's line and column."""
    lifecycle, findings = check(text, actions, groups)
    if lifecycle is not None:
        return lifecycle
    first = findings[0]
    more = len(findings) - 1
    raise BundleError(
        first.message + (f" ({more} more problem(s) in this file)" if more else ""),
        file=file,
        line=first.line,
        column=first.column,
    )


def check(
    text: str, actions: frozenset[EntityUid], groups: frozenset[EntityUid] = frozenset()
) -> tuple[Lifecycle | None, list[Finding]]:
    """The declaration and no findings, or None and every problem, in reading order."""
    try:
        root = yaml.compose(text, Loader=safeyaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [Finding(line, column, f"invalid YAML: {problem}")]
    reader = _Reader(actions, groups)
    lifecycle = reader.read(root)
    findings = sorted(reader.findings, key=lambda f: (f.line, f.column))
    return (None, findings) if findings else (lifecycle, [])


class _Reader:
    """Walks the YAML nodes, so every problem keeps the position of what it is about."""

    def __init__(self, actions: frozenset[EntityUid], groups: frozenset[EntityUid]) -> None:
        self.actions = actions
        self.groups = groups
        self.findings: list[Finding] = []

    def problem(self, node: Node, message: str) -> None:
        self.findings.append(Finding(node.start_mark.line + 1, node.start_mark.column + 1, message))

    def read(self, root: Node | None) -> Lifecycle:
        if root is None or _null(root):
            return Lifecycle()
        top = self.mapping(root, "top level", _TOP_KEYS)
        creates = self.roles(top.get("creates"), "creates")
        removes = self.roles(top.get("removes"), "removes")
        for uid, (key, _) in removes.items():
            if uid in creates:
                other = creates[uid][0]
                self.problem(
                    key,
                    f"removes.{uid.id}: {uid} is also under creates (line "
                    f"{other.start_mark.line + 1}): an action either creates access or removes it",
                )
        for uid in set(removes) & set(creates):
            del removes[uid]  # reported once, above
        pairs = self.pairs(top.get("pairs"), creates, removes)
        workflows = self.names(top.get("leaver_workflows"), "leaver_workflows")
        return Lifecycle(
            creates=MappingProxyType({u: k for u, (_, k) in creates.items()}),
            removes=MappingProxyType({u: k for u, (_, k) in removes.items()}),
            pairs=tuple(pairs),
            leaver_workflows=frozenset(workflows),
        )

    def mapping(self, node: Node, where: str, allowed: Iterable[str]) -> dict[str, Node]:
        """A mapping's values by key; unknown, duplicate and non-text keys are problems."""
        if not isinstance(node, MappingNode):
            self.problem(node, f"{where}: expected a mapping with {', '.join(allowed)}")
            return {}
        out: dict[str, Node] = {}
        allowed = tuple(allowed)
        for key, value in node.value:
            name = self.text(key, where)
            if name is None:
                continue
            if name not in allowed:
                self.problem(key, f"{where}: unknown key {name!r} (allowed: {', '.join(allowed)})")
            elif name in out:
                self.problem(key, f"{where}: {name} is given twice")
            else:
                out[name] = value
        return out

    def text(self, node: Node, where: str) -> str | None:
        if isinstance(node, ScalarNode) and node.tag == _STR and node.value:
            return str(node.value)
        self.problem(node, f"{where}: expected a name, got {_shown(node)}")
        return None

    def roles(self, node: Node | None, where: str) -> dict[EntityUid, tuple[Node, Kind]]:
        """`creates` or `removes`: action -> kind, each action once and in the schema."""
        if node is None or _null(node):
            return {}
        if not isinstance(node, MappingNode):
            self.problem(node, f"{where}: expected a mapping of actions to kinds")
            return {}
        kinds = ", ".join(k.value for k in Kind)
        out: dict[EntityUid, tuple[Node, Kind]] = {}
        for key, value in node.value:
            name = self.text(key, where)
            uid = self.action(key, name, where) if name is not None else None
            kind_name = self.text(value, f"{where}.{name}") if name is not None else None
            if uid is None or kind_name is None:
                continue
            try:
                kind = Kind(kind_name)
            except ValueError:
                self.problem(value, f"{where}.{name}: unknown kind {kind_name!r} (one of {kinds})")
                continue
            if uid in out:
                self.problem(key, f"{where}: {uid} is given twice")
                continue
            out[uid] = (key, kind)
        return out

    def action(self, node: Node, name: str, where: str) -> EntityUid | None:
        """The schema's action a name means: a bare id (`grant_access`) or `Type::"id"`."""
        uid = EntityUid.parse(name)  # its id unescaped as Cedar writes it (`str(EntityUid)`)
        if uid is not None:
            found = [uid] if uid in self.actions else []
        else:
            found = sorted(
                (a for a in self.actions if a.id == name and a.type.split("::")[-1] == "Action"),
                key=str,
            )
        if not found:
            self.problem(node, f"{where}: {name!r} is not an action of the schema")
            return None
        if len(found) > 1:
            choices = ", ".join(str(a) for a in found)
            self.problem(node, f'{where}: {name!r} is ambiguous ({choices}): write Type::"id"')
            return None
        if found[0] in self.groups:
            self.problem(
                node,
                f"{where}: {found[0]} is an action group; name the actions in it "
                "(a step is one action)",
            )
            return None
        return found[0]

    def pairs(
        self,
        node: Node | None,
        creates: dict[EntityUid, tuple[Node, Kind]],
        removes: dict[EntityUid, tuple[Node, Kind]],
    ) -> list[Pair]:
        out: list[Pair] = []
        before = len(self.findings)
        if node is not None and not _null(node) and not isinstance(node, SequenceNode):
            self.problem(node, "pairs: expected a list of {create: ..., closed_by: ...}")
        for i, item in enumerate(node.value if isinstance(node, SequenceNode) else []):
            where = f"pairs[{i}]"
            spec = self.mapping(item, where, _PAIR_KEYS)
            if not isinstance(item, MappingNode):
                continue
            missing = [k for k in _PAIR_KEYS if k not in spec]
            if missing:
                self.problem(item, f"{where}: {' and '.join(missing)} is required")
                continue
            made = self.sides(spec["create"], f"{where}.create", creates, removes, "creates")
            closing = self.sides(
                spec["closed_by"], f"{where}.closed_by", removes, creates, "removes"
            )
            for creator, kind, _ in made:
                for remover, removed, at in closing:
                    if removed is not kind:
                        self.problem(
                            at,
                            f"{where}: {creator} creates {_a(kind)} but {remover} "
                            f"removes {_a(removed)}: a pair joins actions of one kind",
                        )
                    elif (pair := Pair(creator, remover, kind)) not in out:
                        out.append(pair)
        if len(self.findings) == before:  # with a pair refused, what it left open is noise
            self.unpaired(creates, removes, out)
        return out

    def sides(
        self,
        node: Node,
        where: str,
        own: dict[EntityUid, tuple[Node, Kind]],
        other: dict[EntityUid, tuple[Node, Kind]],
        role: str,
    ) -> list[tuple[EntityUid, Kind, Node]]:
        """The actions one side of a pair names, each declared under `role`."""
        items = node.value if isinstance(node, SequenceNode) else [node]
        if isinstance(node, SequenceNode) and not items:
            self.problem(node, f"{where}: expected at least one action")
        out: list[tuple[EntityUid, Kind, Node]] = []
        for item in items:
            name = self.text(item, where)
            uid = self.action(item, name, where) if name is not None else None
            if uid is None:
                continue
            if uid in own:
                out.append((uid, own[uid][1], item))
            elif uid in other:
                opposite = "removes" if role == "creates" else "creates"
                self.problem(item, f"{where}: {uid} {opposite} access; it cannot be on this side")
            else:
                self.problem(item, f"{where}: {uid} is not declared under {role}")
        return out

    def unpaired(
        self,
        creates: dict[EntityUid, tuple[Node, Kind]],
        removes: dict[EntityUid, tuple[Node, Kind]],
        pairs: list[Pair],
    ) -> None:
        """A creation nothing closes is open forever (a credential still expires); a
        removal that closes nothing would be ignored: both are declaration mistakes."""
        creators = {p.creator for p in pairs}
        removers = {p.remover for p in pairs}
        for uid, (key, kind) in creates.items():
            if uid not in creators and not kind.expires:
                self.problem(
                    key,
                    f"creates.{uid.id}: no pair closes the {kind.value} {uid} creates; "
                    "add one under pairs",
                )
        for uid, (key, _) in removes.items():
            if uid not in removers:
                self.problem(
                    key, f"removes.{uid.id}: {uid} closes nothing; add it to a pair under pairs"
                )

    def names(self, node: Node | None, where: str) -> list[str]:
        if node is None or _null(node):
            return []
        if not isinstance(node, SequenceNode):
            self.problem(node, f"{where}: expected a list of workflow ids")
            return []
        out = [self.text(item, where) for item in node.value]
        return [n for n in out if n is not None]


def _null(node: Node) -> bool:
    """Given as nothing (`key:` or `null`): an empty part, as if not given."""
    return isinstance(node, ScalarNode) and node.tag == _NULL


def _a(kind: Kind) -> str:
    return f"an {kind.value}" if kind.value[0] in "aeiou" else f"a {kind.value}"


def _shown(node: Node) -> str:
    if isinstance(node, ScalarNode):
        return "nothing" if node.tag == _NULL else repr(node.value)
    return "a mapping" if isinstance(node, MappingNode) else "a list"


def describe(lifecycle: Lifecycle) -> dict[str, Any]:
    """The declaration as JSON (stable order): for `validate --json` and the evidence."""
    return {
        "creates": {str(u): k.value for u, k in sorted(lifecycle.creates.items(), key=_by_uid)},
        "removes": {str(u): k.value for u, k in sorted(lifecycle.removes.items(), key=_by_uid)},
        "pairs": [
            {
                "create": str(p.creator),
                "closed_by": str(p.remover),
                "kind": p.kind.value,
                "key": list(p.key),
                "closed_by_expiry": p.kind.expires,
            }
            for p in lifecycle.pairs
        ],
        "leaver_workflows": sorted(lifecycle.leaver_workflows),
    }


def _by_uid(item: tuple[EntityUid, Kind]) -> str:
    return str(item[0])
