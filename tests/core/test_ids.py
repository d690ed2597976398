"""Decision ids are UUIDv7 text (RFC 9562), unique and increasing within a process."""

from __future__ import annotations

import threading
import uuid

from sidecar.core.ids import DecisionIds


def test_ids_are_canonical_uuid7_and_strictly_increasing() -> None:
    ids = DecisionIds()
    made = [ids.next() for _ in range(20_000)]  # many share a millisecond: the sequence counts
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical lower-case 8-4-4-4-12 form
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert made == sorted(made) and len(set(made)) == len(made)


def test_ids_from_many_threads_are_unique() -> None:
    ids = DecisionIds()
    out: list[list[str]] = [[] for _ in range(4)]

    def make(mine: list[str]) -> None:
        mine.extend(ids.next() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(mine,)) for mine in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for mine in out for i in mine]
    assert len(set(every)) == len(every) == 20_000
    assert all(mine == sorted(mine) for mine in out)


def test_ids_made_together_are_the_same_kind_and_keep_the_order() -> None:
    """next_many (a batch of outcomes) makes what as many calls of next would: canonical
    UUIDv7s with their variant, strictly after every id made before and before every id
    made after, even past the 4096 a millisecond's sequence holds."""
    ids = DecisionIds()
    made = [ids.next(), *ids.next_many(5_000), ids.next(), *ids.next_many(3), *ids.next_many(0)]
    assert len(made) == 5_005
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert made == sorted(made) and len(set(made)) == len(made)
    # the random part is random: 5000 ids share few of their last 62 bits' values
    tails = {uuid.UUID(t).int & ((1 << 62) - 1) for t in made}
    assert len(tails) == len(made)


def test_every_random_digit_of_ids_made_together_takes_every_value() -> None:
    """next_many's 62 random bits: the variant digit takes each of 8, 9, a, b and each
    of the 15 digits after it each of the 16 (4096 ids: a miss has odds below 1e-100)."""
    made = DecisionIds().next_many(4096)
    assert {t[19] for t in made} == set("89ab")
    for at in [20, 21, 22, *range(24, 36)]:
        assert {t[at] for t in made} == set("0123456789abcdef"), at
