"""`stepguard healthcheck` against a real sidecar: TCP, the Unix socket, TLS, and failures.

The chart's exec probes run this command, so its exit code is the contract:
0 only for SERVING, 1 for anything else (never 2, which means DENY).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from sidecar.cli.exitcodes import EXIT_ERROR, EXIT_OK
from tests.helpers import running_sidecar
from tests.pki import make_pki, tls_settings

AUTHORIZER = "stepguard.v1.Authorizer"


def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "STEPGUARD_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "healthcheck", "--timeout", "10", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environ | (env or {}),
    )


def test_serving_over_tcp_and_the_socket_then_unavailable(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as running:
        for where in (["--address", running.tcp], ["--socket", str(running.socket)]):
            for service in ("", AUTHORIZER):
                out = healthcheck(*where, "--service", service)
                assert out.returncode == EXIT_OK, out.stderr
                assert out.stdout.strip().endswith(": SERVING")
        unknown = healthcheck("--socket", str(running.socket), "--service", "no.such.Service")
        assert unknown.returncode == EXIT_ERROR
        assert "SERVICE_UNKNOWN" in unknown.stderr
        running.sidecar.health.set(AUTHORIZER, health_pb2.HealthCheckResponse.NOT_SERVING)
        down = healthcheck("--socket", str(running.socket), "--service", AUTHORIZER)
        assert down.returncode == EXIT_ERROR
        assert down.stderr.strip().endswith(": NOT_SERVING")
        socket = str(running.socket)
    gone = healthcheck("--socket", socket, "--timeout", "2")
    assert gone.returncode == EXIT_ERROR
    assert "UNAVAILABLE" in gone.stderr or "DEADLINE_EXCEEDED" in gone.stderr


def test_the_workers_address_is_the_default(tmp_path: Path) -> None:
    """In a worker container STEPGUARD_ADDRESS (set by the chart) names its sidecar."""
    with running_sidecar(tmp_path) as running:
        out = healthcheck(env={"STEPGUARD_ADDRESS": f"unix://{running.socket}"})
    assert out.returncode == EXIT_OK, out.stderr
    assert out.stdout.startswith(f"unix://{running.socket} ")


def test_quiet_prints_nothing(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as running:
        out = healthcheck("--socket", str(running.socket), "--quiet")
    assert (out.returncode, out.stdout, out.stderr) == (EXIT_OK, "", "")


def test_over_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki()
    with running_sidecar(tmp_path / "srv", **tls_settings(tmp_path / "tls", pki)) as running:
        roots = tmp_path / "roots.pem"
        roots.write_bytes(pki.domain.pem)
        cert, key = pki.domain.issue(spiffe="spiffe://example.org/ns/ops/sa/probe").write(
            tmp_path, "probe"
        )
        tls = ["--tls-ca", str(roots), "--tls-cert", str(cert), "--tls-key", str(key)]
        ok = healthcheck("--address", running.tcp, *tls, "--service", AUTHORIZER)
        assert ok.returncode == EXIT_OK, ok.stderr
        plaintext = healthcheck("--address", running.tcp, "--timeout", "2")
        assert plaintext.returncode == EXIT_ERROR
        no_client_cert = healthcheck("--address", running.tcp, "--tls-ca", str(roots))
        assert no_client_cert.returncode == EXIT_ERROR
        # The socket beside TLS is plaintext and carries no certificate.
        assert healthcheck("--socket", str(running.socket)).returncode == EXIT_OK


@pytest.mark.parametrize(
    "args",
    [
        ["--address", "127.0.0.1:1", "--socket", "/x.sock"],
        ["--socket", "/x.sock", "--tls"],
        ["--timeout", "0"],
        ["--tls-server-name", "x"],
    ],
)
def test_bad_flags_exit_1_with_a_message(args: list[str]) -> None:
    out = healthcheck(*args)
    assert out.returncode == EXIT_ERROR
    assert "error:" in out.stderr
