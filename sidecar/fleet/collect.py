"""`stepguard collect`: the stream's records written into PostgreSQL, each exactly once.

Every collector pulls from one durable JetStream consumer (broker.py), so
several may run at once and share the work; a record is acknowledged only
after the transaction that stored it committed. A collector killed between
the two has its records redelivered after the consumer's ack wait, and the
store's unique key (sidecar, chain, seq) keeps them once. After each batch the
chains it touched are checked on (continuity.py) and their committed
watermarks are put into the watermark bucket for the shippers' retention hold.
The shippers' status reports (plain NATS) are kept in `stepguard_sidecars` for
`stepguard fleet status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
import psycopg
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from sidecar.fleet import broker, continuity, store, wire
from sidecar.fleet.metrics import CollectMetrics
from sidecar.fleet.settings import FleetSettings
from sidecar.fleet.tail import _KIND, _SEQ, _TIME

log = logging.getLogger(__name__)
BATCH = 500


@dataclass
class Counts:
    stored: int = 0
    repeated: int = 0
    findings: list[str] = field(default_factory=list)


class Collector:
    def __init__(
        self,
        settings: FleetSettings,
        dsn: str,
        *,
        key: bytes | None = None,
        batch: int = BATCH,
        gap_grace_s: float = continuity.GAP_GRACE_S,
        metrics: CollectMetrics | None = None,
        name: str = "collector",
    ) -> None:
        self.settings = settings
        self.dsn = dsn
        self.key = key
        self.batch = batch
        self.gap_grace_s = gap_grace_s
        self.metrics = metrics
        self.name = name
        self.stop = asyncio.Event()
        self.counts = Counts()
        self._conn: psycopg.Connection[Any] | None = None
        self._kv: KeyValue | None = None
        self._published: dict[tuple[str, str], int] = {}
        self._marks: dict[tuple[str, str], int] = {}
        self._reports: dict[str, dict[str, Any]] = {}

    def _db(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = store.connect(self.dsn)
            self._conn.autocommit = True
            store.ensure_schema(self._conn)
        return self._conn

    async def run(self) -> None:
        """Collect until `stop` is set; reconnects to the broker and the store on its own."""
        backoff = 0.5
        while not self.stop.is_set():
            try:
                await self._session()
                backoff = 0.5
            except Exception as exc:  # noqa: BLE001 (broker or store trouble: wait, retry)
                log.error("collect: %s: %s; retrying", type(exc).__name__, exc)
                if self.metrics is not None:
                    self.metrics.batch_errors.labels(type(exc).__name__).inc()
                if isinstance(exc, psycopg.Error) and self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)
        if self._conn is not None:
            self._conn.close()

    async def _session(self) -> None:
        await asyncio.to_thread(self._db)
        nc = await broker.connect(self.settings)
        try:
            js = nc.jetstream(timeout=self.settings.request_timeout_s)
            await broker.ensure_stream(js, self.settings)
            self._kv = await broker.ensure_bucket(js, self.settings)
            sub = await js.pull_subscribe(
                f"{self.settings.subject_prefix}.>",
                durable=self.settings.consumer,
                stream=self.settings.stream,
                config=broker.consumer_config(self.settings),
            )
            reports = await nc.subscribe(
                wire.report_subject(self.settings.subject_prefix, "*"), cb=self._report
            )
            idle = 0
            while not self.stop.is_set():
                try:
                    msgs = await sub.fetch(self.batch, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    msgs = []
                except nats.js.errors.ServiceUnavailableError:
                    await asyncio.sleep(0.5)  # a leader election: retry
                    continue
                if msgs:
                    await self._handle(msgs)
                    idle = 0
                else:
                    idle += 1
                    if idle % 3 == 1:  # chains another collector left behind, and gaps
                        await asyncio.to_thread(self._advance_behind)
                        await self._publish_watermarks()
                if self._reports:
                    pending, self._reports = self._reports, {}
                    await asyncio.to_thread(self._write_reports, pending)
            with contextlib.suppress(Exception):
                await reports.unsubscribe()
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _report(self, msg: Msg) -> None:
        try:
            report = json.loads(msg.data)
            sidecar = wire.check_sidecar(str(report["sidecar"]))
        except (ValueError, KeyError, TypeError, Exception):  # noqa: BLE001 (not ours)
            return
        self._reports[sidecar] = report  # written by the loop, on its own connection use

    async def _handle(self, msgs: list[Msg]) -> None:
        rows: list[store.Row] = []
        manifests: list[tuple[str, str, bytes]] = []
        for m in msgs:
            try:
                env = wire.envelope(dict(m.headers or {}))
            except Exception as exc:  # noqa: BLE001 (a message that is not ours)
                log.error("collect: dropping a message on %s: %s", m.subject, exc)
                continue
            if env.kind == "manifest":
                manifests.append((env.sidecar, env.chain, m.data))
                continue
            line = m.data
            head = _SEQ.match(line)
            if head is None or int(head[1]) != env.seq:
                log.error("collect: %s: the line does not start with its seq", m.subject)
                rows.append(self._bad(env, line))
                continue
            kind = _KIND.search(line)
            t = _TIME.search(line)
            rows.append(
                store.Row(
                    env.sidecar,
                    env.chain,
                    env.seq,
                    env.segment,
                    kind[1].decode() if kind else "",
                    t[1].decode() if t else "",
                    head[3].decode(),
                    head[2].decode(),
                    line,
                )
            )
        await asyncio.to_thread(self._write, rows, manifests)
        for m in msgs:
            await m.ack()
        await self._publish_watermarks()

    def _write_reports(self, reports: dict[str, dict[str, Any]]) -> None:
        for sidecar, report in reports.items():
            store.put_report(self._db(), sidecar, report)

    def _bad(self, env: wire.Envelope, line: bytes) -> store.Row:
        return store.Row(env.sidecar, env.chain, env.seq, env.segment, "", "", "", "", line)

    def _write(self, rows: list[store.Row], manifests: list[tuple[str, str, bytes]]) -> None:
        conn = self._db()
        for sidecar, trail, content in manifests:
            store.put_manifest(conn, sidecar, trail, content)
        # One row per key, the first delivered (a redelivery may sit beside its first
        # delivery); a different line under a key already in the batch is a fork.
        first: dict[tuple[str, str, int], store.Row] = {}
        forks: list[store.Row] = []
        for r in rows:
            seen = first.setdefault((r.sidecar, r.chain, r.seq), r)
            if seen is not r and seen.line != r.line:
                forks.append(r)
        unique = list(first.values())
        stored, collided = store.insert(conn, unique)
        forks.extend(collided)
        self.counts.stored += stored
        self.counts.repeated += len(rows) - stored
        if self.metrics is not None:
            self.metrics.stored.inc(stored)
            self.metrics.redelivered.inc(len(rows) - stored)
        for r in forks:
            message = (
                f"two different records claim seq {r.seq} of this chain: the stored one "
                "was kept, the other is in this finding's detail (a trail rewritten, or two "
                "sidecars shipping under one name)"
            )
            if store.add_finding(
                conn,
                r.sidecar,
                r.chain,
                r.seq,
                kind="fork",
                message=message,
                detail={"other_line": r.line.decode(errors="replace")},
            ):
                self._found(["fork"])
        for sidecar, chain in sorted({(r.sidecar, r.chain) for r in unique}):
            self._advance(sidecar, chain)

    def _advance(self, sidecar: str, chain: str) -> None:
        mark, found = continuity.advance(
            self._db(), sidecar, chain, self.key, gap_grace_s=self.gap_grace_s
        )
        self._found(found)
        if mark is not None:
            self._marks[(sidecar, chain)] = mark.seq

    def _advance_behind(self) -> None:
        for sidecar, chain in continuity.behind(self._db()):
            self._advance(sidecar, chain)

    def _found(self, kinds: list[str]) -> None:
        for kind in kinds:
            log.warning("collect: integrity finding: %s (see `stepguard fleet status`)", kind)
            self.counts.findings.append(kind)
            if self.metrics is not None:
                self.metrics.findings.labels(kind).inc()

    async def _publish_watermarks(self) -> None:
        if self._kv is None:
            return
        for (sidecar, chain), seq in list(self._marks.items()):
            if self._published.get((sidecar, chain), -2) >= seq:
                continue
            value = json.dumps({"seq": seq}).encode()
            with contextlib.suppress(Exception):
                await self._kv.put(wire.watermark_key(sidecar, chain), value)
                self._published[(sidecar, chain)] = seq
