"""Fuzz at scale: adversarial requests against the real server, judged by Cedar itself.

    .venv/bin/python -m benchmarks.fuzz [--requests 100000] [--seed 1] [--clients 8] [--write]

Not a timed test: a run sends at least `--requests` calls (unary and batch) to
a real `Sidecar` in a child process (its own interpreter, a real file trail,
a fixed clock so that an independent evaluation can use the same `now`) and
reports what went wrong, if anything:

    sent            calls sent, and the decisions their answers carried
    deaths          times the server process died (it is restarted; each is a finding)
    other errors    answers that were neither a decision nor INVALID_ARGUMENT, by status
    unnamed         INVALID_ARGUMENT messages that do not start with a field path
    wrongful ALLOW  ALLOWs that cedarpy, asked independently, would not give
    audit           events in the trail per decision received; decisions missing from it,
                    recorded twice, or recorded with another decision than answered
    RSS             the server's resident memory after warm-up and at the end

The oracle parses the bytes that were sent with protobuf (whatever the server
made of them, the wire format is the wire format), builds the Cedar request
from the message with its own code (docs/api.md's mapping), against the
bundle's entity store alone (request-supplied entity data never grants
anything), and asks `cedarpy.is_authorized` with Cedar's own semantics. Every
ALLOW the server gives, in unary answers and batch items, is checked; a DENY
is never wrongful (failing closed is always allowed).

The load mixes: step-shaped requests (a good share is allowed, so the check
has teeth), arbitrary types and ids (empty, NUL, non-BMP, unknown types),
mutated, truncated and random protobuf bytes, wrong wire types and unknown
enum values, huge strings and many keys, nesting from just under the depth
limit to far past protobuf's own recursion limit, smuggled `__entity` /
`__extn` / `__expr` records, attempts to set `now`, `time_bound` or `caller`
through attributes, extreme timestamps, entities that declare parents and
attributes, and batches from empty to past `max_batch_items`.
`--write` records the table in benchmarks/RESULTS.md under "Fuzz at scale".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cedarpy
import grpc
import grpc.aio

from benchmarks import machine
from benchmarks.results import save_data, write_block
from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
# A Wednesday, 10:00:00 UTC, inside the example calendar's business hours; a
# whole second, so the server's rounding of `now` leaves it as it is.
CLOCK = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
AUTHORIZE = "/stepguard.v1.Authorizer/Authorize"
BATCH = "/stepguard.v1.Authorizer/AuthorizeBatch"
# An INVALID_ARGUMENT message starts with the path of the field it refuses.
FIELD_PATH = re.compile(r"^(request|principal|action|resource|context|items)\b[^\n]*?: ")


# --- the server, in a child process ---------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    """The real Sidecar on a fixed clock: prints `READY <tcp> <pid>`, serves until stdin closes."""
    from sidecar.serving.config import Settings
    from sidecar.serving.server import Sidecar

    settings = Settings(
        policies=Path(args.policies),
        listen="127.0.0.1:0",
        metrics_listen=None,
        audit_file=args.audit_file,
    )
    sidecar = Sidecar(settings, clock=lambda: CLOCK)
    endpoints = sidecar.start()
    print(f"READY {endpoints.tcp} {os.getpid()}", flush=True)
    sys.stdin.read()
    sidecar.stop(1)
    return 0


@dataclass
class Server:
    audit: Path
    policies: Path
    proc: subprocess.Popen[str] | None = None
    target: str = ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.fuzz",
                "--serve",
                "--policies",
                str(self.policies),
                "--audit-file",
                str(self.audit),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "READY":
            raise RuntimeError(f"the server did not start: {line}")
        self.target = line[1]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self) -> int:
        assert self.proc is not None
        for row in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if row.startswith("VmRSS:"):
                return int(row.split()[1])
        return 0

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


# --- the oracle: Cedar's own answer, built without stepguard's code -------------------------

_SENSITIVITY = {1: "low", 2: "medium", 3: "high", 4: "critical"}


class NotRepresentable(ValueError):
    """The message has no Cedar meaning: Cedar would not allow it."""


def _ts(value: Any) -> dict[str, Any]:
    at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
        seconds=value.seconds, microseconds=value.nanos // 1000
    )
    return {"__extn": {"fn": "datetime", "arg": at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"}}


def _ref(ref: Any) -> dict[str, str]:
    return {"type": ref.type, "id": ref.id}


def _cedar_value(v: pb.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind is None:
        raise NotRepresentable("a value with no kind")
    if kind == "set_value":
        return [_cedar_value(x) for x in v.set_value.values]
    if kind == "record_value":
        return {k: _cedar_value(x) for k, x in v.record_value.fields.items()}
    if kind == "entity_value":
        return {"__entity": _ref(v.entity_value)}
    if kind == "extension_value":
        e = v.extension_value
        if e.arguments:
            return {"__extn": {"fn": e.function, "args": [_cedar_value(a) for a in e.arguments]}}
        return {"__extn": {"fn": e.function, "arg": e.argument}}
    return getattr(v, kind)


def cedar_request(msg: pb.AuthorizeRequest) -> dict[str, Any]:
    """docs/api.md's mapping, written independently of sidecar/core/validate.py."""
    c = msg.context
    ctx: dict[str, Any] = {k: _cedar_value(v) for k, v in c.attributes.items()}
    if c.HasField("requester"):
        ctx["requester"] = {"__entity": _ref(c.requester)}
    for name in ("workflow_id", "run_id", "step_id", "target_system"):
        if getattr(c, name):
            ctx[name] = getattr(c, name)
    if c.attempt:
        ctx["attempt"] = c.attempt
    if c.sensitivity:
        if c.sensitivity not in _SENSITIVITY:
            raise NotRepresentable("unknown sensitivity")
        ctx["sensitivity"] = _SENSITIVITY[c.sensitivity]
    if c.HasField("time_bound"):
        tb = c.time_bound
        ctx["time_bound"] = {
            name: _ts(getattr(tb, name))
            for name in ("not_before", "not_after")
            if tb.HasField(name)
        }
    if c.HasField("approval"):
        a = c.approval
        ctx["approval"] = {
            "approver": {"__entity": _ref(a.approver)},
            "approved_at": _ts(a.approved_at),
        }
        if a.ticket:
            ctx["approval"]["ticket"] = a.ticket
    ctx["now"] = _ts(_Stamp(int(CLOCK.timestamp()), 0))
    return {
        "principal": _ref(msg.principal),
        "action": _ref(msg.action),
        "resource": _ref(msg.resource),
        "context": ctx,
    }


@dataclass(frozen=True)
class _Stamp:
    seconds: int
    nanos: int


class Oracle:
    def __init__(self, policies: Path) -> None:
        self.schema = cedarpy.Schema.from_str((policies / "schema.cedarschema").read_text())
        self.policies = cedarpy.PolicySet.from_str(
            "\n".join(p.read_text() for p in sorted(policies.glob("*.cedar")))
        )
        self.store = json.loads((policies / "entities.json").read_text())
        self.entities = cedarpy.Entities.from_json_str(json.dumps(self.store), self.schema)
        self.checked = 0

    def allows(self, msg: pb.AuthorizeRequest) -> bool:
        self.checked += 1
        try:
            request = cedar_request(msg)
        except (NotRepresentable, OverflowError, ValueError):
            return False
        try:
            answer = cedarpy.is_authorized(request, self.policies, self.entities, self.schema)
        except Exception:
            return False
        return bool(answer.allowed)


# --- the load ------------------------------------------------------------------------------

STORE = json.loads((POLICIES / "entities.json").read_text())
KNOWN = [e["uid"] for e in STORE]
WORKLOADS = [u for u in KNOWN if u["type"] in ("Workload", "ServiceAccount")]
USERS = [u for u in KNOWN if u["type"] == "User"]
TARGETS = [u for u in KNOWN if u["type"] == "TargetSystem"]
WORKFLOWS = [u for u in KNOWN if u["type"] == "Workflow"]
TYPES = [*sorted({u["type"] for u in KNOWN}), "Action", "Bogus", "", "Work load", "A::B"]
ACTIONS = [
    "create_account",
    "grant_access",
    "change_access",
    "issue_credential",
    "revoke_access",
    "disable_credential",
    "verify_revocation",
    "delete_account",
    "notify",
    "lookup",
    "identity-change",
    "nope",
    "",
]
NASTY = ["", "\x00", "a\x00b", "\U0001f600", "\u202e", "\r\n", "\x1b[2J", "é", "\ud7ff", "x" * 300]
RESERVED = ["now", "time_bound", "caller", "approval", "requester", "sensitivity", "run_id"]
MARKERS = ["__entity", "__extn", "__expr"]


def _text(r: random.Random, size: int = 12) -> str:
    if r.random() < 0.3:
        return r.choice(NASTY)
    alphabet = "abcXYZ019-_:/. \x00\t\U0001f600\u00e9\u202e"
    return "".join(r.choice(alphabet) for _ in range(r.randrange(size + 1)))


def _set_ref(ref: Any, uid: dict[str, str]) -> None:
    ref.type = uid["type"]
    ref.id = uid["id"]


def _ts_set(ts: Any, at: datetime) -> None:
    ts.seconds = int(at.timestamp())
    ts.nanos = at.microsecond * 1000


def _when(r: random.Random) -> datetime:
    return CLOCK + timedelta(minutes=r.randrange(-3 * 24 * 60, 3 * 24 * 60))


def _scalar(r: random.Random, v: pb.Value) -> None:
    k = r.randrange(3)
    if k == 0:
        v.bool_value = r.random() < 0.5
    elif k == 1:
        v.long_value = r.choice([0, 1, -1, 2**63 - 1, -(2**63), r.randrange(-1000, 1000)])
    else:
        v.string_value = _text(r)


def _value(r: random.Random, v: pb.Value, depth: int, smuggle: bool = False) -> None:
    k = r.randrange(7 if depth > 0 else 1)
    if k <= 1 or depth <= 0:
        _scalar(r, v)
    elif k == 2:
        for _ in range(r.randrange(3)):
            _value(r, v.set_value.values.add(), depth - 1, smuggle)
    elif k in (3, 4):
        fields = v.record_value.fields
        if smuggle and r.random() < 0.6:
            marker = r.choice(MARKERS)
            inner = fields[marker]
            if marker == "__entity":
                uid = r.choice(KNOWN)
                inner.record_value.fields["type"].string_value = uid["type"]
                inner.record_value.fields["id"].string_value = uid["id"]
            elif marker == "__extn":
                inner.record_value.fields["fn"].string_value = r.choice(
                    ["datetime", "ip", "decimal", "duration", "offset"]
                )
                inner.record_value.fields["arg"].string_value = r.choice(
                    ["2026-11-25T10:00:00Z", "10.0.0.1", "1.5", "1h", "x"]
                )
            else:
                inner.string_value = "true"
        for _ in range(r.randrange(3)):
            _value(r, fields[_text(r, 6)], depth - 1, smuggle)
    elif k == 5:
        _set_ref(v.entity_value, r.choice(KNOWN) if r.random() < 0.7 else _uid(r))
    else:
        e = v.extension_value
        e.function = r.choice(["ip", "decimal", "datetime", "duration", "offset", "bad", ""])
        e.argument = r.choice(["10.0.0.1", "1.5", "2026-01-01", "1h", "x", "", "\x00"])


def _uid(r: random.Random) -> dict[str, str]:
    return {"type": r.choice(TYPES), "id": _text(r)}


def plausible(r: random.Random) -> pb.AuthorizeRequest:
    """A step as a worker sends it: known workload, action, target; a good share is allowed."""
    m = pb.AuthorizeRequest()
    _set_ref(m.principal, r.choice(WORKLOADS))
    m.action.type = "Action"
    m.action.id = r.choice(ACTIONS[:10])
    _set_ref(m.resource, r.choice(TARGETS))
    c = m.context
    _set_ref(c.requester, r.choice(USERS))
    c.workflow_id = r.choice(["onboarding", "leaver", "x"])
    c.run_id = f"run-{r.randrange(10**9)}"
    c.step_id = r.choice(["grant", "notify", "revoke"])
    if r.random() < 0.5:
        c.sensitivity = r.choice([1, 2, 3, 4])  # type: ignore[assignment]
    if r.random() < 0.4:
        if r.random() < 0.7:
            _ts_set(c.time_bound.not_before, _when(r))
        if r.random() < 0.7:
            _ts_set(c.time_bound.not_after, _when(r))
    if r.random() < 0.7:
        _set_ref(c.approval.approver, r.choice(USERS))
        _ts_set(c.approval.approved_at, _when(r))
        c.approval.ticket = r.choice(["CHG-1", "BG-7", ""])
    if r.random() < 0.7:
        _set_ref(c.attributes["workflow"].entity_value, r.choice(WORKFLOWS))
    return m


def arbitrary(r: random.Random) -> pb.AuthorizeRequest:
    m = pb.AuthorizeRequest()
    if r.random() < 0.9:
        _set_ref(m.principal, r.choice(KNOWN) if r.random() < 0.5 else _uid(r))
    if r.random() < 0.9:
        m.action.type = r.choice(["Action", "Action", "Bogus", ""])
        m.action.id = r.choice(ACTIONS) if r.random() < 0.8 else _text(r)
    if r.random() < 0.9:
        _set_ref(m.resource, r.choice(KNOWN) if r.random() < 0.5 else _uid(r))
    if r.random() < 0.7:
        c = m.context
        c.workflow_id = _text(r)
        c.step_id = _text(r)
        c.attempt = r.choice([0, 1, -1, 2**63 - 1, -(2**63)])
        for _ in range(r.randrange(4)):
            _value(r, c.attributes[_text(r, 8)], 3)
    return m


def smuggled(r: random.Random) -> pb.AuthorizeRequest:
    """Records shaped like Cedar's JSON markers, to pass an entity or extension as data."""
    m = plausible(r)
    attrs = m.context.attributes
    for _ in range(1 + r.randrange(3)):
        name = r.choice(["leaver_exempt", "workflow", "break_glass", "x", _text(r, 5)])
        attrs[name].Clear()
        _value(r, attrs[name], 3, smuggle=True)
        if r.random() < 0.5:
            marker = r.choice(MARKERS)
            inner = attrs[name].record_value.fields[marker].record_value.fields
            uid = r.choice(KNOWN)
            inner["type"].string_value = uid["type"]
            inner["id"].string_value = uid["id"]
    return m


def time_games(r: random.Random) -> pb.AuthorizeRequest:
    """Setting `now`, a time bound or the caller through attributes; extreme timestamps."""
    m = plausible(r)
    k = r.randrange(4)
    if k == 0:
        v = m.context.attributes[r.choice(RESERVED)]
        v.extension_value.function = "datetime"
        v.extension_value.argument = "2026-11-25T10:00:00Z"
    elif k == 1:
        v = m.context.attributes[r.choice(RESERVED)]
        v.record_value.fields["not_after"].extension_value.function = "datetime"
        v.record_value.fields["not_after"].extension_value.argument = "2099-01-01T00:00:00Z"
    elif k == 2:
        tb = m.context.time_bound
        target = tb.not_before if r.random() < 0.5 else tb.not_after
        target.seconds = r.choice([-(2**62), -62135596801, 253402300800, 2**62, 0, -1])
        target.nanos = r.choice([0, 999_999_999, 10**9, -1])
    else:
        a = m.context.approval
        _set_ref(a.approver, r.choice(USERS))
        a.approved_at.seconds = r.choice([-(2**62), 253402300800, 2**62])
    return m


def injected(r: random.Random) -> pb.AuthorizeRequest:
    """Entities that declare their own parents and attributes (stored ones and unknown ones)."""
    m = plausible(r)
    who = m.principal if r.random() < 0.6 else m.resource
    if r.random() < 0.6:
        who.id = r.choice(
            ["spiffe://example.org/ns/hr/sa/onboarding", "brand-new", "", who.id + "x"]
        )
    if r.random() < 0.7:
        p = who.parents.add()
        p.type = r.choice(["WorkloadGroup", "Group", "Bogus"])
        p.id = r.choice(["provisioning", "deprovisioning", "admins", _text(r)])
    if r.random() < 0.7:
        name = r.choice(["shared", "sensitivity", "kind", "owner", _text(r, 5)])
        if name == "shared":
            who.attributes[name].bool_value = False
        elif name == "sensitivity":
            who.attributes[name].string_value = "low"
        else:
            _value(r, who.attributes[name], 2)
    return m


def huge(r: random.Random) -> pb.AuthorizeRequest:
    m = plausible(r)
    k = r.randrange(4)
    if k == 0:
        m.context.workflow_id = "w" * r.choice([1000, 60_000, 70_000, 300_000])
    elif k == 1:
        for i in range(r.choice([100, 1000, 5000])):
            m.context.attributes[f"k{i}"].long_value = i
    elif k == 2:
        for i in range(r.choice([100, 2000, 10_000])):
            m.context.attributes["big"].set_value.values.add().long_value = i
    else:
        m.principal.id = "\U0001f600" * r.choice([100, 20_000])
    return m


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def deep_value(depth: int, via_set: bool) -> bytes:
    """A Value nested `depth` records (or sets) deep, encoded by hand: protobuf's own
    encoder may refuse past its recursion limit, the wire does not."""
    v = b"\x08\x01"  # bool_value: true
    for _ in range(depth):
        if via_set:
            v = _len_field(4, _len_field(1, v))  # set_value { values: v }
        else:
            entry = _len_field(1, b"a") + _len_field(2, v)
            v = _len_field(5, _len_field(1, entry))  # record_value { fields: {a: v} }
    return v


def deep(r: random.Random) -> bytes:
    base = plausible(r)
    base.context.attributes.clear()
    depth = r.choice([11, 12, 13, 40, 99, 100, 101, 150, 500, 2000])
    entry = _len_field(1, b"deep") + _len_field(2, deep_value(depth, r.random() < 0.5))
    context = base.context.SerializeToString() + _len_field(10, entry)
    head = pb.AuthorizeRequest()
    head.CopyFrom(base)
    head.ClearField("context")
    return head.SerializeToString() + _len_field(4, context)


def mutated(r: random.Random) -> bytes:
    data = bytearray(plausible(r).SerializeToString())
    for _ in range(1 + r.randrange(4)):
        i = r.randrange(len(data))
        k = r.randrange(3)
        if k == 0:
            data[i] ^= 1 << r.randrange(8)
        elif k == 1:
            data.insert(i, r.randrange(256))
        else:
            del data[i]
    return bytes(data)


def truncated(r: random.Random) -> bytes:
    data = plausible(r).SerializeToString()
    return data[: r.randrange(len(data))]


def wrong_types(r: random.Random) -> bytes:
    """A field sent with another wire type, or an enum value the API does not know."""
    m = plausible(r)
    if r.random() < 0.5:
        m.context.sensitivity = r.choice([5, 99, -1, 2**31 - 1])  # type: ignore[assignment]
        return m.SerializeToString()
    data = m.SerializeToString()
    # principal (field 1) as a varint, action (2) as fixed64, resource (3) as a group start
    bad = r.choice([b"\x08\x01", b"\x11" + b"\x00" * 8, b"\x1b", b"\x25\x00\x00\x00\x00"])
    return bad + data if r.random() < 0.5 else data + bad


def random_bytes(r: random.Random) -> bytes:
    return r.randbytes(r.randrange(1, 400))


def batch(r: random.Random) -> pb.AuthorizeBatchRequest:
    b = pb.AuthorizeBatchRequest()
    size = r.choice([0, 1, 2, 10, 50, 300, 1000, 1001, 3000])
    makers: list[Callable[[random.Random], pb.AuthorizeRequest]] = [
        plausible,
        plausible,
        arbitrary,
        smuggled,
        injected,
        time_games,
    ]
    for _ in range(size):
        b.items.add().CopyFrom(r.choice(makers)(r))
    return b


# kind -> (weight, maker); makers return a message (its bytes are sent) or raw bytes
UNARY: dict[str, tuple[int, Callable[[random.Random], pb.AuthorizeRequest | bytes]]] = {
    "plausible": (30, plausible),
    "arbitrary": (10, arbitrary),
    "smuggled": (9, smuggled),
    "time_games": (7, time_games),
    "injected": (8, injected),
    "huge": (3, huge),
    "deep": (5, deep),
    "mutated": (10, mutated),
    "truncated": (5, truncated),
    "wrong_types": (5, wrong_types),
    "random_bytes": (5, random_bytes),
}
BATCH_WEIGHT = 3


# --- the run -------------------------------------------------------------------------------


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    decisions: dict[str, int] = field(default_factory=dict)  # decision id -> pb decision
    allows: int = 0
    denies: int = 0
    invalid: int = 0
    item_invalid: int = 0
    other: Counter[str] = field(default_factory=Counter)
    other_examples: list[str] = field(default_factory=list)
    unnamed: list[str] = field(default_factory=list)
    wrongful: list[str] = field(default_factory=list)
    duplicate_ids: int = 0
    deaths: list[int | None] = field(default_factory=list)

    def decided(
        self, resp: pb.AuthorizeResponse, msg: pb.AuthorizeRequest | None, oracle: Oracle
    ) -> None:
        if resp.decision_id in self.decisions:
            self.duplicate_ids += 1
        self.decisions[resp.decision_id] = resp.decision
        if resp.decision == pb.DECISION_ALLOW:
            self.allows += 1
            if msg is None or not oracle.allows(msg):
                self.wrongful.append(repr(msg)[:300] if msg is not None else "unparsable bytes")
        else:
            self.denies += 1

    def refused(self, message: str) -> None:
        if not FIELD_PATH.match(message) and len(self.unnamed) < 1000:
            self.unnamed.append(message[:200])


def _parse(data: bytes) -> pb.AuthorizeRequest | None:
    try:
        return pb.AuthorizeRequest.FromString(data)
    except Exception:
        return None


async def _one(
    channel: grpc.aio.Channel, kind: str, payload: bytes, tally: Tally, oracle: Oracle
) -> str | None:
    """Send one call; return a status name when the server seemed to go away."""
    try:
        if kind == "batch":
            raw = await channel.unary_unary(BATCH, None, None)(payload, timeout=30)
            resp_b = pb.AuthorizeBatchResponse.FromString(raw)
            items = pb.AuthorizeBatchRequest.FromString(payload).items
            for item, result in zip(items, resp_b.results, strict=True):
                if result.HasField("response"):
                    tally.decided(result.response, item, oracle)
                elif result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]:
                    tally.item_invalid += 1
                    tally.refused(result.error.message.partition(".")[2])
                else:
                    tally.other[f"batch item code {result.error.code}"] += 1
        else:
            raw = await channel.unary_unary(AUTHORIZE, None, None)(payload, timeout=30)
            tally.decided(pb.AuthorizeResponse.FromString(raw), _parse(payload), oracle)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            tally.invalid += 1
            tally.refused(exc.details() or "")
            return None
        tally.other[code.name] += 1
        if len(tally.other_examples) < 20:
            tally.other_examples.append(f"{kind}: {code.name}: {(exc.details() or '')[:160]}")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return code.name
    return None


def _payloads(r: random.Random, count: int) -> list[tuple[str, bytes]]:
    kinds = [*UNARY, "batch"]
    weights = [w for w, _ in UNARY.values()] + [BATCH_WEIGHT]
    out: list[tuple[str, bytes]] = []
    for kind in r.choices(kinds, weights, k=count):
        if kind == "batch":
            out.append((kind, batch(r).SerializeToString()))
            continue
        made = UNARY[kind][1](r)
        out.append((kind, made if isinstance(made, bytes) else made.SerializeToString()))
    return out


async def _drive(server: Server, oracle: Oracle, args: argparse.Namespace, tally: Tally) -> None:
    r = random.Random(args.seed)
    sent = 0
    chunk = 2000
    while sent < args.requests:
        payloads = _payloads(r, min(chunk, args.requests - sent))
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        for p in payloads:
            queue.put_nowait(p)
        async with grpc.aio.insecure_channel(
            server.target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        ) as channel:

            async def client(
                ch: grpc.aio.Channel = channel, queue: asyncio.Queue[tuple[str, bytes]] = queue
            ) -> None:
                while not queue.empty():
                    kind, payload = queue.get_nowait()
                    tally.sent[kind] += 1
                    trouble = await _one(ch, kind, payload, tally, oracle)
                    if trouble and not server.alive():
                        tally.deaths.append(server.stop())
                        server.start()
                        return

            await asyncio.gather(*(client() for _ in range(args.clients)))
        if not server.alive():
            tally.deaths.append(server.stop())
            server.start()
        sent += len(payloads)
        if args.progress and sys.stderr.isatty():
            print(f"\r{sent}/{args.requests} sent", end="", file=sys.stderr, flush=True)
    if args.progress and sys.stderr.isatty():
        print(file=sys.stderr)


def _trail(audit: Path) -> tuple[Counter[str], dict[str, str]]:
    from sidecar.audit.query import events
    from sidecar.audit.segments import collect

    counts: Counter[str] = Counter()
    recorded: dict[str, str] = {}
    for event in events(collect([audit])):
        eid = event.get("id") or event.get("decision_id")
        if not isinstance(eid, str) or "decision" not in event:
            continue
        counts[eid] += 1
        recorded[eid] = str(event["decision"])
    return counts, recorded


def run(args: argparse.Namespace) -> dict[str, Any]:
    oracle = Oracle(Path(args.policies))
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    commit = machine.commit()  # the code measured: taken before the run
    with tempfile.TemporaryDirectory(prefix="stepguard-fuzz-") as tmp:
        server = Server(Path(tmp) / "audit.jsonl", Path(args.policies))
        server.start()
        # warm up on plausible requests, so "before" is a serving process
        warm = Tally()
        warm_args = argparse.Namespace(**{**vars(args), "requests": 500, "seed": args.seed + 1})
        saved = dict(UNARY)
        UNARY.clear()
        UNARY["plausible"] = saved["plausible"]
        try:
            asyncio.run(_drive(server, oracle, warm_args, warm))
        finally:
            UNARY.update(saved)
        rss_before = server.rss_kib()
        oracle.checked = 0
        tally = Tally()
        started = time.monotonic()
        asyncio.run(_drive(server, oracle, args, tally))
        elapsed = time.monotonic() - started
        rss_after = server.rss_kib()
        exit_code = server.stop()
        counts, recorded = _trail(server.audit)
    received = {**warm.decisions, **tally.decisions}
    missing = [d for d in received if counts[d] == 0]
    twice = [d for d in received if counts[d] > 1]
    names: dict[int, str] = {pb.DECISION_ALLOW: "ALLOW", pb.DECISION_DENY: "DENY"}
    mismatched = [d for d, v in received.items() if d in recorded and recorded[d] != names.get(v)]
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "started": started_at,
        "commit": commit,
        "seed": args.seed,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "calls": sum(tally.sent.values()),
        "calls_by_kind": dict(sorted(tally.sent.items())),
        "decisions": len(tally.decisions),
        "allows": tally.allows,
        "denies": tally.denies,
        "invalid_argument_calls": tally.invalid,
        "invalid_argument_items": tally.item_invalid,
        "server_deaths": len(tally.deaths),
        "server_exit_at_stop": exit_code,
        "other_errors": dict(tally.other),
        "other_error_examples": tally.other_examples,
        "refusals_without_field_path": len(tally.unnamed),
        "refusal_examples_without_field_path": tally.unnamed[:10],
        "allows_checked_by_cedar": oracle.checked,
        "wrongful_allows": len(tally.wrongful),
        "wrongful_allow_examples": tally.wrongful[:5],
        "duplicate_decision_ids": tally.duplicate_ids,
        "audit_events_per_decision": round(
            sum(counts[d] for d in received) / max(1, len(received)), 6
        ),
        "decisions_missing_from_trail": len(missing),
        "decisions_recorded_twice": len(twice),
        "decisions_recorded_otherwise": len(mismatched),
        "rss_mib_before": round(rss_before / 1024, 1),
        "rss_mib_after": round(rss_after / 1024, 1),
    }


def verdict(summary: dict[str, Any]) -> list[str]:
    """What the run found wrong; empty when nothing was."""
    found = []
    for key in (
        "server_deaths",
        "wrongful_allows",
        "decisions_missing_from_trail",
        "decisions_recorded_twice",
        "decisions_recorded_otherwise",
        "duplicate_decision_ids",
        "refusals_without_field_path",
    ):
        if summary[key]:
            found.append(f"{key}: {summary[key]}")
    if summary["other_errors"]:
        found.append(f"other_errors: {summary['other_errors']}")
    return found


def render(summary: dict[str, Any]) -> str:
    rows = [
        ("calls sent (unary and batch)", f"{summary['calls']:,}"),
        (
            "decisions received (ALLOW / DENY)",
            f"{summary['decisions']:,} ({summary['allows']:,} / {summary['denies']:,})",
        ),
        (
            "INVALID_ARGUMENT (calls / batch items)",
            f"{summary['invalid_argument_calls']:,} / {summary['invalid_argument_items']:,}",
        ),
        ("refusals whose message names no field", f"{summary['refusals_without_field_path']}"),
        ("other error statuses", json.dumps(summary["other_errors"]) or "{}"),
        ("server deaths", f"{summary['server_deaths']}"),
        ("ALLOWs checked against cedarpy", f"{summary['allows_checked_by_cedar']:,}"),
        ("wrongful ALLOWs", f"{summary['wrongful_allows']}"),
        ("audit events per decision received", f"{summary['audit_events_per_decision']}"),
        (
            "decisions missing from the trail / twice / otherwise",
            f"{summary['decisions_missing_from_trail']} / {summary['decisions_recorded_twice']}"
            f" / {summary['decisions_recorded_otherwise']}",
        ),
        (
            "server RSS after warm-up / at the end",
            f"{summary['rss_mib_before']} MiB / {summary['rss_mib_after']} MiB",
        ),
        ("wall time", f"{summary['seconds']} s"),
    ]
    kinds = ", ".join(f"{k} {v:,}" for k, v in summary["calls_by_kind"].items())
    lines = [
        f"Run {summary['date']} on {summary['commit']}, seed {summary['seed']}, "
        f"{summary['clients']} clients:",
        "",
        "| measure | value |",
        "|---|---|",
        *(f"| {a} | {b} |" for a, b in rows),
        "",
        f"Calls by kind: {kinds}.",
    ]
    found = verdict(summary)
    lines.append("")
    lines.append("Verdict: " + ("nothing wrong found." if not found else "; ".join(found)))
    return "\n".join(lines)


def write_results(summary: dict[str, Any], command: str) -> None:
    """The "Fuzz at scale" block of RESULTS.md, and the run's summary under benchmarks/data/."""
    data = save_data("fuzz", summary["started"], summary)
    body = (
        f"## Fuzz at scale\n\nCommand: `{command}`, run {summary['started']} on commit "
        f"{summary['commit']}; data: `{data.relative_to(ROOT)}`.\n\n{render(summary)}\n"
    )
    write_block(RESULTS, "fuzz", command, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--requests", type=int, default=100_000, help="calls to send (default 100000)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument(
        "--policies", default=str(POLICIES), help="policy bundle (default policies/)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--write", action="store_true", help="record the table in RESULTS.md")
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress line on a terminal",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--audit-file", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args)
    summary = run(args)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(render(summary))
    if args.write:
        command = "python -m benchmarks.fuzz " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]) if a != "--write"
        )
        write_results(summary, command.strip())
    return 1 if verdict(summary) else 0


if __name__ == "__main__":
    sys.exit(main())
