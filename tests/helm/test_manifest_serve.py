"""The chart's stepguard container, run for real from the rendered manifest.

Helm's own engine renders the chart (tests/helm/test_helm_chart.py); from the pod
that carries the sidecar this test takes the container's command (or the
image's ENTRYPOINT from the Dockerfile, which Kubernetes uses when a container
gives none), arguments, environment, ports, volume mounts and probes. It lays
out the pod's volumes in a temporary directory (the policy ConfigMap's data
as the kubelet would project it, a TLS Secret made here, emptyDirs), remaps
container paths into it and container ports to free loopback ports, and
starts the real `stepguard serve`. Then it runs the startup, readiness and
liveness probes as the kubelet would (native gRPC health checks, or the exec
command, `stepguard healthcheck`) and asks for decisions over the Unix socket
the worker is given.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.client import StepDecision, StepguardClient, channel_credentials
from tests.helm.test_helm_chart import (
    NAMESPACE,
    Manifest,
    container,
    containers,
    find,
    render,
    sidecar_container_from_manifest,
    stepguard_pod,
)
from tests.pki import Authority

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
POD_NAME = "sg-stepguard-worker-0"
STEPGUARD_BIN = str(Path(sys.executable).with_name("stepguard"))
WORKLOAD_ID = "spiffe://example.org/ns/workflows/sa/etl-worker"


def run_step(sensitivity: str) -> dict[str, Any]:
    """A step in the chart's example bundle: it permits low-sensitivity steps only."""
    return {
        "principal": {"type": "Workload", "id": WORKLOAD_ID},
        "action": {"type": "Action", "id": "RunStep"},
        "resource": {"type": "Step", "id": "extract"},
        "context": {"workflow_id": "etl", "run_id": "r1", "sensitivity": sensitivity},
    }


def evaluate_over_https(port: int, context: ssl.SSLContext, workload: str) -> Manifest:
    """`run_step("low")` for `workload` as an AuthZEN evaluation, with its decision id."""
    step = run_step("low")
    body = {
        "subject": {"type": "Workload", "id": workload},
        "action": {"name": step["action"]["id"]},
        "resource": step["resource"],
        "context": step["context"],
        "options": {"stepguard_explain": True},
    }
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request(
            "POST", "/access/v1/evaluation", json.dumps(body), {"Content-Type": "application/json"}
        )
        reply = conn.getresponse()
        assert reply.status == 200, reply.read()
        answer: Manifest = json.loads(reply.read())
        return answer
    finally:
        conn.close()


def image_entrypoint() -> list[str]:
    """The image's ENTRYPOINT (exec form), which runs when a container sets no command."""
    if not DOCKERFILE.is_file():
        pytest.fail(f"{DOCKERFILE} is missing: the chart's container uses the image's entrypoint")
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    assert m, "the Dockerfile has no exec-form ENTRYPOINT"
    entrypoint: list[str] = json.loads(m.group(1))
    return entrypoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Pod:
    """The sidecar container of a rendered pod, mapped onto this machine."""

    root: Path
    mounts: dict[str, Path]  # container mount path -> host directory
    ports: dict[int, int] = field(default_factory=dict)  # containerPort -> loopback port

    def path(self, value: str) -> str:
        """A container path (or unix:// target) as the host path of its volume."""
        prefix = "unix://" if value.startswith("unix://") else ""
        text = value.removeprefix(prefix)
        if not text.startswith("/"):
            return value
        target = PurePosixPath(text)
        for mount in sorted(self.mounts, key=len, reverse=True):
            if target == PurePosixPath(mount) or PurePosixPath(mount) in target.parents:
                rest = target.relative_to(mount)
                return prefix + str(self.mounts[mount] / rest)
        raise AssertionError(f"{value} is outside every volume mount: the read-only root has it")

    def address(self, value: str) -> str:
        """HOST:PORT the container listens on -> 127.0.0.1 and a free port."""
        host, _, port = value.rpartition(":")
        assert int(port) in self.ports, f"{value}: port {port} is not a declared containerPort"
        assert host in ("0.0.0.0", "[::]", "127.0.0.1", "localhost"), value
        return f"127.0.0.1:{self.ports[int(port)]}"

    def argument(self, value: str) -> str:
        if re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[0-9.]+|localhost):[0-9]+", value):
            return self.address(value)
        return self.path(value)


def lay_out_volumes(
    root: Path, pod_spec: Manifest, ctr: Manifest, docs: list[Manifest], secrets: Mapping[str, Any]
) -> dict[str, Path]:
    """Each volume the container mounts, as a directory with what the kubelet puts there."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in ctr.get("volumeMounts", []):
        spec = volumes[mount["name"]]
        directory = root / mount["name"]
        directory.mkdir(parents=True, exist_ok=True)
        if "configMap" in spec:
            config_map = find(docs, "ConfigMap", spec["configMap"]["name"])
            _project(directory, config_map.get("data", {}), spec["configMap"].get("items"))
        elif "secret" in spec:
            name = spec["secret"]["secretName"]
            assert name in secrets, f"the test provides no Secret {name!r}"
            mode = spec["secret"].get("defaultMode")
            _project(directory, secrets[name], spec["secret"].get("items"), mode)
        elif "persistentVolumeClaim" in spec:
            pass  # a claim: an empty directory the first time, kept across pods
        else:
            assert "emptyDir" in spec, f"volume {mount['name']}: unexpected source {spec}"
        mounts[mount["mountPath"]] = directory
    return mounts


def _project(
    directory: Path,
    data: Mapping[str, Any],
    items: list[Manifest] | None,
    default_mode: int | None = None,
) -> None:
    """Lay out ConfigMap or Secret data as the kubelet's atomic writer does.

    The files live in a timestamped dot-directory, `..data` links to it, and
    each key is a symlink through `..data`, so an update is one rename.
    """
    chosen = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
    payload = directory / "..2026_11_25_10_00_00.000000001"
    for key, rel in chosen.items():
        value = data[key]
        target = payload / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(value if isinstance(value, bytes) else str(value).encode())
        if default_mode is not None:  # the kubelet applies the Secret volume's defaultMode
            target.chmod(default_mode)
    (directory / "..data").symlink_to(payload.name)
    for rel in {PurePosixPath(r).parts[0] for r in chosen.values()}:
        (directory / rel).symlink_to(f"..data/{rel}")


def probe_once(pod: Pod, probe: Manifest, env: Mapping[str, str]) -> tuple[bool, str]:
    """One probe, the kubelet's way: gRPC health (plaintext) or an exec command."""
    timeout = float(probe.get("timeoutSeconds", 1))
    if "grpc" in probe:
        target = f"127.0.0.1:{pod.ports[int(probe['grpc']['port'])]}"
        request = health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", ""))
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout)
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
        return reply.status == health_pb2.HealthCheckResponse.SERVING, str(reply.status)
    command = [str(c) for c in probe["exec"]["command"]]
    assert command[:2] == ["stepguard", "healthcheck"], f"exec probe runs {command[:2]!r}"
    argv = [str(Path(sys.executable).with_name("stepguard"))]
    argv += [pod.path(c) for c in command[1:]]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=dict(env), check=False
        )
    except subprocess.TimeoutExpired:
        return False, "timed out"
    return done.returncode == 0, done.stderr.strip()


@dataclass
class Started:
    pod: Pod
    proc: subprocess.Popen[bytes]
    argv: list[str]
    env: dict[str, str]
    stdout: Path
    stderr: Path
    socket: str  # the worker's target, unix://...
    probes: dict[str, Manifest]
    named_ports: dict[str, int]  # port name -> loopback port

    def port(self, name: str) -> int:
        return self.named_ports[name]


@contextmanager
def serve_from_chart(
    values_file: str, secrets: Mapping[str, Any] | None = None
) -> Iterator[Started]:
    rendered = render(values_file)
    docs = rendered.documents
    pod_spec = stepguard_pod(docs)
    ctr = container(pod_spec, "stepguard")
    downward = {"POD_NAME": POD_NAME, "POD_NAMESPACE": NAMESPACE}
    sidecar = sidecar_container_from_manifest(rendered.manifest, env=downward)
    command = [str(c) for c in ctr.get("command") or image_entrypoint()]
    assert command[0] == "stepguard", command
    # A short directory: Unix socket paths are limited to about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="sg-") as tmp:
        root = Path(tmp)
        pod = Pod(root, lay_out_volumes(root, pod_spec, ctr, docs, secrets or {}))
        pod.ports = {p: free_port() for p in sidecar["ports"].values()}
        args = [pod.argument(a) for a in sidecar["args"]]
        literal = {e["name"]: str(e["value"]) for e in ctr.get("env", []) if "value" in e}
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEPGUARD_")}
        env.update(downward)
        env.update(literal)
        executable = Path(sys.executable).with_name("stepguard")
        argv = [str(executable), *command[1:], *args]
        stdout, stderr = root / "stdout", root / "stderr"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=root)
        worker = next(
            (
                e["value"]
                for c in containers(pod_spec)
                if c["name"] != "stepguard"
                for e in c.get("env", [])
                if e["name"] == "STEPGUARD_ADDRESS"
            ),
            None,
        )
        (socket_arg,) = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--socket"]
        target = pod.path(worker) if worker else f"unix://{socket_arg}"
        named = {name: pod.ports[p] for name, p in sidecar["ports"].items()}
        started = Started(pod, proc, argv, env, stdout, stderr, target, sidecar["probes"], named)
        try:
            yield started
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_started(started: Started) -> int:
    """The startup probe: retried every periodSeconds, up to failureThreshold times."""
    probe = started.probes["startup"]
    time.sleep(float(probe.get("initialDelaySeconds", 0)))
    last = ""
    for attempt in range(1, int(probe.get("failureThreshold", 3)) + 1):
        code = started.proc.poll()
        assert code is None, (
            f"{' '.join(started.argv)}\nexited with {code}:\n{started.stderr.read_text()}"
        )
        ok, last = probe_once(started.pod, probe, started.env)
        if ok:
            return attempt
        time.sleep(float(probe.get("periodSeconds", 10)))
    raise AssertionError(f"the startup probe never succeeded: {last}")


def check_probes(started: Started) -> None:
    assert set(started.probes) == {"startup", "readiness", "liveness"}
    wait_started(started)
    for kind in ("readiness", "liveness"):
        ok, detail = probe_once(started.pod, started.probes[kind], started.env)
        assert ok, f"{kind} probe failed: {detail}\n{started.stderr.read_text()}"


def stop_cleanly(started: Started) -> str:
    """SIGTERM as the kubelet sends it; serve drains, exits 0; returns its stdout."""
    started.proc.send_signal(signal.SIGTERM)
    assert started.proc.wait(timeout=30) == 0, started.stderr.read_text()
    return started.stdout.read_text()


def audited(stdout: str, decision: StepDecision) -> Manifest:
    """The audit event (JSON line on stdout, --audit-file -) of one decision."""
    events: list[Manifest] = [
        json.loads(line) for line in stdout.splitlines() if line.startswith("{")
    ]
    found = [e for e in events if e.get("id") == decision.decision_id]
    assert len(found) == 1, f"decision {decision.decision_id} not audited once on stdout"
    return found[0]


@pytest.mark.parametrize("values_file", ["example-worker-values.yaml", "socket-only-values.yaml"])
def test_sidecar_from_the_chart_serves_the_worker_over_its_socket(values_file: str) -> None:
    with serve_from_chart(values_file) as started:
        check_probes(started)
        assert started.socket.startswith("unix://")
        with StepguardClient(started.socket, timeout=5) as worker:
            allowed = worker.authorize(run_step("low"))
            denied = worker.authorize(run_step("high"))
        assert allowed.allowed, allowed.reason
        assert allowed.determining_policies == ("example-permit-low-sensitivity",)
        assert allowed.max_credential_ttl is not None
        assert allowed.max_credential_ttl.total_seconds() == 15 * 60
        assert not denied.allowed
        assert denied.reason == "denied: no policy permits this request"
        metrics = f"http://127.0.0.1:{started.port('sg-metrics')}/metrics"
        with urllib.request.urlopen(metrics, timeout=5) as reply:
            exposition = reply.read().decode()
        assert re.search(
            r'^stepguard_decisions_total\{[^}]*decision="ALLOW"[^}]*\} 1\.0$', exposition, re.M
        )
        stdout = stop_cleanly(started)
    assert audited(stdout, allowed)["decision"] == "ALLOW"
    assert audited(stdout, denied)["decision"] == "DENY"


def test_production_values_keep_a_keyed_trail_on_the_claim() -> None:
    """production-values.yaml: the trail on the claim, keyed from the Secret (mode 0400)."""
    key = os.urandom(32)
    secrets = {"stepguard-audit-key": {"hmac.key": key}}
    with serve_from_chart("production-values.yaml", secrets) as started:
        check_probes(started)
        with StepguardClient(started.socket, timeout=5) as worker:
            allowed = worker.authorize(run_step("low"))
        assert allowed.allowed, allowed.reason
        args = started.argv
        key_file = Path(args[args.index("--audit-hmac-key-file") + 1])
        trail = Path(args[args.index("--audit-file") + 1])
        assert key_file.stat().st_mode & 0o777 == 0o400
        assert allowed.decision_id not in stop_cleanly(started)  # not on stdout: in the file
        assert allowed.decision_id in trail.read_text()
        verify = subprocess.run(
            [STEPGUARD_BIN, "audit", "verify", str(trail), "--key-file", str(key_file)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "hmac" in verify.stdout.lower()
        wrong = started.pod.root / "wrong.key"
        wrong.write_bytes(os.urandom(32))
        wrong.chmod(0o400)
        refused = subprocess.run(
            [STEPGUARD_BIN, "audit", "verify", str(trail), "--key-file", str(wrong)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode != 0


def test_standalone_mtls_from_the_chart_binds_workloads_to_their_certificates() -> None:
    """tls-values.yaml: mTLS on TCP, workload binding, exec probes over the socket."""
    domain = Authority("example.org trust domain")
    server = domain.issue(server=True)
    secret = {"tls.crt": server.cert, "tls.key": server.key, "ca.crt": domain.pem}
    with serve_from_chart("tls-values.yaml", {"stepguard-tls": secret}) as started:
        check_probes(started)
        grpc_port = started.port("sg-grpc")
        files = started.pod.root / "client"
        files.mkdir()
        (files / "roots.pem").write_bytes(domain.pem)
        svid = domain.issue(spiffe=WORKLOAD_ID)
        (files / "svid.crt").write_bytes(svid.cert)
        (files / "svid.key").write_bytes(svid.key)
        creds = channel_credentials(files / "roots.pem", files / "svid.crt", files / "svid.key")
        with StepguardClient(f"127.0.0.1:{grpc_port}", credentials=creds, timeout=5) as client:
            own = client.authorize(run_step("low"))
            other = run_step("low")
            other["principal"]["id"] = "spiffe://example.org/ns/workflows/sa/someone-else"
            foreign = client.authorize(other)
        with StepguardClient(started.socket, timeout=5) as local:
            unauthenticated = local.authorize(run_step("low"))
        with StepguardClient(f"127.0.0.1:{grpc_port}", timeout=5) as plaintext:
            refused = plaintext.authorize(run_step("low"))
        # AuthZEN on its own port: HTTPS with the same certificate and client CA.
        https = ssl.create_default_context(cafile=str(files / "roots.pem"))
        https.load_cert_chain(files / "svid.crt", files / "svid.key")
        authzen = started.port("sg-authzen")
        own_http = evaluate_over_https(authzen, https, WORKLOAD_ID)
        foreign_http = evaluate_over_https(authzen, https, "spiffe://example.org/ns/x/sa/y")
        with pytest.raises((ssl.SSLError, ConnectionError)):  # no client certificate
            evaluate_over_https(
                authzen, ssl.create_default_context(cafile=str(files / "roots.pem")), WORKLOAD_ID
            )
        stdout = stop_cleanly(started)
    assert own.allowed, own.reason
    assert audited(stdout, own)["caller"]["identity"] == WORKLOAD_ID
    assert not foreign.allowed
    assert "does not match the caller's certificate SPIFFE ID" in foreign.reason
    assert audited(stdout, foreign)["decision"] == "DENY"
    assert not unauthenticated.allowed
    assert "not authenticated" in unauthenticated.reason
    assert not refused.allowed and "UNAVAILABLE" in refused.reason
    assert own_http["decision"] is True
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    events = {e.get("id"): e for e in lines}
    assert events[own_http["context"]["decision_id"]]["caller"]["identity"] == WORKLOAD_ID
    assert foreign_http["decision"] is False
    assert "workload identity binding" in events[foreign_http["context"]["decision_id"]]["reason"]
