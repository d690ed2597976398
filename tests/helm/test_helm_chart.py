"""The Helm chart, rendered by Helm's own engine and checked the way a cluster would.

helm-python-sdk embeds the real Helm engine (templates, values.schema.json,
lint); kubernetes-validate holds the Kubernetes OpenAPI schemas and, in strict
mode, rejects misspelled fields. Neither needs a cluster, Docker or a helm
binary. Every values file in helm/stepguard/ci/ is rendered, linted and
validated; the assertions cover what the schemas cannot: security settings,
probes, the socket shared by worker and sidecar, selectors matching labels.

`sidecar_container_from_manifest` is for other tests: it pulls the stepguard
container's arguments, ports and probes out of a rendered manifest, so a test
can start the real `stepguard serve` the way the chart would.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, TypedDict

import helm_python
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "stepguard"
CI_DIR = CHART / "ci"
KUBE_VERSION = "1.30.0"
NAMESPACE = "workflows"
RELEASE = "sg"
AUTHORIZER = "stepguard.v1.Authorizer"
# Kinds without a schema in kubernetes-validate (CRDs), checked field by field below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}

Manifest = dict[str, Any]


# --------------------------------------------------------------------------- helpers


def merge_values(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Combine values as `helm -f a.yaml -f b.yaml` does: maps merge, others replace."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if value is None:
            merged.pop(key, None)
        elif isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_values(old, value)
        else:
            merged[key] = value
    return merged


def values_for(*files: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Values from files in helm/stepguard/ci/, in order, then `overrides`."""
    values: dict[str, Any] = {}
    for name in files:
        read: dict[str, Any] = helm_python.values_from_yaml((CI_DIR / name).read_text())
        values = merge_values(values, read)
    return merge_values(values, overrides or {})


class Rendered(NamedTuple):
    manifest: str
    notes: str
    documents: list[Manifest]


def render(
    *files: str, overrides: Mapping[str, Any] | None = None, chart: Path = CHART
) -> Rendered:
    """`helm template`: render with the real engine; schema and template errors raise."""
    values = values_for(*files, overrides=overrides)
    with helm_python.Config(storage_driver="memory", namespace=NAMESPACE) as cfg:
        release: dict[str, Any] = cfg.install(chart, RELEASE, values, dry_run="client")
    manifest = str(release.get("manifest", ""))  # absent when nothing renders
    documents = [doc for doc in yaml.safe_load_all(manifest) if doc]
    return Rendered(manifest, str(release.get("notes", "")), documents)


def render_error(overrides: Mapping[str, Any]) -> str:
    """The message Helm fails with for these values (the test fails if it renders)."""
    with pytest.raises(helm_python.HelmError) as caught:
        render(overrides=overrides)
    return str(caught.value)


def find(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    matches = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


def kinds(docs: list[Manifest]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def pod_templates(docs: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """(workload, its pod template) for every workload in the manifest."""
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            yield doc, doc["spec"]["template"]


def containers(pod_spec: Manifest) -> list[Manifest]:
    return [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]


def stepguard_pod(docs: list[Manifest]) -> Manifest:
    """The pod spec that carries the stepguard container."""
    pods: list[Manifest] = [
        tpl["spec"]
        for _, tpl in pod_templates(docs)
        if any(c["name"] == "stepguard" for c in containers(tpl["spec"]))
    ]
    assert len(pods) == 1, f"expected one pod with stepguard, got {len(pods)}"
    return pods[0]


def container(pod_spec: Manifest, name: str) -> Manifest:
    found: list[Manifest] = [c for c in containers(pod_spec) if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r}, got {len(found)}"
    return found[0]


def flag(args: list[str], name: str) -> list[str]:
    """Every value given to `name` (flags take their value as the next argument)."""
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == name]


def volume(pod_spec: Manifest, name: str) -> Manifest:
    found: list[Manifest] = [v for v in pod_spec.get("volumes", []) if v["name"] == name]
    assert len(found) == 1, f"expected one volume {name!r}, got {len(found)}"
    return found[0]


def mount(ctr: Manifest, name: str) -> Manifest:
    found: list[Manifest] = [m for m in ctr.get("volumeMounts", []) if m["name"] == name]
    assert len(found) == 1, f"{ctr['name']}: expected one mount of {name!r}, got {len(found)}"
    return found[0]


def is_subset(small: Mapping[str, Any], big: Mapping[str, Any]) -> bool:
    return all(big.get(k) == v for k, v in small.items())


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_var_refs(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in args: `$$` is `$`; unknown references stay."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(sub, text)


class SidecarContainer(TypedDict):
    """The stepguard container of a rendered manifest, in the shape a test needs."""

    name: str
    image: str
    args: list[str]  # `stepguard serve` arguments, $(VAR) expanded
    ports: dict[str, int]  # port name -> containerPort
    probes: dict[str, Manifest]  # "startup" | "readiness" | "liveness" -> probe
    volume_mounts: dict[str, str]  # mount path -> volume name
    native_sidecar: bool  # an init container with restartPolicy: Always


def sidecar_container_from_manifest(
    manifest_yaml: str, *, env: Mapping[str, str] | None = None
) -> SidecarContainer:
    """Extract the one stepguard container from a rendered multi-document manifest.

    Arguments have their $(VAR) references expanded as the kubelet would, from
    the container's literal env values and then `env` (give values for the
    downward-API ones, e.g. {"POD_NAME": "worker-0"}).
    """
    docs = [doc for doc in yaml.safe_load_all(manifest_yaml) if doc]
    pod_spec = stepguard_pod(docs)
    ctr = container(pod_spec, "stepguard")
    known = {e["name"]: e["value"] for e in ctr.get("env", []) if "value" in e}
    known.update(env or {})
    return SidecarContainer(
        name=ctr["name"],
        image=ctr["image"],
        args=[expand_var_refs(str(a), known) for a in ctr.get("args", [])],
        ports={p["name"]: int(p["containerPort"]) for p in ctr.get("ports", [])},
        probes={
            kind: ctr[f"{kind}Probe"]
            for kind in ("startup", "readiness", "liveness")
            if f"{kind}Probe" in ctr
        },
        volume_mounts={m["mountPath"]: m["name"] for m in ctr.get("volumeMounts", [])},
        native_sidecar=any(c is ctr for c in pod_spec.get("initContainers", []))
        and ctr.get("restartPolicy") == "Always",
    )


def validate(doc: Manifest) -> None:
    """Strict Kubernetes 1.30 schema validation; CRDs get their fields checked by hand."""
    if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
        check_service_monitor_shape(doc)
        return
    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def check_service_monitor_shape(doc: Manifest) -> None:
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(doc["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert doc["spec"]["selector"]["matchLabels"]
    for endpoint in doc["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert re.fullmatch(r"[0-9]+(ms|s|m|h)", endpoint["interval"])


# --------------------------------------------------------------------------- values sets

CI_FILES = sorted(p.name for p in CI_DIR.glob("*-values.yaml"))
VALUE_SETS = [pytest.param((), id="defaults")] + [
    pytest.param((name,), id=name.removesuffix("-values.yaml")) for name in CI_FILES
]
# Sets that run a pod with the stepguard container (the defaults run none).
POD_SETS = VALUE_SETS[1:]


def test_every_ci_values_file_is_a_test_case() -> None:
    assert len(CI_FILES) >= 6, CI_FILES


# --------------------------------------------------------------------------- lint, schema


@pytest.mark.parametrize("files", VALUE_SETS)
def test_lint_is_clean(files: tuple[str, ...]) -> None:
    report: dict[str, Any] = helm_python.lint(
        CHART, values_for(*files), strict=True, kube_version=f"v{KUBE_VERSION}"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"], report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("files", VALUE_SETS)
def test_every_manifest_is_valid_kubernetes(files: tuple[str, ...]) -> None:
    docs = render(*files).documents
    assert docs
    for doc in docs:
        validate(doc)


def test_the_validator_is_strict() -> None:
    """Guards the test above: a misspelled field must fail validation."""
    deployment = find(render("example-worker-values.yaml").documents, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"standalone": {"replicas": "3"}}, "/standalone/replicas"),
        ({"exampleWorker": {"replicas": 1.5}}, "/exampleWorker/replicas"),
        ({"mode": "daemonset"}, "/mode"),
        ({"server": {"tcp": {"port": 0}}}, "/server/tcp/port"),
        ({"server": {"tcp": {"enabled": "yes"}}}, "/server/tcp/enabled"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"probes": {"type": "http"}}, "/probes/type"),
        ({"policies": {"source": "git"}}, "/policies/source"),
        ({"policies": {"files": {"team/steps.cedar": ""}}}, "team/steps.cedar"),
        ({"policies": {"mountPath": "policies"}}, "/policies/mountPath"),
        ({"audit": {"file": {"volume": {"type": "hostPath"}}}}, "/audit/file/volume/type"),
        ({"audit": {"sink": "syslog"}}, "/audit/sink"),
        ({"audit": {"persistent": "yes"}}, "/audit/persistent"),
        ({"audit": {"hmacKeySecret": {"key": "../etc/passwd"}}}, "/audit/hmacKeySecret/key"),
        ({"audit": {"hmacKeySecret": {"defaultMode": 1000}}}, "/audit/hmacKeySecret/defaultMode"),
        ({"tls": {"defaultMode": -1}}, "/tls/defaultMode"),
        ({"networkPolicy": {"enabled": "on"}}, "/networkPolicy/enabled"),
        ({"networkPolicy": {"allowAll": True}}, "allowAll"),
        ({"audit": {"stdout": True}}, "stdout"),
        ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor"),
        ({"polices": {"source": "values"}}, "polices"),
        ({"tls": {"enabled": True, "secretname": "x"}}, "secretname"),
        ({"authzen": {"port": 70000}}, "/authzen/port"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_schema_rejects_bad_values(overrides: dict[str, Any], where: str) -> None:
    message = render_error(overrides)
    assert "schema" in message, message
    assert where in message, message


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (
            {"mode": "standalone", "server": {"tcp": {"enabled": False}}},
            "set server.tcp.enabled=auto",
        ),
        ({"server": {"tcp": {"enabled": False}, "socket": {"enabled": False}}}, "no listener"),
        (
            {"metrics": {"port": 50051}, "server": {"tcp": {"enabled": True}}},
            "server.tcp.port and metrics.port must differ",
        ),
        ({"audit": {"hmacKeySecret": {"name": "k"}}}, "set audit.persistent=true"),
        (
            {"networkPolicy": {"enabled": True}},
            "set networkPolicy.podSelector to their labels",
        ),
        (
            {"mode": "standalone", "networkPolicy": {"enabled": True}},
            "set networkPolicy.clientsFrom",
        ),
        (
            {"probes": {"type": "grpc"}, "server": {"tcp": {"enabled": False}}},
            "probes.type=grpc needs server.tcp.enabled=true",
        ),
        (
            {"probes": {"type": "grpc"}, "tls": {"enabled": True, "secretName": "tls"}},
            "gRPC probes cannot speak TLS",
        ),
        (
            {"server": {"socket": {"enabled": False}}, "tls": {"enabled": True, "secretName": "t"}},
            "set server.socket.enabled=true",
        ),
        ({"policies": {"source": "existingConfigMap"}}, "needs policies.existingConfigMap"),
        ({"policies": {"source": "volume"}}, "needs policies.volume"),
        ({"policies": {"files": {"a.cedar": "", "b.cedar": ""}}}, "exactly one schema"),
        ({"policies": {"files": {"s.cedarschema": ""}}}, "no *.cedar policy file"),
        (
            {"audit": {"sink": "file", "file": {"volume": {"type": "existingClaim"}}}},
            "needs audit.file.volume.existingClaim",
        ),
        ({"tls": {"enabled": True}}, "needs tls.secretName"),
        (
            {"authzen": {"enabled": True, "bindAddress": "0.0.0.0"}},
            "authzen.bindAddress 0.0.0.0 is not loopback",
        ),
        ({"authzen": {"enabled": True, "port": 9464}}, "authzen.port must differ"),
        ({"mode": "standalone", "authzen": {"enabled": True}}, "set tls.enabled=true"),
        ({"tls": {"clientCA": {"enabled": True}}}, "needs tls.enabled=true"),
        ({"tls": {"bindWorkloadIdentity": True}}, "tls.clientCA.enabled=true"),
        (
            {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
            "needs metrics.enabled=true",
        ),
        ({"metrics": {"serviceMonitor": {"enabled": True}}}, "set metrics.serviceMonitor"),
        (
            {
                "exampleWorker": {"enabled": True},
                "tls": {
                    "enabled": True,
                    "secretName": "t",
                    "clientCA": {"enabled": True},
                    "bindWorkloadIdentity": True,
                },
            },
            "the example worker has no client certificate",
        ),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_contradictory_values_fail_with_a_fix(overrides: dict[str, Any], says: str) -> None:
    message = render_error(overrides)
    assert says in message, message


# --------------------------------------------------------------------------- security


@pytest.mark.parametrize("files", POD_SETS)
def test_every_container_is_locked_down(files: tuple[str, ...]) -> None:
    docs = render(*files).documents
    pods = list(pod_templates(docs))
    assert pods
    for workload, template in pods:
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for ctr in containers(pod):
            where = f"{workload['metadata']['name']}/{ctr['name']}"
            sc = ctr["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["runAsUser"] == 10001, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(ctr["resources"][kind]), where


# --------------------------------------------------------------------------- probes


def test_a_sidecar_listens_on_no_tcp_port_by_default() -> None:
    """Issue 22 point 10: nothing unauthenticated on the pod network; probes use the socket."""
    sidecar = sidecar_container_from_manifest(render("example-worker-values.yaml").manifest)
    assert flag(sidecar["args"], "--listen") == ["none"]
    assert "sg-grpc" not in sidecar["ports"]
    for kind, probe in sidecar["probes"].items():
        assert probe["exec"]["command"][:2] == ["stepguard", "healthcheck"], kind
    # Standalone serves its clients over TCP; TLS turns the listener on (TLS only).
    standalone = sidecar_container_from_manifest(render("standalone-values.yaml").manifest)
    assert flag(standalone["args"], "--listen") == ["0.0.0.0:50051"]
    tls = sidecar_container_from_manifest(render("tls-values.yaml").manifest)
    assert "--tls-cert" in tls["args"] and flag(tls["args"], "--listen") == ["0.0.0.0:50051"]


def test_probes_use_the_native_grpc_health_check_on_plaintext_tcp() -> None:
    sidecar = sidecar_container_from_manifest(
        render(
            "example-worker-values.yaml", overrides={"server": {"tcp": {"enabled": True}}}
        ).manifest
    )
    port = sidecar["ports"]["sg-grpc"]
    assert flag(sidecar["args"], "--listen") == [f"0.0.0.0:{port}"]
    assert sidecar["probes"]["startup"]["grpc"] == {"port": port, "service": AUTHORIZER}
    assert sidecar["probes"]["readiness"]["grpc"] == {"port": port, "service": AUTHORIZER}
    # Liveness asks about the server as a whole (service ""), not the policy bundle.
    assert sidecar["probes"]["liveness"]["grpc"] == {"port": port}
    startup = sidecar["probes"]["startup"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


@pytest.mark.parametrize("files", [("tls-values.yaml",), ("socket-only-values.yaml",)])
def test_probes_run_over_the_socket_when_grpc_probes_cannot(files: tuple[str, ...]) -> None:
    sidecar = sidecar_container_from_manifest(render(*files).manifest)
    (socket_path,) = flag(sidecar["args"], "--socket")
    for kind, probe in sidecar["probes"].items():
        assert "grpc" not in probe, kind
        command = probe["exec"]["command"]
        assert command[:2] == ["stepguard", "healthcheck"], kind
        assert flag(command, "--socket") == [socket_path]
        assert flag(command, "--service") == ["" if kind == "liveness" else AUTHORIZER]
        (timeout,) = flag(command, "--timeout")
        assert 0 < float(timeout) < probe["timeoutSeconds"]


def test_socket_only_mode_listens_on_no_port() -> None:
    sidecar = sidecar_container_from_manifest(render("socket-only-values.yaml").manifest)
    assert flag(sidecar["args"], "--listen") == ["none"]
    assert "sg-grpc" not in sidecar["ports"]


def test_the_exec_probe_command_checks_grpc_health(tmp_path: Path) -> None:
    """Run each probe's command for real against a real sidecar on a Unix socket."""
    from grpc_health.v1 import health_pb2

    from tests.helpers import running_sidecar

    sidecar = sidecar_container_from_manifest(render("socket-only-values.yaml").manifest)
    # A short directory: Unix socket paths are limited to about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="sg-") as tmp:
        with running_sidecar(Path(tmp)) as running:

            def run_probe(kind: str) -> subprocess.CompletedProcess[str]:
                command: list[str] = sidecar["probes"][kind]["exec"]["command"]
                assert command[:2] == ["stepguard", "healthcheck"]
                args = [running.socket if a == flag(command, "--socket")[0] else a for a in command]
                return subprocess.run(
                    [sys.executable, "-m", "sidecar.cli", *args[1:]],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )

            for kind in ("startup", "readiness", "liveness"):
                serving = run_probe(kind)
                assert serving.returncode == 0, serving.stderr
            running.sidecar.health.set(AUTHORIZER, health_pb2.HealthCheckResponse.NOT_SERVING)
            not_serving = run_probe("readiness")
            assert not_serving.returncode == 1
            assert "NOT_SERVING" in not_serving.stderr
            assert run_probe("liveness").returncode == 0  # the server itself still runs
        gone = run_probe("liveness")
        assert gone.returncode == 1
        assert "UNAVAILABLE" in gone.stderr


# --------------------------------------------------------------------------- wiring


@pytest.mark.parametrize("files", POD_SETS)
def test_policies_are_mounted_read_only_and_watched(files: tuple[str, ...]) -> None:
    docs = render(*files).documents
    pod = stepguard_pod(docs)
    ctr = container(pod, "stepguard")
    args = ctr["args"]
    assert "--watch" in args
    (policies,) = flag(args, "--policies")
    policies_mount = mount(ctr, "stepguard-policies")
    assert policies_mount["mountPath"] == policies == "/etc/stepguard/policies"
    assert policies_mount["readOnly"] is True
    assert "subPath" not in policies_mount  # a subPath mount never sees ConfigMap updates
    config_map = volume(pod, "stepguard-policies")["configMap"]["name"]
    if "existing-configmap-values.yaml" in files:
        assert config_map == "team-policies"
        assert all(d["kind"] != "ConfigMap" for d in docs)
    else:
        find(docs, "ConfigMap", config_map)


@pytest.mark.parametrize("files", POD_SETS)
def test_every_mount_has_a_volume_and_every_port_is_named(files: tuple[str, ...]) -> None:
    for _, template in pod_templates(render(*files).documents):
        pod = template["spec"]
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for ctr in containers(pod):
            for m in ctr.get("volumeMounts", []):
                assert m["name"] in volumes, (ctr["name"], m["name"])
            for port in ctr.get("ports", []):
                assert len(port["name"]) <= 15


def test_worker_and_sidecar_share_the_socket_directory() -> None:
    pod = stepguard_pod(render("example-worker-values.yaml").documents)
    sidecar, worker = container(pod, "stepguard"), container(pod, "worker")
    (socket_path,) = flag(sidecar["args"], "--socket")
    assert volume(pod, "stepguard-socket")["emptyDir"] is not None
    sidecar_mount = mount(sidecar, "stepguard-socket")
    worker_mount = mount(worker, "stepguard-socket")
    assert str(PurePosixPath(socket_path).parent) == sidecar_mount["mountPath"]
    assert worker_mount["mountPath"] == sidecar_mount["mountPath"]
    # Connecting to a socket needs no write access to the mount: the worker
    # cannot replace or remove the socket.
    assert worker_mount["readOnly"] is True
    assert not sidecar_mount.get("readOnly", False)
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["STEPGUARD_ADDRESS"] == f"unix://{socket_path}"


def test_sidecar_is_a_native_sidecar_by_default() -> None:
    pod = stepguard_pod(render("example-worker-values.yaml").documents)
    assert [c["name"] for c in pod["initContainers"]] == ["stepguard"]
    assert pod["initContainers"][0]["restartPolicy"] == "Always"
    assert [c["name"] for c in pod["containers"]] == ["worker"]


def test_sidecar_can_be_a_plain_container() -> None:
    rendered = render("policies-config-values.yaml")
    pod = stepguard_pod(rendered.documents)
    assert "initContainers" not in pod
    assert [c["name"] for c in pod["containers"]] == ["worker", "stepguard"]
    assert "restartPolicy" not in container(pod, "stepguard")
    assert sidecar_container_from_manifest(rendered.manifest)["native_sidecar"] is False


def test_default_flags() -> None:
    sidecar = sidecar_container_from_manifest(render("example-worker-values.yaml").manifest)
    assert sidecar["args"] == [
        "--policies", "/etc/stepguard/policies",
        "--watch",
        "--listen", "none",
        "--socket", "/run/stepguard/grpc.sock",
        "--metrics-listen", "0.0.0.0:9464",
        "--audit-file", "-",
        "--grace", "10",
        "--workers", "1",  # the trail on stdout: one writer (issue 19)
    ]  # fmt: skip
    assert sidecar["ports"] == {"sg-metrics": 9464}
    assert sidecar["image"] == f"stepguard:{chart_meta()['appVersion']}"
    assert sidecar["native_sidecar"] is True
    assert sidecar["volume_mounts"]["/tmp"] == "stepguard-tmp"


def test_disabled_features_render_off() -> None:
    sidecar = sidecar_container_from_manifest(
        render(
            "example-worker-values.yaml",
            overrides={"metrics": {"enabled": False}, "policies": {"watch": False}},
        ).manifest
    )
    assert flag(sidecar["args"], "--metrics-listen") == ["off"]
    assert "--watch" not in sidecar["args"]
    assert "sg-metrics" not in sidecar["ports"]
    for tls_flag in ("--tls-cert", "--tls-key", "--tls-client-ca", "--bind-workload-identity"):
        assert tls_flag not in sidecar["args"]
    assert "--authzen-listen" not in sidecar["args"]  # off unless asked
    assert "sg-authzen" not in sidecar["ports"]


def test_authzen_on_loopback_in_the_worker_pod() -> None:
    sidecar = sidecar_container_from_manifest(
        render("example-worker-values.yaml", overrides={"authzen": {"enabled": True}}).manifest
    )
    assert flag(sidecar["args"], "--authzen-listen") == ["127.0.0.1:8181"]
    assert sidecar["ports"]["sg-authzen"] == 8181


def test_image_by_digest() -> None:
    digest = "sha256:" + "ab" * 32
    sidecar = sidecar_container_from_manifest(
        render(
            "example-worker-values.yaml",
            overrides={"image": {"repository": "registry.example/stepguard", "digest": digest}},
        ).manifest
    )
    assert sidecar["image"] == f"registry.example/stepguard@{digest}"


def test_audit_trail_on_a_persistent_volume_claim() -> None:
    docs = render("audit-pvc-values.yaml").documents
    pvc = find(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert pvc["spec"]["storageClassName"] == "fast-ssd"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pod = stepguard_pod(docs)
    claim = volume(pod, "stepguard-audit")["persistentVolumeClaim"]["claimName"]
    assert claim == pvc["metadata"]["name"]
    ctr = container(pod, "stepguard")
    audit_dir = mount(ctr, "stepguard-audit")["mountPath"]
    (audit_file,) = flag(ctr["args"], "--audit-file")  # and no "-": stdout is off
    assert audit_file.startswith(audit_dir + "/")
    # One file per pod on a shared claim: the kubelet expands $(POD_NAME).
    assert "$(POD_NAME)" in audit_file
    pod_name = {e["name"]: e for e in ctr["env"]}["POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    expanded = sidecar_container_from_manifest(
        render("audit-pvc-values.yaml").manifest, env={"POD_NAME": "worker-0"}
    )
    assert flag(expanded["args"], "--audit-file") == [f"{audit_dir}/worker-0.audit.jsonl"]


def test_tls_flags_and_secret() -> None:
    docs = render("tls-values.yaml").documents
    pod = stepguard_pod(docs)
    ctr = container(pod, "stepguard")
    args = ctr["args"]
    tls_dir = mount(ctr, "stepguard-tls")["mountPath"]
    assert flag(args, "--tls-cert") == [f"{tls_dir}/tls.crt"]
    assert flag(args, "--tls-key") == [f"{tls_dir}/tls.key"]
    assert flag(args, "--tls-client-ca") == [f"{tls_dir}/ca.crt"]
    assert "--bind-workload-identity" in args
    assert volume(pod, "stepguard-tls")["secret"]["secretName"] == "stepguard-tls"
    assert mount(ctr, "stepguard-tls")["readOnly"] is True
    # AuthZEN beside gRPC: HTTPS with the same files, so it may leave loopback.
    assert flag(args, "--authzen-listen") == ["0.0.0.0:8181"]
    assert {p["name"]: p["containerPort"] for p in ctr["ports"]}["sg-authzen"] == 8181
    service = find(docs, "Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["authzen"]["port"] == 8181 and ports["authzen"]["targetPort"] == "sg-authzen"


def test_client_ca_from_its_own_secret() -> None:
    ctr = container(
        stepguard_pod(
            render(
                "tls-values.yaml", overrides={"tls": {"clientCA": {"secretName": "client-ca"}}}
            ).documents
        ),
        "stepguard",
    )
    ca_dir = mount(ctr, "stepguard-client-ca")["mountPath"]
    assert flag(ctr["args"], "--tls-client-ca") == [f"{ca_dir}/ca.crt"]


def test_config_file_and_inline_policies() -> None:
    docs = render("policies-config-values.yaml").documents
    pod = stepguard_pod(docs)
    ctr = container(pod, "stepguard")
    (config_file,) = flag(ctr["args"], "--config")
    assert config_file.startswith(mount(ctr, "stepguard-config")["mountPath"] + "/")
    config_map = find(docs, "ConfigMap", volume(pod, "stepguard-config")["configMap"]["name"])
    assert yaml.safe_load(config_map["data"]["stepguard.yaml"]) == {
        "threads": 8,
        "max_batch_items": 200,
    }
    deployment = find(docs, "Deployment")
    assert "checksum/config" in deployment["spec"]["template"]["metadata"]["annotations"]


@pytest.mark.parametrize(
    "files", [pytest.param((), id="example-bundle"), ("policies-config-values.yaml",)]
)
def test_chart_policies_load_as_a_bundle(files: tuple[str, ...]) -> None:
    """The policies the chart puts in its ConfigMap are a bundle stepguard accepts."""
    from sidecar.core.bundle import Source, build_bundle

    docs = render(*files).documents
    data: dict[str, str] = find(docs, "ConfigMap", f"{RELEASE}-stepguard-policies")["data"]
    sources = [Source(name, text) for name, text in sorted(data.items())]
    schemas = [s for s in sources if ".cedarschema" in s.name]
    bundle = build_bundle(
        [s for s in sources if s.name.endswith(".cedar")],
        schemas[0],
        [s for s in sources if s.name.endswith("entities.json")],
    )
    assert bundle.policy_count >= 1


@pytest.mark.parametrize("files", POD_SETS)
def test_stepguard_serve_accepts_the_arguments(files: tuple[str, ...], tmp_path: Path) -> None:
    """The real CLI parses the chart's arguments and builds valid settings from them.

    This mirrors what `stepguard serve` does before it starts serving (sidecar/cli/serve.py):
    parse the flags, then merge them with the --config file.
    """
    from sidecar.cli import main as cli
    from sidecar.serving.config import build_settings

    rendered = render(*files)
    sidecar = sidecar_container_from_manifest(rendered.manifest, env={"POD_NAME": "w-0"})
    args = sidecar["args"]
    options = [a for a in args if a.startswith("--")]
    # Every flag holds one value: a repeated flag would silently keep only the last.
    assert len(options) == len(set(options)), args
    namespace, unknown = cli._parser().parse_known_args(["serve", *args])
    assert unknown == [], unknown
    config_file = None
    if config := flag(args, "--config"):
        pod = stepguard_pod(rendered.documents)
        name = volume(pod, "stepguard-config")["configMap"]["name"]
        config_file = tmp_path / PurePosixPath(config[0]).name
        config_file.write_text(
            find(rendered.documents, "ConfigMap", name)["data"]["stepguard.yaml"]
        )
    flags = {
        k: v
        for k, v in vars(namespace).items()
        if k not in ("run", "config", "log_level") and v is not None
    }
    settings = build_settings(flags, {}, config_file)
    assert str(settings.policies) == flag(args, "--policies")[0]
    assert settings.audit_file == flag(args, "--audit-file")[0]


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize("files", VALUE_SETS)
def test_selectors_match_labels(files: tuple[str, ...]) -> None:
    docs = render(*files).documents
    pods = list(pod_templates(docs))
    for workload, template in pods:
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector
        assert is_subset(selector, template["metadata"]["labels"]), workload["metadata"]["name"]
    for svc in (d for d in docs if d["kind"] == "Service"):
        targets = [
            tpl for _, tpl in pods if is_subset(svc["spec"]["selector"], tpl["metadata"]["labels"])
        ]
        assert len(targets) == 1, svc["metadata"]["name"]
        named_ports = {
            p["name"] for c in containers(targets[0]["spec"]) for p in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in named_ports, port
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(is_subset(selector, tpl["metadata"]["labels"]) for _, tpl in pods)
    for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [
            d
            for d in docs
            if d["kind"] == "Service" and is_subset(selector, d["metadata"]["labels"])
        ]
        assert len(services) == 1
        port_names = {p["name"] for p in services[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]


# --------------------------------------------------------------------------- modes


def test_defaults_render_only_the_policies() -> None:
    assert kinds(render().documents) == ["ConfigMap"]


def test_standalone_mode() -> None:
    docs = render("standalone-values.yaml").documents
    assert kinds(docs) == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    deployment = find(docs, "Deployment", f"{RELEASE}-stepguard")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["stepguard"]
    assert "restartPolicy" not in pod["containers"][0]
    assert pod["terminationGracePeriodSeconds"] > float(
        flag(pod["containers"][0]["args"], "--grace")[0]
    )
    service = find(docs, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "grpc": 50051,
        "metrics": 9464,
    }
    monitor = find(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    worker = find(docs, "Deployment", f"{RELEASE}-stepguard-example-worker")["spec"]["template"]
    env = {e["name"]: e["value"] for e in worker["spec"]["containers"][0]["env"]}
    assert env["STEPGUARD_ADDRESS"] == f"dns:///{RELEASE}-stepguard.{NAMESPACE}.svc:50051"


def test_sidecar_service_monitor_scrapes_the_worker_pods() -> None:
    docs = render("servicemonitor-values.yaml").documents
    service = find(docs, "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9464, "targetPort": "sg-metrics", "protocol": "TCP"}
    ]
    custom = render(
        "servicemonitor-values.yaml",
        overrides={"metrics": {"serviceMonitor": {"podSelector": {"app": "w"}}}},
    )
    assert find(custom.documents, "Service")["spec"]["selector"] == {"app": "w"}


def chart_meta() -> dict[str, Any]:
    meta: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return meta


def render_parent(tmp_path: Path, stepguard_values: Mapping[str, Any]) -> Rendered:
    """Render a chart that depends on this one and injects the sidecar into its worker."""
    parent = tmp_path / "orchestrator"
    shutil.copytree(CHART, parent / "charts" / "stepguard", ignore=shutil.ignore_patterns("ci"))
    (parent / "templates").mkdir()
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: orchestrator\nversion: 1.0.0\n"
        "dependencies:\n  - name: stepguard\n    version: "
        f"{chart_meta()['version']}\n"
    )
    (parent / "values.yaml").write_text(yaml.safe_dump({"stepguard": dict(stepguard_values)}))
    (parent / "templates" / "worker.yaml").write_text(PARENT_WORKER)
    rendered = render(chart=parent)
    for doc in rendered.documents:
        validate(doc)
    return rendered


def test_parent_chart_injects_the_sidecar_into_its_own_pod(tmp_path: Path) -> None:
    """The named templates work from a chart that depends on this one."""
    rendered = render_parent(tmp_path, {"image": {"tag": "1.2.3"}})
    pod = stepguard_pod(rendered.documents)
    config_map = find(rendered.documents, "ConfigMap")["metadata"]["name"]
    assert volume(pod, "stepguard-policies")["configMap"]["name"] == config_map
    worker = container(pod, "airflow-worker")
    assert mount(worker, "stepguard-socket")["readOnly"] is True
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env["STEPGUARD_ADDRESS"] == "unix:///run/stepguard/grpc.sock"
    sidecar = sidecar_container_from_manifest(rendered.manifest)
    assert sidecar["image"] == "stepguard:1.2.3"
    assert sidecar["native_sidecar"] is True
    assert "--watch" in sidecar["args"]


def test_workload_identity_binding_points_the_worker_at_tcp(tmp_path: Path) -> None:
    """Calls over the socket carry no client certificate, so binding would deny them all."""
    tls = {
        "enabled": True,
        "secretName": "worker-tls",
        "clientCA": {"enabled": True},
        "bindWorkloadIdentity": True,
    }
    pod = stepguard_pod(render_parent(tmp_path, {"tls": tls}).documents)
    worker = container(pod, "airflow-worker")
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env["STEPGUARD_ADDRESS"] == "localhost:50051"
    assert worker["volumeMounts"] is None  # nothing of stepguard's to mount
    sidecar = container(pod, "stepguard")
    assert "--bind-workload-identity" in sidecar["args"]
    assert "exec" in sidecar["readinessProbe"]  # probes still use the socket


PARENT_WORKER = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-worker
spec:
  selector:
    matchLabels: {app: worker}
  template:
    metadata:
      labels: {app: worker}
    spec:
      initContainers:
        {{- include "stepguard.sidecar.container" .Subcharts.stepguard | nindent 8 }}
      containers:
        - name: airflow-worker
          image: apache/airflow:3.3.2
          env:
            {{- include "stepguard.sidecar.workerEnv" .Subcharts.stepguard | nindent 12 }}
          volumeMounts:
            {{- include "stepguard.sidecar.workerVolumeMounts" .Subcharts.stepguard | nindent 12 }}
      volumes:
        {{- include "stepguard.sidecar.volumes" .Subcharts.stepguard | nindent 8 }}
"""


def test_packaged_chart_renders_the_same(tmp_path: Path) -> None:
    """.helmignore keeps the example bundle and drops the test values."""
    archive = Path(helm_python.package(CHART, destination=tmp_path))
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "stepguard/files/example-policies/example.cedar" in names
    assert not [n for n in names if n.startswith("stepguard/ci/")]
    assert render(chart=archive).manifest == render().manifest


# --------------------------------------------------------------------------- NOTES.txt


def test_notes_say_how_to_check_it_works() -> None:
    default = render().notes
    assert "WARNING" in default and "example bundle" in default
    assert 'include "stepguard.sidecar.container"' in default

    worker = render("example-worker-values.yaml").notes
    assert f"rollout status deployment/{RELEASE}-stepguard-example-worker" in worker
    assert "-c worker" in worker

    standalone = render("standalone-values.yaml").notes
    assert f"{RELEASE}-stepguard.{NAMESPACE}.svc:50051" in standalone
    assert "grpc.health.v1.Health/Check" in standalone
    assert "-plaintext" in standalone

    tls = render("tls-values.yaml").notes
    assert "-plaintext" not in tls and "-cert client.crt" in tls
    authzen = f"https://{RELEASE}-stepguard.{NAMESPACE}.svc:8181/access/v1/evaluation"
    assert authzen in tls and "AuthZEN" not in standalone


# --------------------------------------------------------------------------- evidence and network


def test_the_default_trail_is_not_persistent_and_the_notes_say_so() -> None:
    """Issue 27 point 10: stdout and emptyDir lose the evidence with the pod; NOTES warn."""
    worker = render("example-worker-values.yaml")
    assert "PersistentVolumeClaim" not in kinds(worker.documents)
    assert "WARNING: the audit trail is not persistent" in worker.notes
    assert "audit.persistent=true" in worker.notes
    production = render("production-values.yaml")
    assert "not persistent" not in production.notes


def test_one_switch_keeps_the_trail_on_a_claim() -> None:
    docs = render("example-worker-values.yaml", overrides={"audit": {"persistent": True}}).documents
    pvc = find(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pod = stepguard_pod(docs)
    claim = volume(pod, "stepguard-audit")["persistentVolumeClaim"]["claimName"]
    assert claim == pvc["metadata"]["name"]
    ctr = container(pod, "stepguard")
    (audit_file,) = flag(ctr["args"], "--audit-file")
    assert audit_file.startswith(mount(ctr, "stepguard-audit")["mountPath"] + "/")
    # An existing claim stays what it is.
    existing = render(
        "example-worker-values.yaml",
        overrides={
            "audit": {
                "persistent": True,
                "file": {"volume": {"type": "existingClaim", "existingClaim": "trails"}},
            }
        },
    ).documents
    assert "PersistentVolumeClaim" not in kinds(existing)
    existing_pod = stepguard_pod(existing)
    assert volume(existing_pod, "stepguard-audit")["persistentVolumeClaim"] == {
        "claimName": "trails"
    }


def test_the_hmac_key_comes_from_a_secret_mounted_0400() -> None:
    docs = render("production-values.yaml").documents
    pod = stepguard_pod(docs)
    key_volume = volume(pod, "stepguard-audit-key")["secret"]
    assert key_volume["secretName"] == "stepguard-audit-key"
    assert key_volume["defaultMode"] == 0o400
    assert key_volume["items"] == [{"key": "hmac.key", "path": "hmac.key"}]
    ctr = container(pod, "stepguard")
    key_mount = mount(ctr, "stepguard-audit-key")
    assert key_mount["readOnly"] is True
    assert flag(ctr["args"], "--audit-hmac-key-file") == [f"{key_mount['mountPath']}/hmac.key"]
    # Only the stepguard container sees the key.
    for other in containers(pod):
        if other["name"] != "stepguard":
            names = {m["name"] for m in other.get("volumeMounts", [])}
            assert "stepguard-audit-key" not in names
    unkeyed = container(stepguard_pod(render("audit-pvc-values.yaml").documents), "stepguard")
    assert "--audit-hmac-key-file" not in unkeyed["args"]


@pytest.mark.parametrize("files", POD_SETS)
def test_every_secret_volume_has_a_default_mode_no_one_else_can_read(
    files: tuple[str, ...],
) -> None:
    for workload, template in pod_templates(render(*files).documents):
        for vol in template["spec"].get("volumes", []):
            if "secret" in vol:
                mode = vol["secret"].get("defaultMode")
                where = f"{workload['metadata']['name']}/{vol['name']}"
                assert mode is not None, where
                assert mode & 0o007 == 0 and mode & 0o222 == 0, (where, oct(mode))


def _network_policy(docs: list[Manifest]) -> Manifest:
    [policy] = [d for d in docs if d["kind"] == "NetworkPolicy"]
    return policy


def test_network_policy_admits_only_the_metrics_scraper_to_a_worker_pod() -> None:
    assert "NetworkPolicy" not in kinds(render("example-worker-values.yaml").documents)
    docs = render("production-values.yaml").documents
    policy = _network_policy(docs)
    worker_labels = stepguard_pod_labels(docs)
    assert is_subset(policy["spec"]["podSelector"]["matchLabels"], worker_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 9464, "protocol": "TCP"}]
    assert rule["from"] == [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    # No metrics, no scraper: nothing at all is admitted from the network.
    closed = _network_policy(
        render("production-values.yaml", overrides={"metrics": {"enabled": False}}).documents
    )
    assert closed["spec"]["ingress"] == []


def test_network_policy_of_a_standalone_decision_point_admits_its_clients() -> None:
    clients = [{"namespaceSelector": {"matchLabels": {"team": "workflows"}}}]
    docs = render(
        "standalone-values.yaml",
        overrides={"networkPolicy": {"enabled": True, "clientsFrom": clients}},
    ).documents
    policy = _network_policy(docs)
    assert is_subset(policy["spec"]["podSelector"]["matchLabels"], stepguard_pod_labels(docs))
    rules = policy["spec"]["ingress"]
    assert all(rule.get("from") for rule in rules)  # a rule without peers admits everyone
    ports = {tuple(p["port"] for p in rule["ports"]): rule["from"] for rule in rules}
    assert ports[(50051,)] == clients
    assert (9464,) in ports


def stepguard_pod_labels(docs: list[Manifest]) -> dict[str, str]:
    for _workload, template in pod_templates(docs):
        if any(c["name"] == "stepguard" for c in containers(template["spec"])):
            labels: dict[str, str] = template["metadata"]["labels"]
            return labels
    raise AssertionError("no pod runs stepguard")


# --------------------------------------------------------------------------- documented install


def _install_commands() -> tuple[str, list[list[str]]]:
    """docs/deployment.md's "Installing the chart": its text and its shell commands, split."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    section = text.split("\n## Installing the chart\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(shlex.split(line))
    return section, commands


def _helm_set(values: dict[str, Any], key: str, value: str) -> None:
    """`helm --set key=value`: dots nest (an escaped dot does not)."""
    *parents, last = [k.replace("\\.", ".") for k in re.split(r"(?<!\\)\.", key)]
    for name in parents:
        values = values.setdefault(name, {})
    values[last] = value


def test_the_documented_install_ships_the_policy_directory_as_a_configmap(
    tmp_path: Path,
) -> None:
    """Issue 22 point 9: the commands in docs/deployment.md, as printed, give the sidecar the
    repository's policy directory (kubectl emulated: one key per regular file at its top)."""
    from sidecar.core.bundle import load_bundle

    section, commands = _install_commands()
    assert "`helm` command line" in section and "installed" in section  # helm is a prerequisite
    create = next(c for c in commands if c[:3] == ["kubectl", "create", "configmap"])
    helm = next(c for c in commands if c[:2] == ["helm", "install"])
    name = create[3]
    assert create[create.index("-n") + 1] == helm[helm.index("-n") + 1] == NAMESPACE
    (source,) = [a.split("=", 1)[1] for a in create if a.startswith("--from-file=")]
    directory = ROOT / source
    assert directory.is_dir(), f"{source} does not exist"

    # What `kubectl create configmap --from-file=DIR` puts in the ConfigMap, and the pod sees.
    data = {p.name: p.read_text() for p in sorted(directory.iterdir()) if p.is_file()}
    assert all(re.fullmatch(r"[-._a-zA-Z0-9]+", key) for key in data), sorted(data)
    assert sum(len(v.encode()) for v in data.values()) < 1024 * 1024  # a ConfigMap's limit
    mounted = tmp_path / "policies"
    mounted.mkdir()
    for key, text in data.items():
        (mounted / key).write_text(text)
    assert load_bundle(mounted).revision == load_bundle(directory).revision

    # The helm command, with its --set values, through Helm's engine.
    assert (ROOT / helm[3]).resolve() == CHART
    assert not any(a.startswith("--set-file") for a in helm)
    overrides: dict[str, Any] = {}
    for i, arg in enumerate(helm):
        if arg == "--set":
            _helm_set(overrides, *helm[i + 1].split("=", 1))
    assert overrides["policies"] == {"source": "existingConfigMap", "existingConfigMap": name}
    docs = render(overrides=overrides).documents
    assert all(d["kind"] != "ConfigMap" for d in docs)  # the chart makes no policies of its own
    shown = render(overrides=merge_values(overrides, {"exampleWorker": {"enabled": True}}))
    pod = stepguard_pod(shown.documents)
    assert volume(pod, "stepguard-policies")["configMap"]["name"] == name
    ctr = container(pod, "stepguard")
    assert ctr["image"].startswith(overrides["image"]["repository"] + ":")
    assert flag(ctr["args"], "--policies") == [mount(ctr, "stepguard-policies")["mountPath"]]


def test_every_file_the_deployment_docs_hand_to_helm_or_kubectl_exists() -> None:
    """A documented `--set-file key=PATH` or `--from-file=PATH` names a file in the repository."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    paths = re.findall(r"--(?:set-file [^=\s]+=|from-file[= ](?:[^=\s]+=)?)([^\s`\\]+)", text)
    assert paths, "the docs hand no file to helm or kubectl"
    missing = [p for p in paths if not (ROOT / p).exists() and not p.startswith("<")]
    assert missing == []


@pytest.mark.parametrize(
    ("cpu", "workers", "sink", "expected"),
    [
        ("1", 0, "file", "1"),  # the chart's default limit
        ("2", 0, "file", "2"),
        ("1500m", 0, "file", "2"),  # rounded up
        ("2.5", 0, "file", "3"),
        ("250m", 0, "file", "1"),  # at least one
        (3, 0, "file", "3"),  # a number, not a string
        (None, 0, "file", "1"),  # no limit: not the node's cores
        ("4", 0, "stdout", "1"),  # one writer on stdout
        ("4", 2, "file", "2"),  # as given
    ],
)
def test_workers_follow_the_cpu_limit(
    cpu: str | int | None, workers: int, sink: str, expected: str
) -> None:
    """Issue 19: --workers is the container's CPU limit rounded up unless server.workers says."""
    limits: dict[str, Any] = {"cpu": cpu, "memory": "384Mi"}  # None: Helm drops the key
    audit: dict[str, Any] = {"sink": sink}
    if sink == "file":
        audit["file"] = {"volume": {"type": "emptyDir"}}
    overrides = {
        "server": {"workers": workers},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": limits},
        "audit": audit,
        "exampleWorker": {"enabled": True},
    }
    ctr = container(stepguard_pod(render(overrides=overrides).documents), "stepguard")
    assert flag(ctr["args"], "--workers") == [expected]
    assert ctr["resources"]["limits"] == {k: v for k, v in limits.items() if v is not None}


def test_several_workers_need_a_file_trail() -> None:
    message = render_error({"server": {"workers": 2}, "audit": {"sink": "stdout"}})
    assert "server.workers > 1 needs audit.sink=file" in message
