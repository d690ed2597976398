"""`stepguard ship`: a trail directory's records, published to NATS JetStream.

A process of its own beside the sidecar (a second container in the pod),
reading the files the sidecar writes: it can be slow, stopped or cut off from
the broker without a decision waiting for it. Each round, for every chain of
the directory (tail.py), it reads the complete lines after its cursor,
publishes them pipelined (the batch's messages written as one buffer, then the
acknowledgements gathered: no round trip per record) with `Nats-Msg-Id` =
`<sidecar>/<chain>:<seq>` (wire.py), and moves the cursor past the longest run
of records the broker acknowledged, in order. Each record gets its own
acknowledgement, matched by its reply subject; a refusal, a timeout or a
missing answer holds the cursor before that record. Once caught up it lingers
LINGER_S between rounds, so that a round carries tens of records: what a
record costs the pod's CPU is mostly per round. (JetStream's atomic batch
publish, which acknowledges a batch once, refuses a whole batch holding a
`Nats-Msg-Id` it has seen, error 10201: a resend after a crash would never
get through, so it is not used.) The cursor file (fsynced) only
ever names acknowledged records; it is written at most every CURSOR_EVERY_S
while records flow, and at once when the shipper is caught up, in trouble or
stopping, so a shipper killed at any moment resends at most the last
CURSOR_EVERY_S of acknowledged records plus the unacknowledged ones. A
resent or retried publish carries the same id (the broker drops the repeat
within its duplicate window, the store after it).

While the broker is away or the stream is full, the shipper says so (log,
status file, metrics) and retries with backoff; the trail keeps growing on the
sidecar's disk, and decisions go on.

Retention hold: the sidecar never deletes a segment. With `--prune-committed`
the shipper deletes rotated segments once the collectors' committed watermark
(their KV bucket, broker.py; also written to `<state>/watermark.json`) has
passed every record in them, and never the newest rotated one (the sidecar
reads it to continue the chain after a rotation).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from sidecar.audit.segments import Trail
from sidecar.fleet import acks, broker, tail, wire
from sidecar.fleet.metrics import ShipMetrics
from sidecar.fleet.settings import FleetSettings

log = logging.getLogger(__name__)

BATCH = 512  # records in flight at once, per chain
SEND_BYTES = 1 << 20  # a batch handed to nats-py in buffers of about this size
# Caught up after a round that shipped something: wait this long before the next one, so
# that rounds carry tens of records, not a handful (each round costs about half a
# millisecond of CPU whatever it carries: reading, the broker's round trip, the event
# loop's wake-ups); at 2,000 records/s this halves the shipper's CPU per record. It adds
# at most this much to the lag.
LINGER_S = 0.05
LIST_EVERY_S = 1.0  # the trail directory listed again at least this often
MANIFESTS_EVERY_S = 1.0  # workers manifests checked for changes at most this often
CURSOR_EVERY_S = 0.5  # while shipping: an fsynced cursor per round cost a third of the CPU
STATUS_EVERY_S = 1.0
WATERMARK_EVERY_S = 2.0
REPORT_EVERY_S = 5.0
# JetStream's error codes for a stream at its limits (bytes, messages, storage).
FULL_CODES = {10047, 10054, 10077, 10078}


@dataclass
class State:
    """What `stepguard ship --status` shows and the metrics export."""

    sidecar: str
    state: str = "starting"  # shipping | caught_up | broker_unavailable | broker_full
    message: str = ""
    lag_events: int = 0
    lag_seconds: float = 0.0
    shipped: int = 0
    duplicates: int = 0
    last_shipped: str = ""
    last_shipped_at: str = ""
    revision: str = ""
    watermarks: dict[str, int] = field(default_factory=dict)
    pruned: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "sidecar": self.sidecar,
            "state": self.state,
            "message": self.message,
            "lag_events": self.lag_events,
            "lag_seconds": round(self.lag_seconds, 3),
            "shipped": self.shipped,
            "duplicates": self.duplicates,
            "last_shipped": self.last_shipped,
            "last_shipped_at": self.last_shipped_at,
            "bundle_revision": self.revision,
            "watermarks": dict(sorted(self.watermarks.items())),
            "time": _now(),
        }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Shipper:
    def __init__(
        self,
        settings: FleetSettings,
        trail_dir: Path,
        state_dir: Path,
        sidecar: str,
        *,
        poll_s: float = 0.2,
        prune: bool = False,
        metrics: ShipMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.trail_dir = trail_dir
        self.state_dir = state_dir
        self.cursor_path = state_dir / "cursor.json"
        self.status_path = state_dir / "status.json"
        self.watermark_path = state_dir / "watermark.json"
        self.sidecar = wire.check_sidecar(sidecar)
        self.poll_s = poll_s
        self.prune = prune
        self.metrics = metrics
        self.cursor = tail.load_cursor(self.cursor_path)
        self.manifests: dict[str, str] = {}
        self._manifest_seen: dict[str, tuple[int, int, int]] = {}  # (inode, size, mtime)
        self.index: dict[str, tail.SegmentIndex] = {}
        self.state = State(self.sidecar)
        self.stop = asyncio.Event()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._acks: acks.Acks | None = None
        self._cursor_dirty = False
        self._cursor_saved = 0.0
        self._kv: KeyValue | None = None
        self._last = {"status": 0.0, "watermark": 0.0, "report": 0.0, "manifests": -1e9}
        self._listed: list[Trail] = []
        self._listed_key: tuple[int, int] | None = None
        self._listed_at = -1e9

    # --- the loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Ship until `stop` is set; reconnects and retries on its own."""
        backoff = 0.5
        while not self.stop.is_set():
            try:
                if self._nc is None or self._nc.is_closed or self._js is None:
                    await self._connect()
                assert self._js is not None
                js = self._js
                sent = await self.round(js)
                self._save_cursor(force=sent == 0)
                await self._housekeeping(js)
                backoff = 0.5
                if sent == 0:
                    await self._sleep(self.poll_s)
                elif sent < BATCH:
                    await asyncio.sleep(LINGER_S)  # caught up: let the next batch gather
            except Exception as exc:  # noqa: BLE001 (any broker trouble: say so, wait, retry)
                self._trouble(exc)
                self._save_cursor(force=True, quiet=True)
                await self._housekeeping(None)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self._save_cursor(force=True, quiet=True)
        await self._housekeeping(None, force=True)
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def _connect(self) -> None:
        self._js = None
        self._nc = await broker.connect(self.settings)
        js = self._nc.jetstream(timeout=self.settings.request_timeout_s)
        await broker.ensure_stream(js, self.settings)
        self._kv = None
        self._acks = await acks.Acks.start(self._nc)
        self._js = js

    def _save_cursor(self, *, force: bool, quiet: bool = False) -> None:
        """Write the cursor (acknowledged positions only) when it moved and is due; `quiet`
        (already in trouble, or stopping): a write that fails is logged, not raised."""
        if not self._cursor_dirty:
            return
        now = time.monotonic()
        if force or now - self._cursor_saved >= CURSOR_EVERY_S:
            try:
                tail.save_cursor(self.cursor_path, self.cursor, {"sidecar": self.sidecar})
            except OSError as exc:
                if not quiet:
                    raise
                log.error("ship: cannot write the cursor %s: %s", self.cursor_path, exc)
                return
            self._cursor_dirty, self._cursor_saved = False, now

    def _trouble(self, exc: BaseException) -> None:
        full = isinstance(exc, nats.js.errors.APIError) and exc.err_code in FULL_CODES
        state = "broker_full" if full else "broker_unavailable"
        message = (
            f"shipping stopped: the stream {self.settings.stream} is full ({exc}); decisions "
            "go on and the trail waits on the sidecar's disk until collectors drain it"
            if full
            else f"shipping stopped: the broker is unavailable ({type(exc).__name__}: {exc}); "
            "retrying, the trail waits on the sidecar's disk"
        )
        if self.state.state != state:
            log.error("%s", message)
        self.state.state, self.state.message = state, message
        if self.metrics is not None:
            self.metrics.errors.labels(state).inc()

    async def round(self, js: JetStreamContext) -> int:
        """One pass over every chain: publish what is new; the number of records shipped."""
        now = time.monotonic()
        if now - self._last["manifests"] >= MANIFESTS_EVERY_S:
            await self._ship_manifests(js)
            self._last["manifests"] = now
        chains = self._chains(now)
        if len(chains) == 1:
            sent = await self._ship_chain(js, chains[0])
        else:
            # Every chain at once (a worker's chain each): more records in flight per round.
            done = await asyncio.gather(
                *(self._ship_chain(js, t) for t in chains), return_exceptions=True
            )
            failed = [d for d in done if isinstance(d, BaseException)]
            if failed:
                raise failed[0]
            sent = sum(d for d in done if isinstance(d, int))
        if self.state.state in ("starting", "broker_unavailable", "broker_full", "shipping"):
            self.state.state = "shipping" if sent else "caught_up"
            self.state.message = ""
        return sent

    def _chains(self, now: float) -> list[Trail]:
        """The directory's chains: listed again when the directory changed (a rotation, a
        new worker's chain) and at least every LIST_EVERY_S, not every round (listing
        cost more than reading the round's records). A listing taken just before a
        rotation still reads on: tail.read_lines finds a segment under its rotated name."""
        folder = self.trail_dir if self.trail_dir.is_dir() else self.trail_dir.parent
        try:
            st = folder.stat()
            key: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
        except OSError:
            key = None
        if key is None or key != self._listed_key or now - self._listed_at >= LIST_EVERY_S:
            self._listed = tail.chains_of(self.trail_dir)
            self._listed_key, self._listed_at = key, now
        return self._listed

    async def _ship_chain(self, js: JetStreamContext, trail: Trail) -> int:
        chain = Path(trail.name).name
        index = self.index.setdefault(chain, tail.SegmentIndex())
        pos = self.cursor.get(chain)
        lines = list(tail.read_lines(trail, pos, index, BATCH))
        if not lines:
            return 0
        subject = wire.record_subject(self.settings.subject_prefix, self.sidecar, chain)
        results = await self._publish_all(js, subject, chain, lines)
        done = 0
        failure: BaseException | None = None
        for result in results:
            if isinstance(result, BaseException):
                failure = result
                break
            done += 1
            if result:
                self.state.duplicates += 1
        if done:
            last = lines[done - 1]
            self.cursor[chain] = tail.Position(last.segment, last.end, last.seq, last.hash)
            self._cursor_dirty = True
            self.state.shipped += done
            self.state.last_shipped = wire.msg_id(self.sidecar, chain, last.seq)
            self.state.last_shipped_at = _now()
            for line in reversed(lines[:done]):
                revision = line.revision
                if revision:
                    self.state.revision = revision
                    break
            if self.metrics is not None:
                self.metrics.published.inc(done)
        if failure is not None:
            raise failure
        return done

    async def _publish_all(
        self, js: JetStreamContext, subject: str, chain: str, lines: list[tail.Line]
    ) -> list[bool | BaseException]:
        """Publish the records pipelined (one buffer, wire.hpub_records), then gather their
        acknowledgements: for each, in order, True when the broker says it already had it,
        False when it stored it, or the exception (a timeout for every one still
        unacknowledged after the request timeout)."""
        assert self._acks is not None and self._nc is not None
        answers, nc = self._acks, self._nc
        if nc.is_closed or nc.is_draining:
            raise nats.errors.ConnectionClosedError
        if not nc.is_connected:
            # nats-py would buffer a publish while it reconnects; nothing is gained here by
            # that (the records wait on disk): the round fails and is retried.
            raise nats.errors.ConnectionReconnectingError
        limit = nc.max_payload
        for line in lines:
            if len(line.data) > limit:
                log.error(
                    "ship: record %d of %s is %d bytes, over the broker's max_payload %d",
                    line.seq,
                    chain,
                    len(line.data),
                    limit,
                )
                raise nats.errors.MaxPayloadError
        batch = answers.open(len(lines))
        try:
            start = 0
            while start < len(lines):  # buffers of about SEND_BYTES (large records: fewer)
                end, size = start, 0
                while end < len(lines) and (end == start or size < SEND_BYTES):
                    size += len(lines[end].data)
                    end += 1
                data = wire.hpub_records(
                    subject,
                    batch.reply_prefix,
                    self.sidecar,
                    chain,
                    ((line.seq, line.segment, line.data) for line in lines[start:end]),
                    first=start,
                )
                # nats-py's own buffer and flusher (the pinned version's; `publish` does the
                # same per message): the batch goes out in as few writes as its size allows.
                await nc._send_command(data)
                start = end
            await nc._flush_pending()
            if batch.missing:
                await asyncio.wait((batch.done,), timeout=self.settings.request_timeout_s)
            return [nats.errors.TimeoutError() if r is None else r for r in batch.results]
        finally:
            answers.close(batch)

    async def _ship_manifests(self, js: JetStreamContext) -> None:
        """Each workers manifest, when it changed (the store's readers need it)."""
        for path in tail.manifests_of(self.trail_dir):
            try:
                st = path.stat()
                seen = (st.st_ino, st.st_size, st.st_mtime_ns)
                if self._manifest_seen.get(path.name) == seen:
                    continue  # unchanged since it was shipped: not read again each round
                content = path.read_bytes()
            except OSError:
                continue
            digest = hashlib.sha256(content).hexdigest()[:32]
            if self.manifests.get(path.name) == digest:
                self._manifest_seen[path.name] = seen
                continue
            try:
                trail = str(json.loads(content).get("trail", ""))
            except (ValueError, AttributeError):
                continue  # being rewritten, or damaged: `audit verify` says which
            headers = {
                wire.MSG_ID: f"{self.sidecar}/{path.name}:{digest}",
                wire.H_KIND: "manifest",
                wire.H_SIDECAR: self.sidecar,
                wire.H_CHAIN: str(trail) or path.name,
            }
            await js.publish(
                wire.manifest_subject(self.settings.subject_prefix, self.sidecar),
                content,
                headers=headers,
                timeout=self.settings.request_timeout_s,
            )
            self.manifests[path.name] = digest
            self._manifest_seen[path.name] = seen

    # --- status, lag, watermark, pruning ---------------------------------------------

    async def _housekeeping(self, js: JetStreamContext | None, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last["status"] >= STATUS_EVERY_S:
            self._last["status"] = now
            self._measure_lag()
            self._write_status()
        if js is not None and now - self._last["watermark"] >= WATERMARK_EVERY_S:
            self._last["watermark"] = now
            with contextlib.suppress(Exception):  # a missing bucket: no collector yet
                await self._watermarks(js)
        if self._nc is not None and now - self._last["report"] >= REPORT_EVERY_S:
            self._last["report"] = now
            with contextlib.suppress(Exception):
                await self._nc.publish(
                    wire.report_subject(self.settings.subject_prefix, self.sidecar),
                    json.dumps(self.state.to_json()).encode(),
                )

    def _measure_lag(self) -> None:
        events, oldest = 0, ""
        for trail in tail.chains_of(self.trail_dir):
            chain = Path(trail.name).name
            index = self.index.setdefault(chain, tail.SegmentIndex())
            pos = self.cursor.get(chain)
            behind, _ = tail.backlog(trail, pos, index)
            events += behind
            if behind:
                first = next(iter(tail.read_lines(trail, pos, index, 1)), None)
                t = first.time if first is not None else ""
                if t and (not oldest or t < oldest):
                    oldest = t
        seconds = 0.0
        if oldest:
            with contextlib.suppress(ValueError):
                at = datetime.fromisoformat(oldest.replace("Z", "+00:00"))
                seconds = max(0.0, (datetime.now(UTC) - at).total_seconds())
        self.state.lag_events, self.state.lag_seconds = events, seconds
        if self.metrics is not None:
            self.metrics.lag_events.set(events)
            self.metrics.lag_seconds.set(seconds)
            self.metrics.up.set(0 if self.state.state.startswith("broker_") else 1)
            for s in ("broker_unavailable", "broker_full"):
                self.metrics.stopped.labels(s).set(1 if self.state.state == s else 0)

    def _write_status(self) -> None:
        with contextlib.suppress(OSError):
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.status_path.with_name(f"status.json.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(self.state.to_json(), sort_keys=True) + "\n")
            os.replace(tmp, self.status_path)

    async def _watermarks(self, js: JetStreamContext) -> None:
        if self._kv is None:
            self._kv = await js.key_value(self.settings.watermark_bucket)
        found: dict[str, int] = {}
        trails = tail.chains_of(self.trail_dir)
        for trail in trails:
            chain = Path(trail.name).name
            try:
                entry = await self._kv.get(wire.watermark_key(self.sidecar, chain))
            except nats.js.errors.KeyNotFoundError:
                continue
            if entry.value:
                found[chain] = int(json.loads(entry.value)["seq"])
        self.state.watermarks = found
        body = {"sidecar": self.sidecar, "chains": found, "time": _now()}
        tmp = self.watermark_path.with_name(f"watermark.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(body, sort_keys=True) + "\n")
        os.replace(tmp, self.watermark_path)
        if self.prune:
            for trail in trails:
                chain = Path(trail.name).name
                if chain in found:
                    self._prune(trail, min(found[chain], self._cursor_seq(chain)))

    def _cursor_seq(self, chain: str) -> int:
        pos = self.cursor.get(chain)
        return pos.seq if pos is not None else -1

    def _prune(self, trail: Trail, committed: int) -> None:
        """Delete rotated segments whose every record is committed, never the newest one."""
        index = self.index.setdefault(Path(trail.name).name, tail.SegmentIndex())
        files = index.files(trail)
        rotated = sorted(s for s, p in files.items() if p.name != Path(trail.name).name)
        for segment in rotated[:-1]:
            path = files[segment]
            last = tail.last_seq_of(path)
            if last is None or last > committed:
                break
            try:
                path.unlink()
            except OSError as exc:
                log.warning("ship: cannot prune %s: %s", path, exc)
                break
            self._listed_at = -1e9  # list the directory again next round
            log.info("ship: pruned %s (records up to seq %d are in the store)", path, last)
            self.state.pruned.append(path.name)
            if self.metrics is not None:
                self.metrics.pruned.inc()
