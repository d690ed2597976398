"""`stepguard check`: decide one request locally, as the sidecar would.

The request comes from a JSON file or from flags (bare ids resolved against
the bundle: sidecar/authoring/refs.py), goes through the server's own
validation and engine, and is printed as text or JSON. Exit 0 ALLOW, 2 DENY.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.cli.exitcodes import EXIT_DENY, EXIT_OK
from sidecar.core.errors import StepguardError
from sidecar.core.model import PolicyErrors, result_json  # light: the standard library only
from sidecar.core.textsafe import escape

if TYPE_CHECKING:
    from sidecar.authoring.schematypes import Types
    from sidecar.core.bundle import Bundle
    from sidecar.core.model import Result


def register(sub: Any) -> None:
    """Add `stepguard check` to the CLI."""
    check = sub.add_parser("check", help="decide one request locally, as the sidecar would")
    check.add_argument(
        "--policies",
        type=Path,
        default=Path("policies"),
        help="policy directory (default: policies)",
    )
    check.add_argument("--request", type=Path, help="JSON request file (- for stdin)")
    check.add_argument(
        "--principal",
        help='Type::"id" or, when the schema and entities make it unambiguous, the bare id: '
        'Workload::"spiffe://example.org/ns/etl/sa/worker"',
    )
    check.add_argument("--action", help='Action::"grant_access" or grant_access')
    check.add_argument("--resource", help='TargetSystem::"okta" or okta')
    check.add_argument("--context", help="context as JSON (the request file's context form)")
    check.add_argument("--now", help="evaluate as if at this RFC 3339 time (default: now)")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.add_argument(
        "--policy-errors",
        choices=[m.value for m in PolicyErrors],
        default=PolicyErrors.DENY.value,
        help="what a policy that errors does: deny (default, as the server) or cedar",
    )
    check.add_argument(
        "--explain",
        action="store_true",
        help="also show every policy: applied, satisfied, not, errored, and the deciding clause",
    )
    check.set_defaults(run=_check)


def _check(args: argparse.Namespace) -> int:
    """Decide one request as the sidecar would: through the decider, with no trail or cache."""
    import time

    from sidecar.audit.sink import NullSink
    from sidecar.authoring import refs
    from sidecar.core.bundle import load_bundle
    from sidecar.core.event import CallMeta
    from sidecar.core.explain import render_text as render_explanation
    from sidecar.core.explain import to_json as explanation_json
    from sidecar.core.jsonreq import request_from_json
    from sidecar.core.validate import Limits
    from sidecar.decision.decider import Decider
    from sidecar.decision.metrics import Metrics

    bundle = load_bundle(args.policies)
    types = refs.types_of(bundle)
    raw = _request_json(args, bundle, types)
    refs.check_keys(raw)
    for hint in refs.attribute_hints(raw, types):
        print(f"stepguard: hint: {escape(hint)}", file=sys.stderr)
    now = _parse_now(args.now)
    msg = request_from_json(raw)
    msg.explain = bool(args.explain)
    decider = Decider(
        NullSink(), Metrics(), lambda: now, policy_errors=PolicyErrors(args.policy_errors)
    )
    decided = decider.decide_message(bundle, msg, CallMeta(), Limits(), started=time.perf_counter())
    result, explanation = decided.result, decided.explanation
    if args.json:
        out = result_json(result)
        if explanation is not None:
            out["explanation"] = explanation_json(explanation)
        print(json.dumps(out, indent=2))
    else:
        print(render_result(result))
        if explanation is not None:
            print(render_explanation(explanation))
    return EXIT_OK if result.allowed else EXIT_DENY


def _request_json(args: argparse.Namespace, bundle: Bundle, types: Types | None) -> dict[str, Any]:
    """The request form, from --request or from the flags (bare ids resolved: authoring/refs.py)."""
    from sidecar.authoring.refs import resolve

    if args.request is not None:
        text = sys.stdin.read() if str(args.request) == "-" else args.request.read_text()
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StepguardError(f"--request: invalid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise StepguardError("--request: must be a JSON object")
        return loaded
    missing = [n for n in ("principal", "action", "resource") if getattr(args, n) is None]
    if missing:
        raise StepguardError(
            "give --request FILE, or all of --principal, --action and --resource "
            f"(missing: {', '.join('--' + m for m in missing)})"
        )
    data: dict[str, Any] = {
        "principal": resolve(args.principal, "--principal", bundle, types),
        "action": resolve(args.action, "--action", bundle, types),
        "resource": resolve(args.resource, "--resource", bundle, types),
    }
    if args.context:
        try:
            data["context"] = json.loads(args.context)
        except json.JSONDecodeError as exc:
            raise StepguardError(f"--context: invalid JSON: {exc}") from exc
    return data


def _parse_now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise StepguardError(f"--now: {text!r} is not an RFC 3339 time") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def render_result(result: Result) -> str:
    """The text of `check`: policy ids, sources and errors come from files, so escaped."""
    lines = [f"decision: {result.decision.value}", f"reason:   {escape(result.summary())}"]
    for ref in result.reasons:
        lines.append(f"  policy {escape(ref.id)} ({escape(ref.source)})")
    for err in result.errors:
        lines.append(f"  error {escape(err.policy_id or '-')}: {escape(err.message)}")
    ttl = result.obligations.max_credential_ttl
    if ttl is not None:
        lines.append(f"obligation: max_credential_ttl = {int(ttl.total_seconds())}s")
    revoke = result.obligations.revoke_within
    if revoke is not None:
        lines.append(f"obligation: revoke_within = {int(revoke.total_seconds())}s")
    lines.append(f"revision: {escape(result.revision)}")
    lines.append(f"policy errors: {result.policy_errors.value}")
    return "\n".join(lines)
