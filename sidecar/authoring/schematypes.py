"""A Cedar schema's types, as far as the static checks need them.

Entity attribute types, and the principal, resource and context types of the
actions, read from the schema's JSON form: what `validate`'s fail-open warnings
(failopen.py) type a policy's reads with, and what bare-id resolution
(refs.py) uses to know which entity types a request may name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cedarpy

# A type: ("entity", names) | ("record", {attr: type}) | ("set", type) | ("other",)
Type = tuple[Any, ...]
OTHER: Type = ("other",)


@dataclass(frozen=True, slots=True)
class Types:
    """Entity attribute types, context and scope types of a schema."""

    entity_attrs: Mapping[str, Mapping[str, Type]]
    principals: frozenset[str]
    resources: frozenset[str]
    context: Mapping[str, Type]


_TOKEN = re.compile(r'\s+|//[^\n]*|"(?:[^"\\]|\\.)*"|[A-Za-z_][\w]*(?:::[A-Za-z_]\w*)*|.')


class _Parser:
    """A reader for cedarpy's normalized schema rendering (`str(cedarpy.Schema)`)."""

    def __init__(self, text: str) -> None:
        self.toks = [t for t in _TOKEN.findall(text) if t.strip() and not t.startswith("//")]
        self.i = 0
        self.common: dict[str, Any] = {}
        self.entities: dict[str, Any] = {}
        self.principals: set[str] = set()
        self.resources: set[str] = set()
        self.contexts: list[Any] = []

    def peek(self) -> str:
        return self.toks[self.i] if self.i < len(self.toks) else ""

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if expected is not None and tok != expected:
            raise ValueError(f"expected {expected!r}, found {tok!r}")
        self.i += 1
        return tok

    def parse(self) -> None:
        while self.peek():
            self.declaration("")

    def annotations(self) -> None:
        while self.peek() == "@":
            self.take("@")
            self.take()
            if self.peek() == "(":
                while self.take() != ")":
                    pass

    def declaration(self, ns: str) -> None:
        self.annotations()
        word = self.take()
        if word == "namespace":
            name = self.take()
            self.take("{")
            while self.peek() != "}":
                self.declaration(name)
            self.take("}")
            return
        if word == "type":
            name = self.take()
            self.take("=")
            self.common[_qualify(ns, name)] = (ns, self.type_expr())
            self.take(";")
            return
        names = [self.take()]
        while self.peek() == ",":
            self.take(",")
            names.append(self.take())
        if word == "entity":
            shape: Any = ("record", {})
            while self.peek() not in (";", ""):
                tok = self.take()
                if tok == "in":
                    self.type_expr()
                elif tok in {"=", "{"}:
                    if tok == "{":
                        self.i -= 1
                    shape = self.type_expr()
                elif tok in ("tags", "enum"):
                    self.type_expr()
            self.take(";")
            for name in names:
                self.entities[_qualify(ns, name)] = (ns, shape)
            return
        if word == "action":
            while self.peek() not in (";", ""):
                tok = self.take()
                if tok == "appliesTo":
                    self.applies_to(ns)
                elif tok == "in":
                    self.type_expr()
            self.take(";")
            return
        raise ValueError(f"unexpected {word!r}")

    def applies_to(self, ns: str) -> None:
        self.take("{")
        while self.peek() != "}":
            key = self.take()
            self.take(":")
            value = self.type_expr()
            if key in ("principal", "resource"):
                items = value[1] if value[0] == "list" else [value]
                target = self.principals if key == "principal" else self.resources
                target.update(_qualify_ref(ns, t[1], self) for t in items if t[0] == "ref")
            elif key == "context":
                self.contexts.append((ns, value))
            if self.peek() == ",":
                self.take(",")
        self.take("}")

    def type_expr(self) -> Any:
        tok = self.peek()
        if tok == "{":
            self.take("{")
            attrs: dict[str, Any] = {}
            while self.peek() != "}":
                self.annotations()
                name = self.take()
                name = json.loads(name) if name.startswith('"') else name
                if self.peek() == "?":
                    self.take("?")
                self.take(":")
                attrs[name] = self.type_expr()
                if self.peek() == ",":
                    self.take(",")
            self.take("}")
            return ("record", attrs)
        if tok == "[":
            self.take("[")
            items = []
            while self.peek() != "]":
                items.append(self.type_expr())
                if self.peek() == ",":
                    self.take(",")
            self.take("]")
            return ("list", items)
        name = self.take()
        if name.startswith('"'):
            return OTHER
        if self.peek() == "<":
            self.take("<")
            inner = self.type_expr()
            self.take(">")
            return ("set", inner) if name in ("Set", "__cedar::Set") else OTHER
        return ("ref", name)


def _qualify(ns: str, name: str) -> str:
    return f"{ns}::{name}" if ns else name


def _qualify_ref(ns: str, name: str, p: _Parser) -> str:
    if ns and "::" not in name:
        local = f"{ns}::{name}"
        if local in p.entities or local in p.common:
            return local
    return name


def schema_types(schema: cedarpy.Schema) -> Types | None:
    """The types this analysis needs, or None when the rendering cannot be read."""
    p = _Parser(str(schema))
    try:
        p.parse()
    except (ValueError, IndexError):
        return None

    def resolve(ns: str, t: Any, depth: int = 0) -> Type:
        if depth > 32:
            return OTHER
        kind = t[0]
        if kind == "record":
            return ("record", {k: resolve(ns, v, depth + 1) for k, v in t[1].items()})
        if kind == "set":
            return ("set", resolve(ns, t[1], depth + 1))
        if kind == "ref":
            name = _qualify_ref(ns, t[1], p)
            if name in p.common:
                common_ns, body = p.common[name]
                return resolve(common_ns, body, depth + 1)
            if name in p.entities:
                return ("entity", frozenset({name}))
        return OTHER

    entity_attrs = {}
    for name, (ns, shape) in p.entities.items():
        resolved = resolve(ns, shape)
        entity_attrs[name] = resolved[1] if resolved[0] == "record" else {}
    context: dict[str, Type] = {}
    for ns, ctx in p.contexts:
        resolved = resolve(ns, ctx)
        if resolved[0] == "record":
            for k, v in resolved[1].items():
                context[k] = union(context.get(k), v)
    return Types(entity_attrs, frozenset(p.principals), frozenset(p.resources), context)


def union(a: Type | None, b: Type) -> Type:
    """The type of a value that is `a` or `b` (entity and record types merge)."""
    if a is None or a == b:
        return b
    if a[0] == b[0] == "entity":
        return ("entity", a[1] | b[1])
    if a[0] == b[0] == "record":
        merged = dict(a[1])
        for k, v in b[1].items():
            merged[k] = union(merged.get(k), v)
        return ("record", merged)
    return a
