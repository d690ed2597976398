"""Who is calling: the authenticated identity from the TLS handshake, and what it may ask.

One function, `identity_of_certificate`, derives the caller's identity from
the DER bytes of its verified client certificate, for every transport: gRPC
hands over the peer certificate (`x509_pem_cert` of its auth context), the
AuthZEN HTTPS listener reads it from its TLS socket. Neither transport's own
reading (gRPC's `peer_spiffe_id` and `x509_subject`, Python's `getpeercert`)
is used, so the two APIs cannot disagree. The rules (docs/tls.md):

- a certificate whose URI SANs claim a SPIFFE ID (scheme `spiffe`, in any
  case, after any whitespace) must have exactly one URI SAN, and it must be a
  valid SPIFFE ID (`spiffe_id_problem`), compared exactly as written: nothing
  is stripped or normalized. Otherwise the caller is refused
  (`IdentityRefused`, gRPC UNAUTHENTICATED, AuthZEN 403) with the rule it broke;
- without a SPIFFE claim, the identity is the subject distinguished name in
  RFC 4514 form (`CN=legacy-batch,O=Example`, last RDN first, multi-valued
  RDNs joined by `+`, unknown attributes by dotted OID);
- otherwise (no SPIFFE ID, empty subject) there is none: `""`.

A subject always has the `attribute=value` form, so it can never be mistaken
for a SPIFFE ID.

Policies see the identity as `context.caller`, for the actions whose schema
context declares `caller` as a String; the audit event records it for every
decision. With workload binding on, a request must be about the caller itself.
"""

from __future__ import annotations

import functools
import re
import ssl
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import cedarpy
from cryptography import x509

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.bundle import Bundle
from sidecar.core.errors import StepguardError
from sidecar.core.model import EntityUid

SPIFFE_SCHEME = "spiffe://"
CALLER = "caller"
WORKLOAD_TYPE = "Workload"
MAX_SPIFFE_ID = 2048  # bytes, as the SPIFFE ID specification bounds it
MAX_TRUST_DOMAIN = 255
_TRUST_DOMAIN: Final = re.compile(r"[a-z0-9._-]+")
_SEGMENT: Final = re.compile(r"[A-Za-z0-9._-]+")


class IdentityRefused(StepguardError):
    """A verified client certificate whose identity breaks a rule; says which."""


def spiffe_id_problem(uri: str) -> str | None:
    """Why `uri` is not a valid workload SPIFFE ID (SPIFFE ID specification), or None.

    `spiffe://<trust domain>/<path>`: the scheme in lower case; a trust domain
    of `[a-z0-9._-]` (no port, no userinfo, at most 255 characters); a path
    of one or more `/`-separated segments of `[A-Za-z0-9._-]`, none empty, `.`
    or `..` (so no trailing slash); no query or fragment; at most 2,048 bytes.
    A workload's ID has a path: the trust domain's own ID is not a caller.
    """
    if len(uri.encode("utf-8")) > MAX_SPIFFE_ID:
        return f"is over {MAX_SPIFFE_ID} bytes"
    if not uri.startswith(SPIFFE_SCHEME):
        return "does not start with spiffe:// (the scheme is lower case)"
    rest = uri[len(SPIFFE_SCHEME) :]
    for char, what in (("?", "a query"), ("#", "a fragment")):
        if char in rest:
            return f"has {what}"
    domain, slash, path = rest.partition("/")
    if not domain:
        return "has no trust domain"
    if "@" in domain:
        return "has userinfo in its trust domain"
    if ":" in domain:
        return "has a port in its trust domain"
    if len(domain) > MAX_TRUST_DOMAIN:
        return f"has a trust domain over {MAX_TRUST_DOMAIN} characters"
    if not _TRUST_DOMAIN.fullmatch(domain):
        return f"has a trust domain {domain!r} with characters other than a-z 0-9 . - _"
    if not slash or not path:
        return (
            "has no path (" + ("a trailing slash" if slash else "the trust domain's own ID") + ")"
        )
    for segment in path.split("/"):
        if not segment:
            return "has an empty path segment (a trailing slash or //)"
        if segment in (".", ".."):
            return f"has a {segment!r} path segment"
        if not _SEGMENT.fullmatch(segment):
            return f"has a path segment {segment!r} with characters other than A-Z a-z 0-9 . - _"
    return None


def _claims_spiffe(uri: str) -> bool:
    """Lenient on purpose: anything that looks like a SPIFFE claim is then checked exactly."""
    return uri.lstrip().lower().startswith("spiffe:")


def identity_of_certificate(der: bytes) -> str:
    """The caller's identity for a verified client certificate (DER), by the rules above.

    Raises IdentityRefused naming the rule a certificate breaks.
    """
    identity, problem = _derive(bytes(der))
    if problem:
        raise IdentityRefused(problem)
    return identity


@functools.lru_cache(maxsize=512)
def _derive(der: bytes) -> tuple[str, str]:
    """(identity, "") or ("", why refused); cached: a caller presents one certificate often."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        return "", f"the client certificate cannot be read: {exc}"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [str(u) for u in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    except x509.ExtensionNotFound:
        uris = []
    except ValueError as exc:
        return "", f"the client certificate's subject alternative names cannot be read: {exc}"
    claims = [u for u in uris if _claims_spiffe(u)]
    if claims:
        if len(uris) != 1:
            listed = ", ".join(repr(u) for u in uris)
            return "", (
                f"the client certificate has {len(uris)} URI SANs ({listed}); a certificate "
                "that carries a SPIFFE ID must have exactly one URI SAN (X.509 SVID)"
            )
        problem = spiffe_id_problem(uris[0])
        if problem:
            return "", f"the client certificate's SPIFFE ID {uris[0]!r} {problem}"
        return uris[0], ""
    try:
        return cert.subject.rfc4514_string(), ""
    except ValueError as exc:
        return "", f"the client certificate's subject cannot be read: {exc}"


def caller_identity(auth_context: Mapping[str, Any] | None) -> str:
    """The gRPC caller's identity: `identity_of_certificate` of its peer certificate.

    `auth_context` is gRPC's `ServicerContext.auth_context()` (each property a
    list of byte strings); without `x509_pem_cert` (no TLS, no client
    certificate, the Unix socket) there is no identity.
    """
    if not auth_context:
        return ""
    values = auth_context.get("x509_pem_cert") or ()
    for value in [values] if isinstance(values, bytes) else values:
        if value:
            return identity_of_certificate(_pem_to_der(bytes(value)))
    return ""


@functools.lru_cache(maxsize=512)
def _pem_to_der(pem: bytes) -> bytes:
    try:
        return ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IdentityRefused(f"the client certificate cannot be read: {exc}") from exc


def certificate_identity(der: bytes | None) -> str:
    """`identity_of_certificate`, or "" without a certificate (as the HTTPS listener asks)."""
    return identity_of_certificate(der) if der else ""


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


@dataclass(slots=True)  # not frozen: built on every miss, and a frozen one costs more
class CallerFacts:
    """What the caller's identity adds to one request: `context.caller`, a binding refusal."""

    context: dict[str, str] | None  # `{"caller": identity}` where the action declares it
    refusal: str | None  # why workload binding refuses the request, when it does


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

    def facts(
        self,
        bundle: Bundle,
        principal: EntityUid | None,
        action: EntityUid,
        identity: str,
        *,
        bind: bool,
        context: bool = True,
    ) -> CallerFacts:
        """The identity's part of one request, in one call before validation (a miss only).

        `context`: add `context.caller` where declared (a request already in the
        model has it from its transport). `bind`: workload binding is on, so a
        request about anyone but the caller itself (`principal`, needed only
        then) gets the refusal.
        """
        caller = self.context_for(bundle, action, identity) if context else None
        if not bind:
            return CallerFacts(caller, None)
        assert principal is not None, "workload binding judges the principal"
        return CallerFacts(caller, binding_refusal(principal, identity))

    def facts_of(
        self, bundle: Bundle, msg: pb.AuthorizeRequest, identity: str, *, bind: bool
    ) -> CallerFacts:
        """`facts` of an AuthorizeRequest as received (its principal read only when bound)."""
        principal = EntityUid(msg.principal.type, msg.principal.id) if bind else None
        return self.facts(
            bundle, principal, EntityUid(msg.action.type, msg.action.id), identity, bind=bind
        )

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
