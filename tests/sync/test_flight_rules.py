"""The pure rules: the cloud's watermark in any arrival order, and what an ack means to the
device (sync.watermark, sync.flights)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sync.flights import Flight, Window
from sync.watermark import advance


@given(st.lists(st.integers(1, 60), unique=True), st.randoms())
def test_the_watermark_is_the_contiguous_prefix_in_any_order(held: list[int],
                                                             rnd: object) -> None:
    order = list(held)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    stored: set[int] = set()
    wm = 0
    for seq in order:  # one batch at a time, as the store computes it
        stored.add(seq)
        wm = advance(wm, 0, sorted(s for s in stored if s > wm))
    expected = 0
    while expected + 1 in stored:
        expected += 1
    assert wm == expected


def test_a_floor_passes_dropped_records_only() -> None:
    assert advance(10, 40, [41, 42, 44]) == 42
    assert advance(10, 5, [11, 13]) == 11  # a stale floor changes nothing
    assert advance(10, 0, [2**63 - 1]) == 10


def test_an_ack_clears_only_up_to_what_was_sent_and_only_for_a_batch_in_flight() -> None:
    w = Window()
    w.sent(Flight(1, 10, "a" * 64, 0.0), complete_through=10)
    w.sent(Flight(11, 20, "b" * 64, 0.0), complete_through=20)
    assert w.answer("", 99) == ("unknown", 0)
    assert w.answer("c" * 64, 99) == ("unknown", 0)
    assert w.answer("b" * 64, 10) == ("ok", 10)  # b is stored, the cloud holds 1-10
    assert w.busy() == 1
    assert w.answer("a" * 64, 99) == ("ok", 20)  # never past the highest seq sent
    w.cleared(20, 1.0)
    assert w.flights == [] and w.answer("a" * 64, 20) == ("duplicate", 0)


def test_overdue_and_stalled() -> None:
    w = Window()
    w.sent(Flight(1, 10, "a" * 64, 0.0), complete_through=10)
    w.sent(Flight(11, 20, "b" * 64, 0.0), complete_through=20)
    assert [f.first for f in w.overdue(5.0, 2.0)] == [1, 11]
    w.answer("b" * 64, 0)
    w.cleared(0, 5.0)
    assert [f.first for f in w.overdue(6.0, 2.0)] == [1]
    assert not w.stalled(100.0, 2.0)  # a flight still unanswered: resend it, no stall
    w.answer("a" * 64, 0)  # answered, yet the cloud's watermark stays at 0
    w.cleared(0, 6.0)
    assert not w.stalled(7.0, 2.0) and w.stalled(9.0, 2.0)
