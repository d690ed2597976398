"""Decision ids: UUIDv7 (RFC 9562), unique and sortable by creation time.

Within one process ids are strictly increasing even when the clock stalls or
steps back: the 12-bit sequence field counts up inside a millisecond, and the
millisecond advances when it overflows.
"""

from __future__ import annotations

import os
import threading
import time


class DecisionIds:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._seq = 0

    def next(self) -> str:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                ms = self._last_ms
                self._seq += 1
                if self._seq > 0xFFF:
                    ms += 1
                    self._seq = 0
            else:
                self._seq = 0
            self._last_ms = ms
            seq = self._seq
        rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand
        h = f"{value:032x}"  # uuid.UUID's text form, without building a UUID per decision
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
