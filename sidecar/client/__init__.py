"""The orchestrator-side client: ask before every step, fail closed.

`authorize` never raises. An unreachable sidecar, a deadline, a bad request
or anything else gives a DENY `StepDecision` whose `reason` says why, so a
caller that forgets a try/except cannot go on by accident. `guard` is the
opposite on purpose: it raises `StepDenied` so the guarded step does not run.

    client = StepguardClient("unix:///run/stepguard/grpc.sock")
    with client.guard({"principal": ..., "action": ..., "resource": ...}) as decision:
        issue_credential(ttl=decision.max_credential_ttl)

Every decision says what it is in `kind` (a `DecisionKind`) and `code` (the
gRPC status the call ended with), so a worker can tell a DENY by policy from a
bug in its own request (INVALID_REQUEST: fix the caller, do not retry) and
from an outage (UNAVAILABLE, DEADLINE, OVERLOADED: asking again may help),
without parsing `reason` and still without an exception:

    decision = client.authorize(request)
    if decision.kind is DecisionKind.INVALID_REQUEST:
        raise BugInMyRequest(decision.reason)
    if decision.kind.retryable:
        schedule_retry()

Every call takes an optional `traceparent` (W3C trace context) and
`request_id` (a correlation id); the sidecar records them in the decision's
audit event as `trace_id` and `request_id`, so an auditor can join the trail
with the orchestrator's traces and logs.

The package: `decisions` (what a decision is to the caller, and how each
failure becomes a DENY saying why), `blocking` (StepguardClient and its
DecisionStream), `aio` (AsyncStepguardClient), `outcomes` (reporting what a
step did), `reporter` (outcomes buffered and sent in batches: `report_outcome`),
`plans` (pre-flight: `plan` answers each planned step ALLOW, DENY
or DEPENDS), `channels` (TLS credentials, spreading over worker sockets).
Import from `sidecar.client`: the names below are the published surface.
"""

from sidecar.client.aio import AsyncStepguardClient
from sidecar.client.blocking import DecisionStream, StepguardClient
from sidecar.client.channels import channel_credentials, spread_over_workers
from sidecar.client.decisions import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_S,
    DecisionKind,
    RequestLike,
    StepDecision,
    StepDenied,
    denied,
    from_response,
    kind_of,
)
from sidecar.client.outcomes import OutcomeReport, error_class_of
from sidecar.client.plans import PlanReport, Residual, StepPlan
from sidecar.client.reporter import AsyncOutcomeReporter, OutcomeReporter, ReporterStats

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT_S",
    "AsyncOutcomeReporter",
    "AsyncStepguardClient",
    "DecisionKind",
    "DecisionStream",
    "OutcomeReport",
    "OutcomeReporter",
    "PlanReport",
    "ReporterStats",
    "RequestLike",
    "Residual",
    "StepDecision",
    "StepDenied",
    "StepPlan",
    "StepguardClient",
    "channel_credentials",
    "denied",
    "error_class_of",
    "from_response",
    "kind_of",
    "spread_over_workers",
]
