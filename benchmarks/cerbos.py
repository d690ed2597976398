"""The peer: Cerbos 0.55, installed by the benchmark, driven through its own gRPC stubs.

The server binary comes from the npm registry (`@cerbos/cerbos-linux-x64`,
installed with npm into benchmarks/.work/cerbos, never committed); the
request and service stubs come from the `cerbos` package on PyPI (the `bench`
extra). Cerbos serves a resource policy equivalent to the example bundle's
rules for identity changes on loopback, with its file audit log on (decision
logs), and is called with CheckResources, one resource or a batch.

Cerbos has no entity store or Cedar-style context, so the step's facts travel
as resource attributes, and group membership as principal roles and
attribute lists, the way Cerbos users model it.
"""

from __future__ import annotations

import importlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from benchmarks.procs import WORK, Running, process

VERSION = "0.55.0"
PACKAGE = f"@cerbos/cerbos-linux-x64@{VERSION}"
HOME = WORK / "cerbos"
BINARY = HOME / "node_modules" / "@cerbos" / "cerbos-linux-x64" / "cerbos-linux-x64"
CHECK = "/cerbos.svc.v1.CerbosService/CheckResources"

# The example bundle's identity-change rules, as a Cerbos resource policy:
# provisioning workloads may change identities with an independent approval
# from an identity approver, in an owned workflow; nothing runs outside its
# time bound or as a shared identity; high and critical targets outside
# business hours need a break-glass approval.
POLICY = """\
apiVersion: api.cerbos.dev/v1
resourcePolicy:
  version: default
  resource: target_system
  rules:
    - name: provisioning-workloads-change-identities
      actions: ["create_account", "grant_access", "change_access", "issue_credential"]
      effect: EFFECT_ALLOW
      roles: ["provisioning"]
      condition:
        match:
          all:
            of:
              - expr: has(R.attr.approver) && has(R.attr.requester)
              - expr: R.attr.approver in ["ines", "dana"]
              - expr: R.attr.approver != R.attr.requester
              - expr: has(R.attr.workflow_owner) && R.attr.workflow_owner != ""
    - name: step-runners-read-and-notify
      actions: ["lookup_identity", "notify"]
      effect: EFFECT_ALLOW
      roles: ["step-runner"]
    - name: step-outside-time-bound-or-shared
      actions: ["*"]
      effect: EFFECT_DENY
      roles: ["*"]
      condition:
        match:
          any:
            of:
              - expr: has(R.attr.not_before) && now() < timestamp(R.attr.not_before)
              - expr: has(R.attr.not_after) && now() > timestamp(R.attr.not_after)
              - expr: P.attr.shared == true
    - name: sensitive-target-after-hours-requires-break-glass
      actions: ["create_account", "grant_access", "change_access", "issue_credential"]
      effect: EFFECT_DENY
      roles: ["*"]
      condition:
        match:
          all:
            of:
              - expr: '!(R.attr.sensitivity in ["low", "medium"])'
              - expr: >-
                  !(now().getDayOfWeek("UTC") in [1, 2, 3, 4, 5] &&
                  now().getHours("UTC") >= 8 && now().getHours("UTC") < 18)
              - expr: '!(has(R.attr.ticket) && R.attr.ticket.startsWith("BG-"))'
"""

CONFIG = """\
server:
  grpcListenAddr: "127.0.0.1:{grpc_port}"
  httpListenAddr: "127.0.0.1:{http_port}"
storage:
  driver: disk
  disk:
    directory: {policies}
    watchForChanges: false
audit:
  enabled: true
  accessLogsEnabled: false
  decisionLogsEnabled: true
  backend: file
  file:
    path: {audit}
telemetry:
  disabled: true
"""


def install() -> Path:
    """The Cerbos binary, installed from npm into benchmarks/.work/cerbos if absent."""
    if not BINARY.exists():
        HOME.mkdir(parents=True, exist_ok=True)
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is needed to install Cerbos for the peer benchmark")
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(HOME), PACKAGE],
            check=True,
            capture_output=True,
        )
    version = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True)
    if VERSION not in version.stdout:
        raise RuntimeError(f"expected Cerbos {VERSION}, got {version.stdout.strip()!r}")
    return BINARY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def server() -> Iterator[Running]:
    """Cerbos serving POLICY on loopback, audit decision logs to a file."""
    binary = install()
    policies = HOME / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "target_system.yaml").write_text(POLICY)
    audit = HOME / "audit.log"
    audit.unlink(missing_ok=True)
    grpc_port, http_port = _free_port(), _free_port()
    config = HOME / "config.yaml"
    config.write_text(
        CONFIG.format(grpc_port=grpc_port, http_port=http_port, policies=policies, audit=audit)
    )
    target = f"127.0.0.1:{grpc_port}"
    request = check_request(1)

    def ready() -> bool:
        try:
            with grpc.insecure_channel(target) as ch:
                call = ch.unary_unary(
                    CHECK, request_serializer=lambda b: b, response_deserializer=lambda b: b
                )
                call(request, timeout=1)
            return True
        except grpc.RpcError:
            return False

    argv = [str(binary), "server", f"--config={config}", "--log-level=error"]
    with process("cerbos", argv, ready) as pid:
        yield Running("cerbos", target, "-", pid)


def _value(v: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, str):
        out.string_value = v
    else:
        out.number_value = float(v)
    return out


def _stubs(name: str) -> Any:
    """`cerbos.<name>.v1.<name>_pb2` from the bench extra, untyped alike whether mypy can see
    the package or not (its generated modules carry no type information)."""
    return importlib.import_module(f"cerbos.{name}.v1.{name}_pb2")


def check_request(resources: int, *, run: int = 0, now: datetime | None = None) -> bytes:
    """CheckResources for the example step (grant_access on jira), `resources` times."""
    engine_pb2 = _stubs("engine")
    request_pb2 = _stubs("request")

    now = now or datetime.now(UTC)
    attrs = {
        "sensitivity": "medium",
        "requester": "maria",
        "approver": "ines",
        "ticket": "CHG-1234",
        "workflow_id": "onboarding",
        "workflow_owner": "olga",
        "run_id": f"run-{run}",
        "step_id": "grant-jira",
        "not_before": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    req = request_pb2.CheckResourcesRequest(
        request_id=f"r{run}",
        principal=engine_pb2.Principal(
            id="spiffe://example.org/ns/identity/sa/provisioner",
            roles=["provisioning", "step-runner"],
            attr={"shared": _value(False)},
        ),
    )
    for i in range(resources):
        entry = req.resources.add()
        entry.actions.append("grant_access")
        entry.resource.kind = "target_system"
        entry.resource.id = f"jira-{i}" if resources > 1 else "jira"
        for k, v in attrs.items():
            entry.resource.attr[k].CopyFrom(_value(v))
    # Typed here: without the bench extra (CI's venv) the Cerbos stubs are Any.
    wire: bytes = req.SerializeToString()
    return wire


@dataclass(frozen=True, slots=True)
class Checked:
    effects: tuple[str, ...]


def decode(raw: bytes) -> Checked:
    """The effect of each resource's action in a CheckResources answer."""
    effect_pb2 = _stubs("effect")
    response_pb2 = _stubs("response")

    resp = response_pb2.CheckResourcesResponse.FromString(raw)
    return Checked(tuple(effect_pb2.Effect.Name(r.actions["grant_access"]) for r in resp.results))
