"""The collectors check every chain as it arrives: a gap, a fork and a bad hash each become a
finding that `stepguard fleet status` shows (exit 3); a sidecar serving an older bundle is
revision drift. Records are published straight to the stream, as a broken or forged
shipper would."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nats as natslib

from sidecar.audit.chain import canonical
from sidecar.audit.filesink import FileSink
from sidecar.fleet import wire
from sidecar.fleet.broker import ensure_stream
from sidecar.fleet.settings import FleetSettings
from tests.audit.trails import make_trail
from tests.fleet.fleet import cli, collector, findings, shipper, store_count, trail_lines, wait_for
from tests.fleet.servers import Nats

SETTINGS = FleetSettings(replicas=1)


def publish(urls: list[str], sidecar: str, chain: str, records: list[tuple[int, bytes]]) -> None:
    async def go() -> None:
        nc = await natslib.connect(servers=urls)
        js = nc.jetstream()
        await ensure_stream(js, SETTINGS)
        subject = wire.record_subject(SETTINGS.subject_prefix, sidecar, chain)
        for seq, line in records:
            headers = {
                wire.MSG_ID: f"{wire.msg_id(sidecar, chain, seq)}:{hash(line)}",
                wire.H_SIDECAR: sidecar,
                wire.H_CHAIN: chain,
                wire.H_SEQ: str(seq),
                wire.H_SEGMENT: "1",
            }
            await js.publish(subject, line, headers=headers)
        await nc.close()

    asyncio.run(go())


def tampered(line: bytes) -> bytes:
    """The same record with one value changed and its line kept canonical (so only the
    hash can tell)."""
    obj = json.loads(line)
    head = {k: obj.pop(k) for k in ("seq", "prev", "hash")}
    obj["decision"] = "DENY" if obj.get("decision") == "ALLOW" else "ALLOW"
    body = canonical(obj)
    return (
        b'{"seq":%d,"prev":"%s","hash":"%s",'
        % (head["seq"], head["prev"].encode(), head["hash"].encode())
        + body[1:]
    )


def test_gaps_forks_and_bad_hashes_are_findings_shown_never_hidden(
    tmp_path: Path, nats: Nats, pg_dsn: str
) -> None:
    trail = tmp_path / "trail"
    trail.mkdir()
    make_trail(trail, 12)
    lines = sorted(trail_lines(trail).items())
    by_seq = {seq: line for (_, seq), line in lines}
    sent = [(s, by_seq[s]) for s in range(0, 4)]  # 0..3
    sent += [(s, by_seq[s]) for s in range(5, 8)]  # 4 never comes: a gap
    sent.append((8, tampered(by_seq[8])))  # a changed record: its hash does not verify
    sent += [(s, by_seq[s]) for s in range(9, 12)]
    sent.append((2, tampered(by_seq[2])))  # a second, different record 2: a fork
    publish(nats.urls, "pod-x", "audit.jsonl", sent)
    with collector(pg_dsn, nats.urls, "--gap-grace", "0.5", log_dir=tmp_path) as c:
        wait_for(lambda: store_count(pg_dsn) == 11, c.output)
        wait_for(lambda: len(findings(pg_dsn)) == 3, lambda: f"{findings(pg_dsn)} {c.output()}")
    assert sorted((k, q) for _, _, q, k in findings(pg_dsn)) == [
        ("bad_hash", 8),
        ("fork", 2),
        ("gap", 4),
    ]
    shown = cli("fleet", "status", "--store", pg_dsn)
    assert shown.returncode == 3, shown.stdout + shown.stderr
    assert "gap" in shown.stdout and "records 4..4" in shown.stdout
    assert "fork" in shown.stdout and "bad_hash" in shown.stdout
    # the store's trail says the same to `audit verify`: the stored record 8 was changed
    verify = cli("audit", "verify", "--store", pg_dsn)
    assert verify.returncode != 0


def test_a_sidecar_serving_an_older_bundle_is_revision_drift(
    tmp_path: Path, nats: Nats, pg_dsn: str
) -> None:
    def trail_with(directory: Path, revision: str, minute: int) -> Path:
        directory.mkdir()
        sink = FileSink(directory / "audit.jsonl")
        for i in range(5):
            event: dict[str, Any] = {
                "schema": 1,
                "kind": "decision",
                "id": f"{revision}-{i}",
                "decision": "ALLOW",
                "policy_revision": revision,
                "time": f"2026-12-01T10:{minute:02d}:{i:02d}.000000Z",
            }
            sink.write(event)
        sink.close()
        return directory

    old = trail_with(tmp_path / "a", "rev-old", 0)
    new = trail_with(tmp_path / "b", "rev-new", 30)
    with (
        collector(pg_dsn, nats.urls, log_dir=tmp_path) as c,
        shipper(old, nats.urls, "pod-old"),
        shipper(new, nats.urls, "pod-new"),
    ):
        total = len(trail_lines(old)) + len(trail_lines(new))
        wait_for(lambda: store_count(pg_dsn) == total, c.output)
        shown = cli("fleet", "status", "--store", pg_dsn, "--json")
    assert shown.returncode == 3, shown.stdout + shown.stderr
    view = json.loads(shown.stdout)
    assert view["newest_revision"] == "rev-new"
    revisions = {s["sidecar"]: s["bundle_revision"] for s in view["sidecars"]}
    assert revisions == {"pod-old": "rev-old", "pod-new": "rev-new"}
    drift = [f for f in view["findings"] if f["kind"] == "revision_drift"]
    assert [f["sidecar"] for f in drift] == ["pod-old"]
    assert "rev-old" in drift[0]["message"] and drift[0]["resolved_at"] is None
    table = cli("fleet", "status", "--store", pg_dsn)
    assert "DRIFT" in table.stdout and "revision_drift" in table.stdout
    header, *rows = table.stdout.split("\n\n")[0].splitlines()
    assert "last shipped" in header and len(rows) == 2
