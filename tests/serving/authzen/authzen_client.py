"""A real HTTP client (stdlib http.client) and a real sidecar serving AuthZEN, for tests."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import Running, running_sidecar

TESTS = Path(__file__).resolve().parent
TODO = TESTS / "authzen_todo"
CERT = TESTS / "authzen_cert"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class Pdp:
    """One keep-alive HTTP/1.1 connection to the sidecar's AuthZEN listener."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.address = address
        self._conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=30)

    def close(self) -> None:
        self._conn.close()

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str | None = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        data = raw if raw is not None else json.dumps(body).encode()
        sent = dict(headers or {})
        if content_type is not None:
            sent["Content-Type"] = content_type
        return self.request("POST", path, data, sent)

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Reply:
        return self.request("GET", path, None, dict(headers or {}))

    def request(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> Reply:
        self._conn.request(method, path, body=data, headers=headers)
        response = self._conn.getresponse()
        body = response.read()
        names = {k.lower(): v for k, v in response.getheaders()}
        return Reply(response.status, names, body)

    # Shorthands for the five endpoints.
    def evaluation(self, body: Any, **kw: Any) -> Reply:
        return self.post("/access/v1/evaluation", body, **kw)

    def evaluations(self, body: Any, **kw: Any) -> Reply:
        return self.post("/access/v1/evaluations", body, **kw)

    def search(self, kind: str, body: Any, **kw: Any) -> Reply:
        return self.post(f"/access/v1/search/{kind}", body, **kw)


@contextmanager
def serving(tmp: Path, policies: Path, **overrides: Any) -> Iterator[tuple[Running, Pdp]]:
    """The real sidecar (gRPC and AuthZEN on loopback, audit to a file) and a client."""
    with running_sidecar(tmp, policies=policies, authzen_listen="127.0.0.1:0", **overrides) as run:
        address = run.sidecar.endpoints.authzen
        assert address is not None
        pdp = Pdp(address)
        try:
            yield run, pdp
        finally:
            pdp.close()


def decisions(run: Running) -> list[dict[str, Any]]:
    """The decision events of the audit trail, in order."""
    return [e for e in run.audit_events() if "decision" in e]
