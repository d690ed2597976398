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


def certificate_identity(cert: Mapping[str, Any] | None) -> str:
    """`caller_identity` for a peer certificate as Python's `ssl` decodes it (`getpeercert()`).

    Same rules and form as gRPC's, so a workload has one identity on both
    APIs: a sole URI SAN that is a SPIFFE ID (at most 2,048 characters, no
    query or fragment), else the subject in RFC 2253 form (last RDN first,
    short attribute names, specials escaped, non-ASCII bytes as `\\XX`).
    """
    if not cert:
        return ""
    uris = [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]
    if len(uris) == 1 and _spiffe_like(uris[0]):
        return str(uris[0])
    rdns = cert.get("subject", ())
    return ",".join(
        "+".join(f"{_SHORT_NAMES.get(name, name)}={_rfc2253(value)}" for name, value in rdn)
        for rdn in reversed(rdns)
    )


def _spiffe_like(uri: str) -> bool:
    """gRPC's test for `peer_spiffe_id`."""
    return uri.startswith(SPIFFE_SCHEME) and len(uri) <= 2048 and not set(uri) & {"?", "#"}


# OpenSSL's short names for the attributes Python's `ssl` gives by long name.
_SHORT_NAMES = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "streetAddress": "street",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "domainComponent": "DC",
    "userId": "UID",
    "givenName": "GN",
    "surname": "SN",
    "serialNumber": "serialNumber",
    "emailAddress": "emailAddress",
}


def _rfc2253(value: str) -> str:
    """An attribute value escaped as OpenSSL's XN_FLAG_RFC2253 prints it."""
    out = []
    data = value.encode("utf-8")
    last = len(data) - 1
    for i, byte in enumerate(data):
        char = chr(byte)
        if byte >= 0x80 or byte < 0x20 or byte == 0x7F:
            out.append(f"\\{byte:02X}")
        elif char in ',+"\\<>;' or (i == 0 and char in "# ") or (i == last and char == " "):
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


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
