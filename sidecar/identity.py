"""Who is calling: the authenticated identity from the TLS handshake, and what it may ask.

The identity is the peer certificate's SPIFFE ID (gRPC sets `peer_spiffe_id`
only for a certificate with exactly one URI SAN that is a well-formed SPIFFE
ID), else its subject distinguished name (`CN=...,O=...`), else nothing. A
subject always has the `attribute=value` form, so it can never be mistaken
for a SPIFFE ID.

Policies see the identity as `context.caller`, for the actions whose schema
context declares `caller` as a String; the audit event records it for every
decision. With workload binding on, a request must be about the caller itself.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

import cedarpy

from sidecar.bundle import Bundle
from sidecar.model import EntityUid

SPIFFE_SCHEME = "spiffe://"
CALLER = "caller"
WORKLOAD_TYPE = "Workload"


def caller_identity(auth_context: Mapping[str, Any] | None) -> str:
    """The peer's SPIFFE ID, else its certificate subject, else ''.

    `auth_context` is gRPC's `ServicerContext.auth_context()`: each property
    maps to a list of byte strings.
    """
    if not auth_context:
        return ""
    for key in ("peer_spiffe_id", "x509_subject"):
        values = auth_context.get(key) or ()
        for value in [values] if isinstance(values, bytes) else values:
            text = value.decode("utf-8", "replace").strip()
            if text:
                return str(text)
    return ""


def is_spiffe_id(identity: str) -> bool:
    return identity.startswith(SPIFFE_SCHEME)


def binding_refusal(principal: EntityUid, identity: str) -> str | None:
    """Why a request breaks workload binding, or None when it is about the caller itself.

    The principal must be `Workload::"<the caller's SPIFFE ID>"` (any
    namespace's `Workload`): a caller may not ask about another workload, nor
    slip past the rule under another principal type.
    """
    if not identity:
        return (
            "workload identity binding: the caller is not authenticated (no client "
            "certificate; Unix socket callers have none), so it may not ask about "
            f"principal {principal}"
        )
    if not is_spiffe_id(identity):
        return (
            f"workload identity binding: the caller's certificate has no SPIFFE ID (subject "
            f"{identity!r}), so it may not ask about principal {principal}"
        )
    if principal.type.rsplit("::", 1)[-1] != WORKLOAD_TYPE:
        return (
            f"workload identity binding: principal {principal} is not a {WORKLOAD_TYPE}; "
            f"the caller {identity} may only ask about {WORKLOAD_TYPE}::{_quoted(identity)}"
        )
    if principal.id != identity:
        return (
            f"workload identity binding: principal {principal} does not match the caller's "
            f"certificate SPIFFE ID {identity}; a workload may only ask about itself"
        )
    return None


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class CallerContext:
    """Per bundle revision: the actions whose context accepts `caller: String`.

    Strict Cedar validation rejects a context attribute its schema does not
    declare, so `caller` is added only where declared. Cedar's own validator
    answers the question, once per revision: a `has`-guarded use of
    `context.caller` as a String must typecheck, and an unguarded one must
    either typecheck (declared required) or fail only for being optional.
    """

    _KEEP = 4  # revisions remembered (the one in use and a few before a swap)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_revision: dict[str, frozenset[EntityUid]] = {}

    def context_for(
        self, bundle: Bundle, action: EntityUid, identity: str
    ) -> dict[str, str] | None:
        """`{"caller": identity}` when it may go into this action's context, else None."""
        if not identity or action not in self.actions(bundle):
            return None
        return {CALLER: identity}

    def actions(self, bundle: Bundle) -> frozenset[EntityUid]:
        found = self._by_revision.get(bundle.revision)
        if found is not None:
            return found
        with self._lock:
            found = self._by_revision.get(bundle.revision)
            if found is None:
                found = actions_declaring_caller(bundle.schema, bundle.actions)
                while len(self._by_revision) >= self._KEEP:
                    self._by_revision.pop(next(iter(self._by_revision)))
                self._by_revision[bundle.revision] = found
        return found


def actions_declaring_caller(
    schema: cedarpy.Schema, actions: Iterable[EntityUid]
) -> frozenset[EntityUid]:
    ordered = sorted(actions, key=str)
    if not ordered:
        return frozenset()
    guarded = _failing(schema, ordered, f'context has {CALLER} && context.{CALLER} like "*"')
    direct = _failing(schema, ordered, f'context.{CALLER} like "*"')
    return frozenset(
        action
        for i, action in enumerate(ordered)
        if i not in guarded
        and all("optional attribute" in message for message in direct.get(i, []))
    )


def _failing(
    schema: cedarpy.Schema, actions: list[EntityUid], condition: str
) -> dict[int, list[str]]:
    """Validate one probe policy per action; map each action's index to its errors."""
    text = "\n".join(
        f"permit (principal, action == {action}, resource) when {{ {condition} }};"
        for action in actions
    )
    result = cedarpy.validate_policies(text, schema)
    out: dict[int, list[str]] = {}
    for error in result.errors:
        pid = error.policy_id
        if pid.startswith("policy") and pid[6:].isdigit():
            out.setdefault(int(pid[6:]), []).append(str(error.error))
    return out
