"""`stepguard ship`: a trail directory's records, published to NATS JetStream.

A process of its own beside the sidecar (a second container in the pod),
reading the files the sidecar writes: it can be slow, stopped or cut off from
the broker without a decision waiting for it. Each round, for every chain of
the directory (tail.py), it reads the complete lines after its cursor,
publishes them pipelined (every publish written, then the acknowledgements
gathered: no round trip per record) with `Nats-Msg-Id` =
`<sidecar>/<chain>:<seq>` (wire.py), and moves the cursor past the longest run
of records the broker acknowledged, in order. The cursor file (fsynced) only
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
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from sidecar.audit.segments import Trail
from sidecar.fleet import broker, tail, wire
from sidecar.fleet.metrics import ShipMetrics
from sidecar.fleet.settings import FleetSettings

log = logging.getLogger(__name__)

BATCH = 512  # records in flight at once, per chain
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
        self.index: dict[str, tail.SegmentIndex] = {}
        self.state = State(self.sidecar)
        self.stop = asyncio.Event()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._acks: _Acks | None = None
        self._cursor_dirty = False
        self._cursor_saved = 0.0
        self._kv: KeyValue | None = None
        self._last = {"status": 0.0, "watermark": 0.0, "report": 0.0}

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
        self._acks = await _Acks.start(self._nc)
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
        await self._ship_manifests(js)
        # Every chain at once (a worker's chain each): more records in flight per round.
        done = await asyncio.gather(
            *(self._ship_chain(js, t) for t in tail.chains_of(self.trail_dir)),
            return_exceptions=True,
        )
        failed = [d for d in done if isinstance(d, BaseException)]
        if failed:
            raise failed[0]
        sent = sum(d for d in done if isinstance(d, int))
        if self.state.state in ("starting", "broker_unavailable", "broker_full", "shipping"):
            self.state.state = "shipping" if sent else "caught_up"
            self.state.message = ""
        return sent

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
        """Publish the records pipelined, then gather their acknowledgements in order: for
        each, True when the broker says it already had it, or the exception (a timeout for
        every one still unacknowledged after the request timeout)."""
        assert self._acks is not None and self._nc is not None
        acks, nc = self._acks, self._nc
        prefix = wire.chain_id(self.sidecar, chain) + ":"
        futures: list[asyncio.Future[bool]] = []
        results: list[bool | BaseException] = []
        try:
            for line in lines:
                headers = {
                    wire.MSG_ID: prefix + str(line.seq),
                    wire.H_SIDECAR: self.sidecar,
                    wire.H_CHAIN: chain,
                    wire.H_SEQ: str(line.seq),
                    wire.H_SEGMENT: str(line.segment),
                }
                reply, future = acks.expect()
                futures.append(future)
                await nc.publish(subject, line.data, reply=reply, headers=headers)
        except Exception as exc:  # noqa: BLE001 (the rest is not sent: reported in order)
            futures.pop().cancel()
            results = [exc]
        if futures:
            done, _ = await asyncio.wait(futures, timeout=self.settings.request_timeout_s)
            answers: list[bool | BaseException] = []
            for f in futures:
                if f not in done or f.cancelled():
                    f.cancel()
                    answers.append(nats.errors.TimeoutError())
                elif (err := f.exception()) is not None:
                    answers.append(err)
                else:
                    answers.append(f.result())
            results = answers + results
        acks.forget(futures)
        return results

    async def _ship_manifests(self, js: JetStreamContext) -> None:
        """Each workers manifest, when it changed (the store's readers need it)."""
        for path in tail.manifests_of(self.trail_dir):
            try:
                content = path.read_bytes()
            except OSError:
                continue
            digest = hashlib.sha256(content).hexdigest()[:32]
            if self.manifests.get(path.name) == digest:
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
            log.info("ship: pruned %s (records up to seq %d are in the store)", path, last)
            self.state.pruned.append(path.name)
            if self.metrics is not None:
                self.metrics.pruned.inc()


class _Acks:
    """The broker's acknowledgements of pipelined publishes, on one reply subscription per
    connection (`<inbox>.<n>`). nats-py's own `publish_async` loses a rejection (its reply
    handler raises the APIError instead of handing it to the publish's future), so a full
    stream would look like a timeout: here each reply resolves its future, error or not."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pending: dict[str, asyncio.Future[bool]] = {}
        self._n = 0

    @classmethod
    async def start(cls, nc: Client) -> _Acks:
        acks = cls(nc.new_inbox() + ".")
        await nc.subscribe(acks.prefix + "*", cb=acks._on_reply)
        return acks

    def expect(self) -> tuple[str, asyncio.Future[bool]]:
        """A reply subject and the future its acknowledgement resolves (True: duplicate)."""
        self._n += 1
        token = str(self._n)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.pending[token] = future
        return self.prefix + token, future

    def forget(self, futures: list[asyncio.Future[bool]]) -> None:
        """Drop the futures of a finished batch (answered, timed out or never sent)."""
        if len(self.pending) <= len(futures):
            self.pending = {t: f for t, f in self.pending.items() if not f.done()}
        else:
            gone = {id(f) for f in futures}
            self.pending = {t: f for t, f in self.pending.items() if id(f) not in gone}

    async def _on_reply(self, msg: Msg) -> None:
        future = self.pending.pop(msg.subject[len(self.prefix) :], None)
        if future is None or future.done():
            return  # answered after its batch gave up on it: resent with the same id
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            resp = json.loads(msg.data)
        except ValueError as exc:
            future.set_exception(exc)
            return
        if isinstance(resp, dict) and "error" in resp:
            try:
                nats.js.errors.APIError.from_error(resp["error"])  # raises the typed error
            except nats.js.errors.APIError as err:
                future.set_exception(err)
                return
        future.set_result(bool(resp.get("duplicate")) if isinstance(resp, dict) else False)
