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

    def next_many(self, count: int) -> list[str]:
        """`count` ids in order, as `count` calls of `next` would make them (the same
        fields, 62 random bits each), under one lock, one read of the clock and one of
        the random source: a batch of outcomes takes them together. `next` keeps its
        own copy of the steps: it runs once per decision, and a shared helper would
        cost it a call."""
        if count <= 0:
            return []
        stamps = []
        with self._lock:
            now = time.time_ns() // 1_000_000
            for _ in range(count):
                ms = now
                if ms <= self._last_ms:
                    ms = self._last_ms
                    self._seq += 1
                    if self._seq > 0xFFF:
                        ms += 1
                        self._seq = 0
                else:
                    self._seq = 0
                self._last_ms = ms
                stamps.append((ms, self._seq))
        # The random bits as text at once: per id, its variant digit (10 in its top two
        # bits, two random ones: one random byte each, mapped by `_VARIANT`), then 15
        # random hex digits (16 drawn, the first unused); the sequence's digits from a table.
        variants = os.urandom(count).translate(_VARIANT).decode()
        rand = os.urandom(8 * count).hex()
        seq_hex = _SEQ_HEX
        out = []
        last_ms, head = -1, ""
        at = 1
        for i, (ms, seq) in enumerate(stamps):
            if ms != last_ms:
                last_ms = ms
                t = f"{ms & ((1 << 48) - 1):012x}"
                head = f"{t[:8]}-{t[8:]}-7"
            out.append(
                f"{head}{seq_hex[seq]}-{variants[i]}{rand[at : at + 3]}-{rand[at + 3 : at + 15]}"
            )
            at += 16
        return out


# A random byte's two low bits under the variant's 10: 8, 9, a or b (as ASCII).
_VARIANT = bytes(ord("89ab"[b & 3]) for b in range(256))
# The 12-bit sequence field as three hex digits.
_SEQ_HEX = [f"{s:03x}" for s in range(0x1000)]
