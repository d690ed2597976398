"""Realistic audit trails at scale for the evidence benchmark (benchmarks/evidence_bench.py).

What a fleet of sidecars would leave after months of identity workflows,
written straight to disk in the trail's own format so that millions of events
take seconds, not the hours a real sidecar would need to decide them:

- one trail directory served by `--workers` workers (default 4): a chain per
  worker (`audit.w<i>.jsonl`), the workers manifest, each chain's segments
  rotated at `--rotate-mb` (a header opening each, naming the one it follows),
  and each chain's head anchor: `stepguard audit verify` accepts it as it is;
- each record is a real chain record (`chain.record_line`: seq, prev, hash over
  the canonical body); decision and outcome bodies have the fields, nesting and
  values the sidecar writes (`build_event`, `build_outcome_event`), as dicts
  made here and encoded canonically (tests/benchmarks/test_evidence_bench.py
  checks the shape against both builders and the event schema);
- the runs: joiners (onboarding: HR lookup, an account on okta, entitlements on
  two or three of github, jira, slack and aws, a notification), movers (one
  entitlement revoked, another granted), just-in-time credentials (a vault or
  aws credential living an hour, disabled after use; one in twenty left to
  expire), and leavers (HR lookup, every entitlement the identity holds
  revoked, its credentials disabled, its account deleted, a notification).
  Some revocations fail or time out (and are retried, or not), a few are
  denied (the step is skipped), a few are reported a day late, and one step in
  a thousand runs under a DENY (a violation). The active population stays
  bounded (a leaver for every joiner once it is reached), as in a company.

The faster path, and why it is faithful: each worker's runs are generated and
written by a process of its own (a run's steps on one worker, as a scheduler
keeps one connection per worker process), so the chains are written in
parallel; nothing is decided (no Cedar), and events are dicts encoded with the
chain's canonical encoder and hashed once. Same seed, same trail.

Past 500 lines because the four run shapes, the event builders they share and
the chain writer are one generator: each run's steps are a page of keyword
arguments (what the steps did to whom), and apart they would only pass the
shard's state back and forth.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sidecar.audit.anchor import anchor_bytes
from sidecar.audit.chain import GENESIS, Hasher, canonical_bytes, record_line
from sidecar.audit.workers import chain_path, ensure_manifest
from sidecar.core.event import SCHEMA_VERSION, system_event, timestamp

START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
TRAIL = "audit.jsonl"
PROVISIONER = {"id": "spiffe://example.org/ns/identity/sa/provisioner", "type": "Workload"}
REVISION = "39db08ad8dd731680083695d25121a313926358d0b90e246ea9467569f452f69"
# target -> (sensitivity, entitlements it grants)
TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "github": ("high", ("admin", "write", "read")),
    "jira": ("medium", ("dev", "admin", "viewer")),
    "slack": ("low", ("member", "guest")),
    "aws": ("critical", ("poweruser", "readonly")),
    "okta": ("high", ()),
    "vault": ("high", ()),
}
ENTITLED = ("github", "jira", "slack", "aws")
APPROVERS = ("ines", "omar", "li", "sam")
REQUESTERS = ("maria", "joao", "priya")
# (workflow, weight) of the runs; a leaver also comes whenever the population is full.
RUN_KINDS = ("onboarding", "mover", "jit-credential", "leaver")
RUN_WEIGHTS = (14, 20, 56, 10)
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Shape:
    """What to write: `events` records in all, over `workers` chains."""

    events: int
    workers: int = 4
    rotate_bytes: int = 64 << 20
    population: int = 20_000  # identities active at once (all workers together)
    seed: int = 1


# --- one chain's file writing -----------------------------------------------------------


class ChainWriter:
    """Appends records to one worker's chain: headers, rotation, the head anchor."""

    def __init__(self, trail: Path, worker: int, workers: int, rotate_bytes: int) -> None:
        self.path = chain_path(trail, worker, workers)
        self.worker, self.workers = worker, workers
        self.rotate_bytes = rotate_bytes
        self.hasher = Hasher()
        self.seq, self.prev, self.segment = 0, GENESIS, 0
        self.size = 0
        self.previous_file = ""
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.fh: Any = None
        self.records = 0

    def _open_segment(self, at_ms: int) -> None:
        self.segment += 1
        self.fh = open(self.path, "wb")  # noqa: SIM115 - closed at rotation or close()
        self.size = 0
        header = system_event(
            "segment",
            _dt(at_ms),
            segment=self.segment,
            follows=self.prev,
            previous_file=self.previous_file,
            algorithm=self.hasher.algorithm,
            key_id=self.hasher.key_id,
            worker=self.worker,
            workers=self.workers,
        )
        self._append(canonical_bytes(header))

    def _append(self, body: bytes) -> None:
        line, self.prev = record_line(self.hasher, self.seq, self.prev, body)
        self.seq += 1
        self.records += 1
        self.buffer.append(line)
        self.buffered += len(line)
        self.size += len(line)
        if self.buffered >= 1 << 20:
            self._flush()

    def _flush(self) -> None:
        self.fh.write(b"".join(self.buffer))
        self.buffer.clear()
        self.buffered = 0

    def write(self, event: dict[str, Any], at_ms: int) -> None:
        if self.fh is None:
            self._open_segment(at_ms)
        elif self.size >= self.rotate_bytes:
            self._flush()
            self.fh.close()
            rotated = self.path.with_name(f"{self.path.name}.{self.segment:06d}")
            os.rename(self.path, rotated)
            self.previous_file = rotated.name
            self._open_segment(at_ms)
        self._append(canonical_bytes(event))

    def close(self) -> None:
        if self.fh is None:
            return
        self._flush()
        self.fh.close()
        head = self.path.with_name(self.path.name + ".head")
        head.write_bytes(
            anchor_bytes(self.hasher, self.path.name, self.segment, self.seq - 1, self.prev)
        )


# --- the events ---------------------------------------------------------------------------


def _dt(ms: int) -> datetime:
    return START + timedelta(milliseconds=ms)


def _cedar_time(ms: int) -> dict[str, Any]:
    text = _dt(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return {"__extn": {"arg": text, "fn": "datetime"}}


def _ref(kind: str, ident: str) -> dict[str, str]:
    return {"id": ident, "type": kind}


@dataclass
class Shard:
    """One worker's runs, in time order, and the state they change."""

    worker: int
    rng: random.Random
    writer: ChainWriter
    population: int
    budget: int  # records to write
    clock: int = 0  # ms since START
    counter: int = 0
    next_person: int = 0
    runs: int = 0
    # identity -> target -> entitlements held; credentials held (target, id)
    active: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # the active identities, for sampling
    # Revocations done late, in a later step of their leaver run: (due ms, run, target, ...).
    late: list[tuple[int, str, str, str, str]] = field(default_factory=list)

    def uid(self) -> str:
        """A UUIDv7-shaped id: the clock's milliseconds, then worker and counter."""
        self.counter += 1
        ms = (START.timestamp() * 1000 + self.clock).__int__()
        tail = (self.worker << 40) | self.counter
        return "%08x-%04x-7%03x-%04x-%012x" % (  # noqa: UP031 - hot loop
            ms >> 16,
            ms & 0xFFFF,
            self.counter & 0xFFF,
            0x8000 | (self.worker & 0x3FFF),
            tail & 0xFFFFFFFFFFFF,
        )

    def tick(self, low_ms: int, high_ms: int) -> None:
        self.clock += self.rng.randint(low_ms, high_ms)

    # -- one step: a decision and, unless told otherwise, its outcome -------------

    def step(
        self,
        workflow: str,
        run: str,
        step: str,
        action: str,
        target: str,
        *,
        identity: str = "",
        effect: dict[str, Any] | None = None,
        allow: bool = True,
        status: str = "succeeded",
        error_class: str = "",
        retry: bool = False,
        approver: str | None = None,
        ticket: str = "",
    ) -> None:
        """Decide one step and report what it did (violation: it ran under a DENY)."""
        self.tick(500, 4_000)
        decision = self.decision(workflow, run, step, action, target, allow, approver, ticket)
        self.writer.write(decision, self.clock)
        if not allow and status != "skipped":
            self.tick(1_000, 30_000)
            self.outcome(decision, status, effect, violation="decision_denied")
            return
        attempts = [("timed_out", "TargetTimeout")] if retry else []
        attempts.append((status, error_class))
        for n, (state, error) in enumerate(attempts, start=1):
            started = self.clock + 200
            self.tick(300, 10_000)
            self.outcome(decision, state, effect, error_class=error, attempt=n, started=started)

    def decision(
        self,
        workflow: str,
        run: str,
        step: str,
        action: str,
        target: str,
        allow: bool,
        approver: str | None,
        ticket: str,
    ) -> dict[str, Any]:
        sensitivity = TARGETS[target][0]
        context: dict[str, Any] = {
            "now": _cedar_time(self.clock - self.clock % 1000),
            "requester": {"__entity": _ref("User", self.rng.choice(REQUESTERS))},
            "run_id": run,
            "sensitivity": sensitivity,
            "step_id": step,
            "target_system": target,
            "workflow": {"__entity": _ref("Workflow", workflow)},
            "workflow_id": workflow,
        }
        if approver:
            context["approval"] = {
                "approved_at": _cedar_time(self.clock - 3_600_000),
                "approver": {"__entity": _ref("User", approver)},
                "ticket": ticket,
            }
        if allow:
            policy = "provisioning-workloads-change-identities"
            reason, reasons = (
                f"permitted by {policy}",
                [{"policy": policy, "source": "identity_changes.cedar:8"}],
            )
            obligations: dict[str, float] = (
                {"revoke_within_s": 86400.0}
                if action in ("grant_access", "change_access")
                else {"max_credential_ttl_s": 3600.0}
                if action == "issue_credential"
                else {}
            )
        else:
            reason, reasons, obligations = "denied: no policy permits this request", [], {}
        return {
            "action": _ref("Action", action),
            "cached": False,
            "caller": {
                "identity": "",
                "peer": f"ipv4:10.0.{self.worker}.7:{40000 + self.runs % 20000}",
            },
            "context": context,
            "decision": "ALLOW" if allow else "DENY",
            "entities": [],
            "errors": [],
            "id": self.uid(),
            "kind": "decision",
            "latency_us": self.rng.randint(300, 2500),
            "obligations": obligations,
            "policy_errors": "deny",
            "policy_revision": REVISION,
            "principal": PROVISIONER,
            "reason": reason,
            "reasons": reasons,
            "resource": _ref("TargetSystem", target),
            "run_id": run,
            "schema": SCHEMA_VERSION,
            "step_id": step,
            "time": timestamp(_dt(self.clock)),
            "workflow_id": workflow,
        }

    def outcome(
        self,
        decision: dict[str, Any],
        status: str,
        effect: dict[str, Any] | None,
        *,
        error_class: str = "",
        attempt: int = 1,
        violation: str = "",
        started: int = 0,
    ) -> None:
        """The outcome as the integrations report it: started and finished times."""
        event: dict[str, Any] = {
            "action": decision["action"],
            "attempt": attempt,
            "caller": decision["caller"],
            "decided": decision["decision"],
            "decision_id": decision["id"],
            "id": self.uid(),
            "kind": "outcome",
            "policy_revision": REVISION,
            "principal": PROVISIONER,
            "resource": decision["resource"],
            "run_id": decision["run_id"],
            "schema": SCHEMA_VERSION,
            "status": status,
            "step_id": decision["step_id"],
            "time": timestamp(_dt(self.clock)),
            "workflow_id": decision["workflow_id"],
        }
        if error_class:
            event["error_class"] = error_class
        if started:
            event["started_at"] = timestamp(_dt(started))
            event["finished_at"] = timestamp(_dt(self.clock - 50))
        if effect is not None and status != "skipped":
            event["effect"] = effect
        if violation:
            event["violation"] = violation
        self.writer.write(event, self.clock)

    # -- the runs ----------------------------------------------------------------------

    def run_once(self) -> None:
        while self.late and self.late[0][0] <= self.clock:
            _, run, target, ent, who = heapq.heappop(self.late)
            effect = {
                "entitlements_removed": [ent],
                "identity": _ref("User", who),
                "target_system": target,
            }
            self.step(
                "leaver", run, f"revoke-{target}-late", "revoke_access", target, effect=effect
            )
        self.runs += 1
        full = len(self.order) >= self.population
        kind = "leaver" if full else self.rng.choices(RUN_KINDS, RUN_WEIGHTS)[0]
        if not self.order and kind != "onboarding":
            kind = "onboarding"
        run = f"{kind[:3]}-{self.worker}-{self.runs}"
        ticket = f"CHG-{self.worker}{self.runs:07d}"
        self.tick(1_000, 30_000)
        {
            "onboarding": self.joiner,
            "mover": self.mover,
            "jit-credential": self.jit,
            "leaver": self.leaver,
        }[kind](run, ticket)

    def joiner(self, run: str, ticket: str) -> None:
        self.next_person += 1
        who = f"u{self.worker}-{self.next_person}"
        ident = _ref("User", who)
        approver = self.rng.choice(APPROVERS)
        wf = "onboarding"
        self.step(wf, run, "lookup", "lookup_identity", "okta", effect={"identity": ident})
        account = {"account": "created", "identity": ident, "target_system": "okta"}
        self.step(
            wf,
            run,
            "account",
            "create_account",
            "okta",
            effect=account,
            approver=approver,
            ticket=ticket,
        )
        held: dict[str, set[str]] = {"okta": set()}
        for target in self.rng.sample(ENTITLED, self.rng.randint(2, 3)):
            ent = self.rng.choice(TARGETS[target][1])
            effect = {"entitlements_added": [ent], "identity": ident, "target_system": target}
            self.step(
                wf,
                run,
                f"grant-{target}",
                "grant_access",
                target,
                effect=effect,
                approver=approver,
                ticket=ticket,
            )
            held[target] = {ent}
        self.step(wf, run, "notify", "notify", "slack")
        self.active[who] = held
        self.order.append(who)

    def _pick(self) -> str:
        return self.order[self.rng.randrange(len(self.order))]

    def mover(self, run: str, ticket: str) -> None:
        who = self._pick()
        ident = _ref("User", who)
        held = self.active[who]
        approver = self.rng.choice(APPROVERS)
        wf = "mover"
        old = [(t, e) for t, ents in held.items() for e in sorted(ents)]  # not set order
        if old:
            target, ent = self.rng.choice(old)
            effect = {"entitlements_removed": [ent], "identity": ident, "target_system": target}
            self.step(
                wf,
                run,
                f"revoke-{target}",
                "revoke_access",
                target,
                effect=effect,
                approver=approver,
                ticket=ticket,
            )
            held[target].discard(ent)
        target = self.rng.choice(ENTITLED)
        ent = self.rng.choice(TARGETS[target][1])
        effect = {"entitlements_added": [ent], "identity": ident, "target_system": target}
        self.step(
            wf,
            run,
            f"grant-{target}",
            "change_access",
            target,
            effect=effect,
            approver=approver,
            ticket=ticket,
        )
        held.setdefault(target, set()).add(ent)
        self.step(wf, run, "notify", "notify", "slack")

    def jit(self, run: str, ticket: str) -> None:
        who = self._pick()
        ident = _ref("User", who)
        target = self.rng.choice(("vault", "aws"))
        cred = f"key-{self.worker}-{self.runs}"
        issued = self.clock + 5_000
        issue = {
            "credential": {
                "change": "issued",
                "expires_at": timestamp(_dt(issued + 3_600_000)),
                "id": cred,
                "issued_at": timestamp(_dt(issued)),
            },
            "identity": ident,
            "target_system": target,
        }
        wf = "jit-credential"
        self.step(wf, run, "issue", "issue_credential", target, effect=issue)
        if self.rng.random() < 0.05:
            return  # left to expire
        self.tick(30_000, 300_000)
        disable = {
            "credential": {"change": "revoked", "id": cred},
            "identity": ident,
            "target_system": target,
        }
        self.step(wf, run, "disable", "disable_credential", target, effect=disable)

    def leaver(self, run: str, ticket: str) -> None:
        who = self.order.pop(self.rng.randrange(len(self.order)))
        ident = _ref("User", who)
        held = self.active.pop(who)
        wf = "leaver"
        self.step(wf, run, "lookup", "lookup_identity", "okta", effect={"identity": ident})
        for target, ents in sorted(held.items()):
            for ent in sorted(ents):
                effect = {"entitlements_removed": [ent], "identity": ident, "target_system": target}
                roll = self.rng.random()
                if roll < 0.005:  # denied: the step is skipped, the access stays
                    self.step(
                        wf,
                        run,
                        f"revoke-{target}",
                        "revoke_access",
                        target,
                        effect=effect,
                        allow=False,
                        status="skipped",
                    )
                elif roll < 0.025:  # failed, never retried
                    self.step(
                        wf,
                        run,
                        f"revoke-{target}",
                        "revoke_access",
                        target,
                        effect=effect,
                        status="failed",
                        error_class="TargetUnavailable",
                    )
                elif roll < 0.045:  # timed out, then done on the retry
                    self.step(
                        wf,
                        run,
                        f"revoke-{target}",
                        "revoke_access",
                        target,
                        effect=effect,
                        retry=True,
                    )
                elif roll < 0.055:  # done in a later step, over a day after the leaver event
                    due = self.clock + DAY_MS + self.rng.randint(0, 12 * 3_600_000)
                    heapq.heappush(self.late, (due, run, target, ent, who))
                else:
                    self.step(wf, run, f"revoke-{target}", "revoke_access", target, effect=effect)
        account = {"account": "deleted", "identity": ident, "target_system": "okta"}
        self.step(wf, run, "account", "delete_account", "okta", effect=account)
        ran_anyway = self.rng.random() < 0.01
        self.step(wf, run, "notify", "notify", "slack", allow=not ran_anyway)


def write_shard(root: Path, worker: int, shape: Shape, budget: int) -> tuple[int, int, int]:
    """Write worker `worker`'s chain until it holds `budget` records: (records, runs, ms)."""
    writer = ChainWriter(root / TRAIL, worker, shape.workers, shape.rotate_bytes)
    shard = Shard(
        worker,
        random.Random(shape.seed * 1_000 + worker),
        writer,
        max(1, shape.population // shape.workers),
        budget,
    )
    while writer.records < budget:
        shard.run_once()
    writer.close()
    return writer.records, shard.runs, shard.clock


def generate(root: Path, shape: Shape, *, processes: int | None = None) -> dict[str, Any]:
    """Write the trail under `root` (a new directory); what was written, and how fast."""
    root.mkdir(parents=True, exist_ok=False)
    ensure_manifest(root / TRAIL, shape.workers)
    started = time.perf_counter()
    budgets = [shape.events // shape.workers] * shape.workers
    budgets[0] += shape.events - sum(budgets)
    procs = processes or min(shape.workers, os.cpu_count() or 1)
    if procs <= 1:
        results = [write_shard(root, w, shape, b) for w, b in enumerate(budgets)]
    else:
        with ProcessPoolExecutor(procs) as pool:
            futures = [pool.submit(write_shard, root, w, shape, b) for w, b in enumerate(budgets)]
            results = [f.result() for f in futures]
    seconds = time.perf_counter() - started
    files = sorted(p for p in root.iterdir() if p.is_file())
    return {
        "records": sum(r[0] for r in results),
        "runs": sum(r[1] for r in results),
        "days": round(max(r[2] for r in results) / DAY_MS, 1),
        "chains": shape.workers,
        "segments": sum(1 for p in files if ".jsonl" in p.name and not p.name.endswith(".head")),
        "bytes": sum(p.stat().st_size for p in files),
        "seconds": round(seconds, 2),
        "processes": procs,
    }


def iter_lines(root: Path) -> Iterator[bytes]:
    """Every line of every file of the trail (for tests)."""
    for path in sorted(root.glob("audit.w*.jsonl*")):
        if not path.name.endswith(".head"):
            yield from path.read_bytes().splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, required=True, help="a new directory")
    parser.add_argument("--workers", type=int, default=4, help="chains (sidecar workers)")
    parser.add_argument("--rotate-mb", type=int, default=64)
    parser.add_argument("--population", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    shape = Shape(args.events, args.workers, args.rotate_mb << 20, args.population, args.seed)
    print(generate(args.out, shape), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
