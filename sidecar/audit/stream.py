"""The stdout trail: chained JSON lines on a stream, for the cluster's log collector.

Group commit, chain and health come from commit.py; this medium only writes
and flushes the stream. What went out before this process cannot be read
back, so there is no rotation, recovery or head anchor here (see filesink.py).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Mapping
from typing import IO

from sidecar.audit.chain import GENESIS, Hasher
from sidecar.audit.commit import PROBE_INTERVAL_S, ChainSink, utc_now
from sidecar.core.event import system_event


class StreamSink(ChainSink):
    """Chained JSON lines on a stream (stdout for the cluster's log collector).

    Each process starts a new chain (a segment header with a random `stream`
    id and `follows` = GENESIS): what was written before cannot be read back.
    With many workers on one stdout, each header also says `worker` and
    `workers`, so a collector can tell the chains apart.
    """

    def __init__(
        self,
        stream: IO[bytes],
        *,
        owns: bool = False,
        hasher: Hasher | None = None,
        durability: str = "flush",
        probe_interval_s: float = PROBE_INTERVAL_S,
        header_fields: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(hasher or Hasher(), durability, probe_interval_s)
        self._stream = stream
        self._owns = owns
        self._pending.append(
            system_event(
                "segment",
                utc_now(),
                segment=1,
                follows=GENESIS,
                stream=str(uuid.uuid4()),
                algorithm=self.hasher.algorithm,
                key_id=self.hasher.key_id,
                **(header_fields or {}),
            )
        )

    def _append(self, data: bytes) -> None:
        try:
            self._stream.write(data)
            self._stream.flush()
        except ValueError as exc:  # closed stream
            raise OSError(str(exc)) from exc

    def _sync(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.fsync(self._stream.fileno())

    def _close_medium(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()
            if self._owns:
                self._stream.close()
