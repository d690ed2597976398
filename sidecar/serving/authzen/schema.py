"""What a bundle's schema declares, as AuthZEN translation needs it.

Cedar validates entity data and request context strictly against the schema:
an attribute the schema does not declare is an error, not something ignored.
AuthZEN, on the other hand, lets a PEP send any `properties` and any
`context`, and requires the PDP to ignore what it does not understand. So the
translation keeps what the schema declares and drops the rest; because policies
are validated against the same schema, no policy can read what is dropped, and
dropping it changes no decision.

cedarpy offers no schema introspection, only `str(schema)`, which prints the
schema in Cedar's normalized schema syntax. This module reads that text with
a small recursive-descent parser (tokens, then the grammar subset that
normalized output uses). If the rendering cannot be read, `view_of` returns
an empty view: every property and context key is then dropped, and policies
that need them deny (fail closed).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import cedarpy

from sidecar.core.model import EntityUid, cedar_unescape

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    """A record type: attribute name -> type."""

    attrs: Mapping[str, CedarType]


@dataclass(frozen=True, slots=True)
class SetOf:
    element: CedarType


@dataclass(frozen=True, slots=True)
class Named:
    """A primitive, extension, entity or common type, by (qualified) name."""

    name: str


@dataclass(frozen=True, slots=True)
class _Ref:
    """A type name as written inside namespace `ns`, before it is qualified."""

    ns: str
    name: str


CedarType = Record | SetOf | Named | _Ref
EMPTY = Record(MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class ActionSig:
    uid: EntityUid
    principals: frozenset[str]
    resources: frozenset[str]
    context: Record

    def applies_to(self, principal: str, resource: str) -> bool:
        return principal in self.principals and resource in self.resources


@dataclass(frozen=True, slots=True)
class SchemaView:
    """Declared entity shapes and action signatures, with common types resolved."""

    entities: Mapping[str, Record] = field(default_factory=dict)
    actions: Mapping[EntityUid, ActionSig] = field(default_factory=dict)
    common: Mapping[str, CedarType] = field(default_factory=dict)

    def shape(self, entity_type: str) -> Record:
        """Attributes of an entity type; none for a type the schema does not declare."""
        return self.entities.get(entity_type, EMPTY)

    def resolve(self, typ: CedarType) -> CedarType:
        """Follow common-type names to what they stand for."""
        return _resolve(typ, self.common)

    def action_uid(self, name: str) -> EntityUid | None:
        """The declared action an AuthZEN `action.name` means, or None.

        `Action::"name"` when the schema declares it outside any namespace;
        otherwise the one namespaced action with that name. A name declared in
        several namespaces only is ambiguous, and means none of them.
        """
        plain = EntityUid("Action", name)
        if plain in self.actions:
            return plain
        found = [uid for uid in self.actions if uid.id == name]
        return found[0] if len(found) == 1 else None


def view_of(schema: cedarpy.Schema) -> SchemaView:
    text = str(schema)
    try:
        return _Parser(text).schema()
    except _ParseError as exc:
        log.error(
            "cannot read the schema's declarations (%s); AuthZEN properties and "
            "context are dropped, so policies that need them deny",
            exc,
        )
        return SchemaView()


class _ParseError(Exception):
    pass


_TOKEN = re.compile(
    r"""\s+|//[^\n]*
    |(?P<str>"(?:[^"\\]|\\.)*")
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<punct>::|[{}\[\]<>,;:=?@()])""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _ParseError(f"unexpected character {text[pos]!r} at offset {pos}")
        if m.lastgroup is not None:
            out.append(m.group())
        pos = m.end()
    return out


def _unquote(token: str) -> str:
    if token.startswith('"'):
        return cedar_unescape(token[1:-1])
    return token


@dataclass
class _Raw:
    """Declarations as written, before names are qualified and resolved."""

    entities: dict[str, Record] = field(default_factory=dict)
    actions: list[tuple[str, str, list[str], list[str], CedarType]] = field(default_factory=list)
    common: dict[str, CedarType] = field(default_factory=dict)


class _Parser:
    def __init__(self, text: str) -> None:
        self._toks = _tokens(text)
        self._i = 0
        self._raw = _Raw()

    # -- token helpers
    def _peek(self, ahead: int = 0) -> str:
        i = self._i + ahead
        return self._toks[i] if i < len(self._toks) else ""

    def _next(self) -> str:
        tok = self._peek()
        if not tok:
            raise _ParseError("unexpected end of schema")
        self._i += 1
        return tok

    def _expect(self, tok: str) -> None:
        got = self._next()
        if got != tok:
            raise _ParseError(f"expected {tok!r}, got {got!r}")

    def _accept(self, tok: str) -> bool:
        if self._peek() == tok:
            self._i += 1
            return True
        return False

    def _path(self) -> str:
        parts = [self._next()]
        while self._peek() == "::" and self._peek(1) and not self._peek(1).startswith('"'):
            self._i += 1
            parts.append(self._next())
        return "::".join(parts)

    def _name(self) -> str:
        return _unquote(self._next())

    # -- grammar
    def schema(self) -> SchemaView:
        while self._peek():
            self._annotations()
            if self._accept("namespace"):
                ns = self._path()
                self._expect("{")
                while not self._accept("}"):
                    self._decl(ns)
            else:
                self._decl("")
        return self._finish()

    def _annotations(self) -> None:
        while self._accept("@"):
            self._next()
            if self._accept("("):
                self._next()
                self._expect(")")

    def _decl(self, ns: str) -> None:
        self._annotations()
        kind = self._next()
        if kind == "entity":
            self._entity(ns)
        elif kind == "action":
            self._action(ns)
        elif kind == "type":
            name = self._next()
            self._expect("=")
            self._raw.common[_qualify(ns, name)] = self._type(ns)
            self._expect(";")
        else:
            raise _ParseError(f"unexpected {kind!r} at the start of a declaration")

    def _entity(self, ns: str) -> None:
        names = [self._next()]
        while self._accept(","):
            names.append(self._next())
        shape = EMPTY
        if self._accept("in"):
            self._type_list()
        if self._accept("enum"):
            self._expect("[")
            while not self._accept("]"):
                self._next()
        else:
            self._accept("=")
            if self._peek() == "{":
                shape = self._record(ns)
        if self._accept("tags"):
            self._type(ns)
        self._expect(";")
        for name in names:
            self._raw.entities[_qualify(ns, name)] = shape

    def _action(self, ns: str) -> None:
        names = [self._name()]
        while self._accept(","):
            names.append(self._name())
        if self._accept("in"):
            if self._accept("["):
                while not self._accept("]"):
                    self._action_ref()
                    self._accept(",")
            else:
                self._action_ref()
        principals: list[str] = []
        resources: list[str] = []
        context: CedarType = EMPTY
        applies = False
        if self._accept("appliesTo"):
            applies = True
            self._expect("{")
            while not self._accept("}"):
                key = self._next()
                self._expect(":")
                if key == "principal":
                    principals = self._type_list()
                elif key == "resource":
                    resources = self._type_list()
                elif key == "context":
                    context = self._type(ns)
                else:
                    raise _ParseError(f"unexpected {key!r} in appliesTo")
                self._accept(",")
        self._expect(";")
        if applies:
            for name in names:
                self._raw.actions.append((ns, name, principals, resources, context))

    def _action_ref(self) -> None:
        if self._peek(1) == "::":
            self._path()
            self._expect("::")
        self._next()

    def _type_list(self) -> list[str]:
        if not self._accept("["):
            return [self._path()]
        out: list[str] = []
        while not self._accept("]"):
            out.append(self._path())
            self._accept(",")
        return out

    def _type(self, ns: str) -> CedarType:
        if self._peek() == "{":
            return self._record(ns)
        name = self._path()
        if name in ("Set", "__cedar::Set") and self._accept("<"):
            element = self._type(ns)
            self._expect(">")
            return SetOf(element)
        return _Ref(ns, name)

    def _record(self, ns: str) -> Record:
        self._expect("{")
        attrs: dict[str, CedarType] = {}
        while not self._accept("}"):
            self._annotations()
            name = self._name()
            self._accept("?")
            self._expect(":")
            attrs[name] = self._type(ns)
            self._accept(",")
        return Record(MappingProxyType(attrs))

    # -- qualification and resolution
    def _finish(self) -> SchemaView:
        raw = self._raw
        common = {name: self._fix(t) for name, t in raw.common.items()}
        entities = {name: self._fix_record(r) for name, r in raw.entities.items()}
        actions: dict[EntityUid, ActionSig] = {}
        for ns, name, principals, resources, ctx in raw.actions:
            uid = EntityUid(_qualify(ns, "Action"), name)
            resolved = _resolve(self._fix(ctx), common)
            actions[uid] = ActionSig(
                uid,
                frozenset(self._entity_name(ns, p) for p in principals),
                frozenset(self._entity_name(ns, r) for r in resources),
                resolved if isinstance(resolved, Record) else EMPTY,
            )
        return SchemaView(
            MappingProxyType(entities), MappingProxyType(actions), MappingProxyType(common)
        )

    def _entity_name(self, ns: str, name: str) -> str:
        if "::" in name:
            return name
        qualified = _qualify(ns, name)
        return qualified if qualified in self._raw.entities else name

    def _fix(self, typ: CedarType) -> CedarType:
        """Qualify a name written inside a namespace: common type, entity type, or builtin."""
        if isinstance(typ, Record):
            return self._fix_record(typ)
        if isinstance(typ, SetOf):
            return SetOf(self._fix(typ.element))
        if isinstance(typ, Named) or "::" in typ.name:
            return Named(typ.name)
        qualified = _qualify(typ.ns, typ.name)
        if qualified in self._raw.common or qualified in self._raw.entities:
            return Named(qualified)
        return Named(typ.name)

    def _fix_record(self, record: Record) -> Record:
        return Record(MappingProxyType({k: self._fix(v) for k, v in record.attrs.items()}))


def _qualify(ns: str, name: str) -> str:
    return f"{ns}::{name}" if ns else name


def _resolve(typ: CedarType, common: Mapping[str, CedarType]) -> CedarType:
    """Follow common-type names (bounded: Cedar rejects cyclic type definitions)."""
    for _ in range(32):
        if not isinstance(typ, Named) or typ.name not in common:
            return typ
        typ = common[typ.name]
    return typ
