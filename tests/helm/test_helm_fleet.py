"""The chart's fleet parts (docs/fleet.md): the shipper container beside the sidecar (off by
default, one value turns it on) and the collectors' Deployment, rendered by Helm's engine.
The generic checks (lint, Kubernetes schemas, lockdown, mounts) run on ci/fleet-values.yaml
with every other values file in test_helm_chart.py."""

from __future__ import annotations

from typing import Any

from sidecar.cli.main import _parser
from tests.helm.test_helm_chart import (
    container,
    containers,
    expand_var_refs,
    find,
    flag,
    mount,
    pod_templates,
    render,
    render_error,
    stepguard_pod,
    volume,
)

SECRET_WORDS = ("password", "token", "creds", "secret", "postgresql://", "tls.key")


def test_no_shipper_and_no_collector_by_default() -> None:
    for files in ((), ("standalone-values.yaml",), ("example-worker-values.yaml",)):
        docs = render(*files).documents
        names = {c["name"] for _, tpl in pod_templates(docs) for c in containers(tpl["spec"])}
        assert "stepguard-ship" not in names and "stepguard-collect" not in names, files


def test_one_value_adds_the_shipper_beside_the_sidecar_reading_its_own_trail() -> None:
    docs = render(
        "example-worker-values.yaml",
        overrides={
            "audit": {"persistent": True},
            "fleet": {"ship": {"enabled": True}, "nats": {"servers": ["nats://nats:4222"]}},
        },
    ).documents
    pod = stepguard_pod(docs)
    sidecar, ship = container(pod, "stepguard"), container(pod, "stepguard-ship")
    # a native sidecar like stepguard itself: started before the worker, kept running
    assert ship in pod["initContainers"] and ship.get("restartPolicy") == "Always"
    assert ship["image"] == sidecar["image"] and ship["command"] == ["stepguard"]
    args = ship["args"]
    assert args[0] == "ship"
    assert flag(args, "--trail") == flag(sidecar["args"], "--audit-file")
    assert flag(args, "--sidecar") == ["$(POD_NAME)"] and "--prune-committed" in args
    assert flag(args, "--replicas") == ["3"]
    # the same volume as the trail, at the same path
    assert mount(ship, "stepguard-audit") == mount(sidecar, "stepguard-audit")
    # never a probe: a broker that is down must not make the pod unready
    assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(ship)
    env = {e["name"]: e.get("value") for e in ship["env"]}
    assert env["STEPGUARD_NATS_SERVERS"] == "nats://nats:4222"
    # the chart's own args parse with the real command line
    pod_env = {"POD_NAME": "worker-7c9d-abcde"}
    parsed = _parser().parse_args([expand_var_refs(a, pod_env) for a in args])
    assert parsed.sidecar == "worker-7c9d-abcde"
    assert str(parsed.trail) == expand_var_refs(flag(sidecar["args"], "--audit-file")[0], pod_env)


def test_the_fleet_values_ship_and_collect_with_secrets_only_in_files() -> None:
    docs = render("fleet-values.yaml").documents
    pod = stepguard_pod(docs)
    ship = container(pod, "stepguard-ship")
    collect_deploy = find(docs, "Deployment", "sg-stepguard-collector")
    spec: dict[str, Any] = collect_deploy["spec"]["template"]["spec"]
    collect = container(spec, "stepguard-collect")
    assert collect_deploy["spec"]["replicas"] == 2
    assert collect["args"][0] == "collect"
    # the store's DSN from a Secret, never an argument
    [store] = [e for e in collect["env"] if e["name"] == "STEPGUARD_STORE"]
    assert store["valueFrom"]["secretKeyRef"] == {"name": "stepguard-store", "key": "dsn"}
    # the collectors check keyed hashes with the sidecars' key
    assert flag(collect["args"], "--key-file") == ["/etc/stepguard/audit-key/hmac.key"]
    for ctr, pod_spec in ((ship, pod), (collect, spec)):
        assert not [a for a in ctr["args"] if any(w in a.lower() for w in SECRET_WORDS)]
        env = {e["name"]: e.get("value") for e in ctr["env"]}
        assert env["STEPGUARD_NATS_CREDS_FILE"] == "/etc/stepguard/nats-creds/nats.creds"
        assert env["STEPGUARD_NATS_TLS_CA"] == "/etc/stepguard/nats-tls/ca.crt"
        creds = volume(pod_spec, "stepguard-nats-creds")["secret"]
        assert creds["secretName"] == "stepguard-nats-creds" and creds["defaultMode"] == 0o440
        assert mount(ctr, "stepguard-nats-creds")["readOnly"] is True
        assert volume(pod_spec, "stepguard-nats-tls")["secret"]["secretName"] == (
            "stepguard-nats-tls"
        )
    ports = {p["name"]: p["containerPort"] for p in ship["ports"]}
    assert ports == {"sg-ship-metrics": 9465}


def test_the_shipper_beside_a_standalone_decision_point() -> None:
    docs = render(
        "standalone-values.yaml",
        overrides={
            "audit": {"persistent": True},
            "fleet": {"ship": {"enabled": True}, "nats": {"servers": ["nats://nats:4222"]}},
        },
    ).documents
    pod = stepguard_pod(docs)
    ship = container(pod, "stepguard-ship")
    assert ship in pod["containers"] and "restartPolicy" not in ship


def test_fleet_values_that_cannot_work_fail_with_a_fix() -> None:
    servers = {"nats": {"servers": ["nats://nats:4222"]}}
    assert "fleet.ship.enabled=true ships a file trail" in render_error(
        {"fleet": {"ship": {"enabled": True}, **servers}, "exampleWorker": {"enabled": True}}
    )
    assert "fleet.nats.servers" in render_error(
        {"fleet": {"collector": {"enabled": True, "storeSecret": {"name": "s"}}}}
    )
    assert "storeSecret.name" in render_error(
        {"fleet": {"collector": {"enabled": True}, **servers}}
    )


def test_the_network_policy_admits_the_scraper_to_the_shippers_metrics_too() -> None:
    """With the shipper on, the scraper the policy admits to the sidecar's metrics reaches
    the shipper's (its lag, docs/fleet.md) on the same rule; never anyone else."""
    from tests.helm.test_helm_chart import _network_policy

    fleet = {"ship": {"enabled": True}, "nats": {"servers": ["nats://nats:4222"]}}
    docs = render(
        "production-values.yaml", overrides={"audit": {"persistent": True}, "fleet": fleet}
    ).documents
    [rule] = _network_policy(docs)["spec"]["ingress"]
    assert rule["ports"] == [
        {"port": 9464, "protocol": "TCP"},
        {"port": 9465, "protocol": "TCP"},
    ]
    assert rule["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    # metrics off: no scraper, so nothing is admitted, the shipper's port neither
    closed = render(
        "production-values.yaml",
        overrides={"audit": {"persistent": True}, "fleet": fleet, "metrics": {"enabled": False}},
    ).documents
    assert _network_policy(closed)["spec"]["ingress"] == []
