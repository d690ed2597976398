"""The JetStream side shared by the shipper and the collectors: stream, consumer, bucket.

The stream holds the trail between a shipper's publish and a collector's
commit: work-queue retention (a record leaves the stream once a collector has
written it to PostgreSQL and acknowledged it), `discard: new` (a full stream
refuses new records; it never drops old ones a collector has not written), a
duplicate window for `Nats-Msg-Id`, and R3 by default. Run the servers with
`sync_interval: always` (docs/fleet.md says why: an acknowledgement is
otherwise not on disk for up to two minutes).

The watermark bucket (a JetStream key-value bucket) carries each chain's
committed watermark from the collectors back to the shippers (ship.py), which
hold the trail's rotated segments until it has passed them.
"""

from __future__ import annotations

import logging
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from sidecar.fleet.settings import FleetSettings

log = logging.getLogger(__name__)
ACK_WAIT_S = 30.0  # a record a collector took and never acknowledged is redelivered after this


async def connect(settings: FleetSettings, **callbacks: Any) -> Client:
    async def quiet(exc: Exception) -> None:  # reconnects are logged by the caller's state
        log.debug("nats: %s", exc)

    opts = settings.connect_options()
    opts.setdefault("error_cb", quiet)
    opts.update(callbacks)
    return await nats.connect(**opts)


def stream_config(settings: FleetSettings) -> StreamConfig:
    return StreamConfig(
        name=settings.stream,
        subjects=[f"{settings.subject_prefix}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        discard=DiscardPolicy.NEW,
        max_bytes=settings.stream_max_bytes,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        duplicate_window=settings.duplicate_window_s,
    )


async def ensure_stream(js: JetStreamContext, settings: FleetSettings) -> None:
    """Create the stream when missing; an existing one is left as its operator set it."""
    try:
        await js.stream_info(settings.stream)
    except NotFoundError:
        await js.add_stream(stream_config(settings))


async def ensure_bucket(js: JetStreamContext, settings: FleetSettings) -> KeyValue:
    try:
        return await js.key_value(settings.watermark_bucket)
    except BucketNotFoundError:
        return await js.create_key_value(
            bucket=settings.watermark_bucket, history=1, replicas=settings.replicas
        )


def consumer_config(settings: FleetSettings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=settings.consumer,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_ack_pending=50_000,
        filter_subject=f"{settings.subject_prefix}.>",
    )
