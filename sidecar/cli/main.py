"""`stepguard` command line: serve, check, validate, and the policy authors' tools.

Exit codes (sidecar/cli/exitcodes.py), the same in every command: 0 success
(check: ALLOW), 1 error (bad input, flags, usage or files), 2 check: DENY, 3 a check
found problems (test failures, fmt --check, replay --fail-on-change), 4 the
policies are invalid, 5 no tests ran (--fail-on-empty), 6 coverage below the
minimum. `check` and `validate` reuse
the server's loader, validation and engine, so what they say is what the
sidecar would do.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.cli.exitcodes import EXIT_DENY, EXIT_ERROR, EXIT_INVALID, EXIT_OK, epilog
from sidecar.core.errors import BundleError, StepguardError
from sidecar.core.model import PolicyErrors  # light: the standard library only
from sidecar.core.textsafe import escape

if TYPE_CHECKING:
    from sidecar.authoring.failopen import Types
    from sidecar.core.bundle import Bundle
    from sidecar.core.model import Result

# The engine, bundle loader and tools are imported by the commands that use them:
# `stepguard healthcheck` runs as a Kubernetes probe every few seconds and needs none.


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(probe_only=words[:1] == ["healthcheck"])
    args = parser.parse_args(words)
    try:
        code: int = args.run(args)
    except BundleError as exc:  # any command: the policies do not load
        print(f"stepguard: error: {escape(exc)}", file=sys.stderr)
        return EXIT_INVALID
    except StepguardError as exc:
        print(f"stepguard: error: {escape(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (`stepguard test | head`): stop quietly, like other CLIs.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    return code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 1 (EXIT_ERROR): 2 means DENY to scripts.

    Subcommand parsers are of this class too (add_subparsers uses the
    parent's class), so each prints its own usage.
    """

    def error(self, message: str) -> Any:  # argparse declares NoReturn
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {escape(message)}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """A command (a parser without subcommands) reports its own unknown flags."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and not any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions as usual; keeps the exit-code table of the epilog as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("exit codes:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stepguard")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _parser(*, probe_only: bool = False) -> argparse.ArgumentParser:
    """Every command; with `probe_only`, just `healthcheck` (light to import, for probes)."""
    parser = _Parser(
        prog="stepguard",
        description=__doc__.splitlines()[0],
        formatter_class=_HelpFormatter,
        epilog=_general_epilog(),
    )
    parser.add_argument(
        "--version", action="version", version=f"stepguard {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    if probe_only:
        from sidecar.cli import healthcheck

        healthcheck.register(sub)
        _add_exit_codes(parser)
        return parser

    serve = sub.add_parser("serve", help="run the decision sidecar")
    serve.add_argument("--policies", help="policy directory (default: policies)")
    serve.add_argument("--listen", help="HOST:PORT for gRPC, or 'none' (default 127.0.0.1:50051)")
    serve.add_argument("--socket", help="also (or only) listen on this Unix socket path")
    serve.add_argument("--metrics-listen", help="HOST:PORT for /metrics, or 'off'")
    serve.add_argument(
        "--authzen-listen",
        help="loopback HOST:PORT for the OpenID AuthZEN HTTP API (default: off)",
    )
    serve.add_argument("--audit-file", help="audit trail: a file path, or - for stdout")
    serve.add_argument(
        "--audit-durability", choices=("flush", "fsync"), help="flush (default) or fsync"
    )
    serve.add_argument("--audit-rotate-bytes", type=int, help="rotate at this size (0: never)")
    serve.add_argument(
        "--audit-rotate-age", dest="audit_rotate_age_s", type=float, help="rotate after (s)"
    )
    serve.add_argument("--audit-hmac-key-file", help="key the audit hash chain with this file")
    serve.add_argument(
        "--audit-redact", help="comma-separated event paths to redact (context.approval.ticket)"
    )
    serve.add_argument(
        "--audit-checkpoints",
        help="append signed checkpoints of the trail to this file, kept where the trail's "
        "writer cannot roll it back (docs/audit.md)",
    )
    serve.add_argument(
        "--audit-checkpoint-every", type=int, help="checkpoint every N events (default 1000)"
    )
    serve.add_argument(
        "--audit-checkpoint-interval",
        dest="audit_checkpoint_interval_s",
        type=float,
        help="checkpoint at least every T seconds while records are written (default 10)",
    )
    serve.add_argument("--grace", dest="grace_s", type=float, help="drain time on shutdown (s)")
    serve.add_argument("--workers", type=int, help="gRPC worker threads")
    serve.add_argument(
        "--stream-idle-timeout",
        dest="stream_idle_timeout_s",
        type=float,
        help="close an AuthorizeStream idle this long (s, default 60)",
    )
    serve.add_argument(
        "--stream-max-per-caller",
        type=int,
        help="open AuthorizeStreams per caller (default 0: half of workers / 2)",
    )
    serve.add_argument(
        "--max-request-bytes", type=int, help="refuse larger requests (INVALID_ARGUMENT)"
    )
    serve.add_argument(
        "--max-attribute-depth", type=int, help="refuse attributes nested deeper than this"
    )
    serve.add_argument("--max-batch-items", type=int, help="refuse batches with more items")
    serve.add_argument("--tls-cert", help="PEM certificate chain: TLS on the TCP listener")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", help="PEM CA bundle: require client certificates (mTLS)")
    serve.add_argument(
        "--bind-workload-identity",
        action="store_true",
        default=None,
        help='deny requests whose principal is not Workload::"<caller SPIFFE ID>"',
    )
    serve.add_argument(
        "--watch",
        action="store_true",
        default=None,
        help="reload policies, schema and entities when their files change",
    )
    serve.add_argument(
        "--watch-interval", dest="watch_interval_s", type=float, help="poll period (s, default 1)"
    )
    serve.add_argument(
        "--cache-max-entries", type=int, help="decision cache entries (0: off; default 100000)"
    )
    serve.add_argument("--cache-max-bytes", type=int, help="decision cache bytes (default 64 MiB)")
    serve.add_argument(
        "--now-granularity-ms", type=int, help="context.now granularity (ms, default 1000)"
    )
    serve.add_argument(
        "--server-mode", choices=["asyncio", "sync"], help="gRPC server (default asyncio)"
    )
    serve.add_argument(
        "--event-loop",
        choices=["uvloop", "asyncio"],
        help="the asyncio server's event loop (default uvloop)",
    )
    serve.add_argument(
        "--policy-errors",
        choices=[m.value for m in PolicyErrors],
        help="what a policy that errors does: deny (default: any error of a policy that "
        "could apply makes the answer DENY) or cedar (Cedar's semantics: it is skipped)",
    )
    serve.add_argument(
        "--fixed-clock",
        metavar="RFC3339",
        help="decide as if at this time, e.g. 2026-11-25T10:00:00Z (demonstrations and "
        "tests only: needs --non-production; every decision event records it)",
    )
    serve.add_argument(
        "--non-production",
        action="store_true",
        default=None,
        help="allow settings no production sidecar may use (--fixed-clock)",
    )
    serve.add_argument("--config", type=Path, help="YAML file of settings (flags win)")
    serve.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO (default), WARNING or ERROR"
    )
    serve.set_defaults(run=_serve)

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

    validate = sub.add_parser("validate", help="load and strictly validate a policy directory")
    validate.add_argument(
        "directory",
        type=Path,
        nargs="?",
        default=Path("policies"),
        help="the policy directory (default: policies)",
    )
    validate.add_argument("--json", action="store_true", help="print the problems as JSON")
    validate.add_argument(
        "--strict",
        action="store_true",
        help="treat warnings (policies that can error at run time) as errors: exit 4",
    )
    validate.set_defaults(run=_validate)
    for register in _extensions():
        register(sub)
    _add_exit_codes(parser)
    return parser


def _general_epilog() -> str:
    from sidecar.cli import exitcodes

    body = exitcodes.__doc__.split("\n\n")[2] if exitcodes.__doc__ else ""
    return "exit codes:\n" + body


def subcommands(
    parser: argparse.ArgumentParser, path: str = ""
) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (command words, parser) under `parser`, depth first (for help and its test)."""
    found: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words = f"{path} {name}".strip()
                found.append((words, child))
                found.extend(subcommands(child, words))
    return found


def _add_exit_codes(parser: argparse.ArgumentParser) -> None:
    """Each command's --help ends with the exit codes it can return (sidecar/cli/exitcodes.py)."""
    for words, child in subcommands(parser):
        child.epilog = epilog(words) or child.epilog
        child.formatter_class = _HelpFormatter


def _extensions() -> list[Any]:
    """Subcommands that live beside the feature they drive (each `register(subparsers)`)."""
    from sidecar.authoring import fmt, policytest, replay
    from sidecar.cli import audit as audit_cli
    from sidecar.cli import healthcheck

    return [
        audit_cli.register,
        policytest.register,
        fmt.register,
        replay.register,
        healthcheck.register,
    ]


def _serve(args: argparse.Namespace) -> int:
    from sidecar.serving.config import build_settings
    from sidecar.serving.server import Sidecar, tune_gc_for_serving

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    flags = {
        k: v
        for k, v in vars(args).items()
        if k not in ("run", "config", "log_level") and v is not None
    }
    settings = build_settings(flags, os.environ, args.config)
    sidecar = Sidecar(settings)
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("stepguard").info("signal %d: shutting down", signum)
        done.set()

    # Before anyone can know the address: a SIGTERM right after the serving
    # line must drain and exit 0, not kill the process half-way.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    endpoints = sidecar.start()
    tune_gc_for_serving()
    # The serving line: one JSON object on stdout, for scripts and harnesses (the
    # ports asked as 0 are resolved in it). Logs stay on stderr. A trail on stdout
    # (--audit-file -) owns stdout: every line there is a record, so the line goes
    # to stderr then.
    out = sys.stderr if settings.audit_file == "-" else sys.stdout
    print(json.dumps(_endpoints(endpoints)), flush=True, file=out)
    done.wait()
    sidecar.stop()
    return EXIT_OK


def _endpoints(endpoints: Any) -> dict[str, Any]:
    return {
        "event": "serving",
        "grpc": endpoints.tcp,
        "socket": endpoints.socket,
        "metrics": endpoints.metrics,
        "authzen": endpoints.authzen,
    }


def _check(args: argparse.Namespace) -> int:
    """Decide one request as the sidecar would: through the decider, with no trail or cache."""
    import time

    from sidecar.audit.event import CallMeta
    from sidecar.audit.sink import NullSink
    from sidecar.authoring import refs
    from sidecar.core.bundle import load_bundle
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


def result_json(result: Result) -> dict[str, Any]:
    ttl = result.obligations.max_credential_ttl
    return {
        "decision": result.decision.value,
        "reason": result.summary(),
        "determining_policies": [
            {"id": r.id, "source": r.source, "annotations": dict(r.annotations)}
            for r in result.reasons
        ],
        "errors": [{"policy": e.policy_id, "message": e.message} for e in result.errors],
        "obligations": {"max_credential_ttl_s": ttl.total_seconds()} if ttl else {},
        "policy_revision": result.revision,
        "policy_errors": result.policy_errors.value,
    }


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
    lines.append(f"revision: {escape(result.revision)}")
    lines.append(f"policy errors: {result.policy_errors.value}")
    return "\n".join(lines)


def _validate(args: argparse.Namespace) -> int:
    """Every problem with file, line, column and snippet (authoring/diagnose.py); 4 if invalid."""
    from sidecar.authoring.diagnose import validate_command

    return validate_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
