"""Fixtures of the fleet's tests: one PostgreSQL per session (a database per test), and a
single JetStream server per test (tests/fleet/servers.py starts them, stops them by PID)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.servers import Nats, Postgres, nats_server, postgres_server

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_dsn(postgres: Postgres) -> str:
    """A fresh database of this test's own."""
    return postgres.create_db(f"t{next(_names)}")


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[Nats]:
    root = tmp_path / "nats"
    root.mkdir()
    with nats_server(root) as server:
        yield server
