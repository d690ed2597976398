"""NATS credentials and TLS are settings like the rest (a config file, the environment) and
never command-line flags: a real nats-server that demands a token over mutual TLS takes the
shipper's records only with both, read from files the environment names."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.core.errors import ConfigError
from sidecar.fleet import settings
from tests.audit.trails import make_trail
from tests.fleet.fleet import cli, shipper, status, stream_messages_tls, trail_lines, wait_for
from tests.fleet.servers import NatsNode, free_port
from tests.pki import make_pki


def test_a_token_over_mutual_tls_from_files_named_by_the_environment(tmp_path: Path) -> None:
    pki = make_pki()
    certs = tmp_path / "certs"
    cert, key = pki.server.write(certs, "server")
    ca = certs / "ca.pem"
    ca.write_bytes(pki.domain.pem)
    client_cert, client_key = pki.domain.issue(subject="shipper").write(certs, "client")
    token = tmp_path / "token"
    token.write_text("s3cret-token-for-tests\n")
    root = tmp_path / "nats"
    root.mkdir()
    node = NatsNode(
        "n1",
        root,
        free_port(),
        free_port(),
        extra=(
            f'tls {{ cert_file: "{cert}", key_file: "{key}", ca_file: "{ca}", verify: true }}\n'
            'authorization { token: "s3cret-token-for-tests" }\n'
        ),
    )
    trail = tmp_path / "trail"
    trail.mkdir()
    make_trail(trail, 50)
    url = f"tls://127.0.0.1:{node.port}"
    node.start()
    try:
        node.wait_ready()
        # without the token: refused, and the shipper says the broker is unavailable
        with shipper(trail, [url], "pod-t", state=tmp_path / "s1") as ship:
            ship.env.update(
                STEPGUARD_NATS_TLS_CA=str(ca),
                STEPGUARD_NATS_TLS_CERT=str(client_cert),
                STEPGUARD_NATS_TLS_KEY=str(client_key),
            )
            ship.stop()
            ship.start()
            wait_for(
                lambda: status(tmp_path / "s1").get("state") == "broker_unavailable", ship.output
            )
        # with it (a file the environment names): every record reaches the stream
        with shipper(trail, [url], "pod-t", state=tmp_path / "s2") as ship:
            ship.env.update(
                STEPGUARD_NATS_TLS_CA=str(ca),
                STEPGUARD_NATS_TLS_CERT=str(client_cert),
                STEPGUARD_NATS_TLS_KEY=str(client_key),
                STEPGUARD_NATS_TOKEN_FILE=str(token),
            )
            ship.stop()
            ship.start()
            wait_for(lambda: status(tmp_path / "s2").get("state") == "caught_up", ship.output)
            assert "s3cret" not in ship.output()
        held = stream_messages_tls([url], ca, client_cert, client_key, token.read_text().strip())
        assert held == len(trail_lines(trail))
    finally:
        node.stop()


def test_secrets_are_not_flags() -> None:
    for words in (
        ["ship", "--trail", ".", "--nats-token-file", "t"],
        ["ship", "--trail", ".", "--nats-password-file", "p"],
        ["collect", "--store", "postgresql://x/y", "--nats-creds-file", "c"],
    ):
        done = cli(*words)
        assert done.returncode == 1, words  # refused: no such flag
        assert "unrecognized arguments" in done.stderr or "invalid choice" in done.stderr
    with pytest.raises(ConfigError, match="secret"):
        settings.load(None, {}, nats_token_file="t")


def test_settings_from_a_file_then_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text(
        "fleet:\n  nats_servers: [nats://a:4222, nats://b:4222]\n  replicas: 1\n"
        "  nats_user: shipper\n  nats_password_file: /run/secrets/pw\n"
    )
    loaded = settings.load(config, {"STEPGUARD_REPLICAS": "3"})
    assert loaded.nats_servers == ("nats://a:4222", "nats://b:4222")
    assert loaded.replicas == 3 and loaded.nats_user == "shipper"
    assert loaded.nats_password_file == Path("/run/secrets/pw")
    with pytest.raises(ConfigError, match="nats_password_file"):
        loaded.connect_options()  # the file is read when connecting; it is not there
    with pytest.raises(ConfigError, match="replicas"):
        settings.load(None, {"STEPGUARD_REPLICAS": "2"})
