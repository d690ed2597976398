"""What `stepguard check` accepts for an entity, and "did you mean" when it is wrong.

A policy author types `--action notify`, `--resource slack` or
`--principal spiffe://example.org/ns/comms/sa/notifier`: the bare id is
resolved with the schema and the entity store when exactly one entity fits:
an action of that id, or a stored entity whose type the schema allows as a
principal (resource). When several fit, the error lists them; when none does,
it names the closest known ones (a typo is not taken for a new entity: one the
store does not hold is named with its type). `Type::"id"` and `Type::id` are
taken as written (request validation then checks the type and the action).

The request's keys are checked too: a mistyped context key (`requestr`) would
otherwise be dropped silently and change the question asked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from sidecar.authoring.schematypes import Types, schema_types
from sidecar.core.bundle import Bundle
from sidecar.core.errors import StepguardError
from sidecar.core.model import EntityUid
from sidecar.core.suggest import closest, did_you_mean
from sidecar.core.validate import TYPED_CONTEXT

_TYPE = re.compile(r"[A-Za-z_]\w*(?:::[A-Za-z_]\w*)*")

# The JSON request form (sidecar/core/jsonreq.py): the keys it reads at each place.
_ENTITY_KEYS = ("type", "id", "attributes", "parents", "__entity")
_REF_KEYS = ("type", "id", "__entity")
_REQUEST_KEYS = ("principal", "action", "resource", "context", "explain")
_CONTEXT_KEYS = (*TYPED_CONTEXT, "attributes")
_NESTED_KEYS = {
    "context.time_bound": ("not_before", "not_after"),
    "context.approval": ("approver", "approved_at", "ticket"),
    "context.requester": _REF_KEYS,
    "context.approval.approver": _REF_KEYS,
    "principal": _ENTITY_KEYS,
    "resource": _ENTITY_KEYS,
    "action": _REF_KEYS,
}


def resolve(text: str, flag: str, bundle: Bundle, types: Types | None) -> dict[str, str]:
    """`--principal`/`--action`/`--resource` text -> the request form `{type, id}`."""
    role = flag.lstrip("-")
    uid = EntityUid.parse(text)
    if uid is not None:
        return uid.to_json()
    known_types = _action_types(bundle) if role == "action" else set(bundle.entity_types)
    prefix, sep, rest = text.rpartition("::")
    if sep and _TYPE.fullmatch(prefix):
        if rest.startswith('"'):
            raise StepguardError(f'{flag}: {text!r} is not an entity reference like Type::"id"')
        if prefix in known_types:  # Type::id, unquoted
            return {"type": prefix, "id": rest}
        hint = did_you_mean(prefix, known_types)
        kind = "an action type" if role == "action" else "an entity type of the schema"
        raise StepguardError(f"{flag}: {prefix!r} is not {kind}{hint}")
    if role == "action":
        return _bare_action(text, flag, bundle)
    return _bare_entity(text, flag, role, bundle, types)


def _action_types(bundle: Bundle) -> set[str]:
    return {a.type for a in bundle.actions}


def _bare_action(text: str, flag: str, bundle: Bundle) -> dict[str, str]:
    found = sorted((a for a in bundle.actions if a.id == text), key=str)
    if len(found) == 1:
        return found[0].to_json()
    if found:
        raise StepguardError(f"{flag}: {text!r} is ambiguous: {_listing(found)}; give one of them")
    shown = {a.id: str(a) for a in bundle.actions}
    hint = did_you_mean(text, shown, show=shown)
    raise StepguardError(f"{flag}: {text!r} is not an action declared by the schema{hint}")


def _bare_entity(
    text: str, flag: str, role: str, bundle: Bundle, types: Types | None
) -> dict[str, str]:
    scoped = (types.principals if role == "principal" else types.resources) if types else None
    allowed = sorted(scoped if scoped else bundle.entity_types)
    stored = [uid for uid in bundle.entity_json if uid.type in allowed]
    found = sorted((uid for uid in stored if uid.id == text), key=str)
    if len(found) == 1:
        return found[0].to_json()
    if found:
        raise StepguardError(f"{flag}: {text!r} is ambiguous: {_listing(found)}; give one of them")
    shown = {uid.id: str(uid) for uid in sorted(stored, key=str)}
    hint = did_you_mean(text, shown, show=shown)
    examples = " or ".join(str(EntityUid(t, text)) for t in allowed[:4])
    raise StepguardError(
        f"{flag}: no {role} entity {text!r} in the entity store{hint or '.'} "
        f"To name one the store does not hold, give its type: {examples}"
    )


def _listing(uids: Iterable[EntityUid]) -> str:
    return ", ".join(str(u) for u in uids)


def check_keys(data: Mapping[str, Any]) -> None:
    """Refuse keys the request form does not read, naming the closest one."""
    _known(data, "request", _REQUEST_KEYS)
    for name in ("principal", "action", "resource"):
        if isinstance(data.get(name), dict):
            _known(data[name], name, _NESTED_KEYS[name])
    context = data.get("context")
    if not isinstance(context, dict):
        return
    _known(context, "context", _CONTEXT_KEYS)
    for path in ("context.requester", "context.time_bound", "context.approval"):
        value = context.get(path.split(".")[1])
        if isinstance(value, dict):
            _known(value, path, _NESTED_KEYS[path])
    approval = context.get("approval")
    if isinstance(approval, dict) and isinstance(approval.get("approver"), dict):
        _known(approval["approver"], "context.approval.approver", _REF_KEYS)


def _known(obj: Mapping[str, Any], path: str, keys: Iterable[str]) -> None:
    allowed = tuple(keys)
    for key in obj:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed)
            if not hint:
                hint = f"; it reads {', '.join(allowed)}"
            raise StepguardError(f"{path}: unknown key {str(key)!r}{hint}")


def attribute_hints(data: Mapping[str, Any], types: Types | None) -> list[str]:
    """Context and entity attributes the schema does not declare, with the closest names.

    These are not refused here: Cedar refuses such a request (a DENY, as on the
    server); the hint says which name was meant.
    """
    if types is None:
        return []
    hints: list[str] = []
    context = data.get("context")
    attrs = context.get("attributes") if isinstance(context, dict) else None
    if isinstance(attrs, dict):
        for name in attrs:
            if name not in types.context:
                names = closest(str(name), types.context)
                hints.append(_hint(f"context attribute {str(name)!r}", names))
    for role in ("principal", "resource"):
        entity = data.get(role)
        if not isinstance(entity, dict) or not isinstance(entity.get("attributes"), dict):
            continue
        declared = types.entity_attrs.get(str(entity.get("type")))
        if declared is None:
            continue
        for name in entity["attributes"]:
            if name not in declared:
                names = closest(str(name), declared)
                hints.append(_hint(f"{role} attribute {str(name)!r}", names))
    return hints


def _hint(what: str, names: list[str]) -> str:
    text = f"{what} is not declared by the schema"
    return text + (f"; did you mean {' or '.join(names)}?" if names else "")


def types_of(bundle: Bundle) -> Types | None:
    """The schema's principal, resource, context and attribute names (None if unreadable)."""
    return schema_types(bundle.schema)
