"""The broker's acknowledgements of the shipper's pipelined publishes (ship.py).

Every record is acknowledged on its own: a batch's records carry the reply
subjects `<inbox>.<batch>.<place>`, one subscription takes every answer, and
the batch waits on one future. The shipper moves its cursor only past the
longest run of records acknowledged in order, so a refusal, a timeout or an
answer that never comes holds it before that record.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg


class Batch:
    """One batch's acknowledgements, by place: None until answered."""

    __slots__ = ("done", "missing", "reply_prefix", "results", "token")

    def __init__(self, token: str, reply_prefix: str, size: int) -> None:
        self.token = token
        self.reply_prefix = reply_prefix
        self.results: list[bool | BaseException | None] = [None] * size
        self.missing = size
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Acks:
    """The broker's acknowledgements of pipelined publishes, on one reply subscription per
    connection: a record's reply subject is `<inbox>.<batch>.<place>`, so an answer is
    matched to its record by its subject alone, and a batch waits on one future (not one
    per record).

    An answer is taken where nats-py's parser hands over each message (`_process_msg` of
    the pinned version, wrapped for this subscription only): nats-py would otherwise build
    a Msg, queue it and wake a task per acknowledgement, half of what shipping a record
    cost. nats-py's own `publish_async` also loses a rejection (its reply handler raises
    the APIError instead of handing it to the publish's future), so a full stream would
    look like a timeout: here each answer is kept, error or not."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._prefix_b = prefix.encode()
        self.batches: dict[str, Batch] = {}
        self._n = 0

    @classmethod
    async def start(cls, nc: Client) -> Acks:
        acks = cls(nc.new_inbox() + ".")
        sub = await nc.subscribe(acks.prefix + "*.*", cb=acks.on_msg)
        acks._take_over(nc, sub._id)
        return acks

    def _take_over(self, nc: Client, sid: int) -> None:
        process = nc._process_msg

        async def process_msg(
            msg_sid: int, subject: bytes, reply: bytes, data: bytes, headers: Any
        ) -> None:
            if msg_sid != sid:
                await process(msg_sid, subject, reply, data, headers)
            elif plain_ack(data):
                self.take(subject[len(self._prefix_b) :].decode(), False)
            else:  # a duplicate, an error, a 503 status: read as nats-py reads any message
                await process(msg_sid, subject, reply, data, headers)

        setattr(nc, "_process_msg", process_msg)  # noqa: B010 (an instance's own hook)

    def open(self, size: int) -> Batch:
        self._n += 1
        token = str(self._n)
        batch = Batch(token, f"{self.prefix}{token}.", size)
        self.batches[token] = batch
        return batch

    def close(self, batch: Batch) -> None:
        """Forget a finished batch: a late answer to it is dropped (its record is resent
        with the same id, and the broker says it is a duplicate)."""
        self.batches.pop(batch.token, None)

    async def on_msg(self, msg: Msg) -> None:
        """An answer nats-py delivered as a message (the uncommon ones: errors, statuses)."""
        self.take(msg.subject[len(self.prefix) :], answer(msg))

    def take(self, where: str, result: bool | BaseException) -> None:
        """Record the answer for `<batch>.<place>`; the first answer for a place counts."""
        token, _, place = where.partition(".")
        batch = self.batches.get(token)
        if batch is None or not place.isdigit():
            return
        i = int(place)
        if i >= len(batch.results) or batch.results[i] is not None:
            return
        batch.results[i] = result
        batch.missing -= 1
        if batch.missing == 0 and not batch.done.done():
            batch.done.set_result(None)


def plain_ack(data: bytes) -> bool:
    """The common answer, `{"stream":"S","seq":N}` (stored, not a duplicate, no error), told
    without json. The server writes a duplicate's flag as `"duplicate": true` (a space in
    it): anything but the plain answer is read as json."""
    return data.startswith(b'{"stream":') and b'"error"' not in data and b'"dup' not in data


def answer(msg: Msg) -> bool | BaseException:
    """A publish acknowledgement: True (a duplicate), False (stored) or the broker's error."""
    data = msg.data
    if plain_ack(data):
        return False
    if msg.headers and msg.headers.get("Status") == "503":
        return nats.js.errors.NoStreamResponseError()
    try:
        resp = json.loads(data)
    except ValueError as exc:
        return exc
    if isinstance(resp, dict) and "error" in resp:
        try:
            nats.js.errors.APIError.from_error(resp["error"])  # raises the typed error
        except nats.js.errors.APIError as err:
            return err
    return bool(resp.get("duplicate")) if isinstance(resp, dict) else False
