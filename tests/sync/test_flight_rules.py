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


@given(st.data())
def test_device_and_cloud_rules_under_loss_reorder_and_duplicates(data: st.DataObject) -> None:
    """The device's flight rules against the cloud's watermark rule, over a network that
    loses, reorders and duplicates: the device never clears a record the cloud lacks, and
    once the network behaves every record is cleared."""
    n, size, window = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 7)), 3
    w, pointer, clock = Window(), 0, 0.0
    stored: set[int] = set()
    cloud_wm = 0
    up: list[tuple[int, int, str]] = []  # batches on their way to the cloud
    down: list[tuple[str, int]] = []  # acks on their way to the device

    def send_new() -> None:  # as EdgeSync._send_next: from next_seq, or after the pointer
        while w.busy() < window:
            first = w.next_seq if w.next_seq is not None else pointer + 1
            if first > n:
                return
            last = min(n, first + size - 1)
            digest = f"{first}-{last}"  # by content, as batch_digest
            w.sent(Flight(first, last, digest, clock), complete_through=last)
            up.append((first, last, digest))
            w.next_seq = last + 1

    def deliver_up(i: int) -> None:
        nonlocal cloud_wm
        first, last, digest = up.pop(i)
        stored.update(range(first, last + 1))
        cloud_wm = advance(cloud_wm, 0, sorted(s for s in stored if s > cloud_wm))
        down.append((digest, cloud_wm))

    def deliver_down(i: int) -> None:
        nonlocal pointer
        digest, wm = down.pop(i)
        verdict, upto = w.answer(digest, wm)
        if verdict == "ok":
            pointer = max(pointer, upto)
            w.cleared(pointer, clock)

    def tick() -> None:
        nonlocal clock
        clock += 10.0
        for f in w.overdue(clock, 5.0):
            f.sent_at = clock
            up.append((f.first, f.last, f.digest))
        if w.stalled(clock, 5.0):
            w.reset()

    for _ in range(data.draw(st.integers(0, 120))):
        send_new()
        op = data.draw(st.sampled_from(["up", "down", "lose", "dup", "tick"]))
        if op == "up" and up:
            deliver_up(data.draw(st.integers(0, len(up) - 1)))
        elif op == "down" and down:
            deliver_down(data.draw(st.integers(0, len(down) - 1)))
        elif op == "lose" and (up or down):
            q = up if up and (not down or data.draw(st.booleans())) else down
            q.pop(data.draw(st.integers(0, len(q) - 1)))  # type: ignore[attr-defined]
        elif op == "dup" and down:
            down.append(down[data.draw(st.integers(0, len(down) - 1))])
        elif op == "tick":
            tick()
        assert set(range(1, pointer + 1)) <= stored  # never cleared what the cloud lacks
    for _ in range(10 * n + 20):  # the network behaves now: everything gets through
        if pointer == n:
            break
        send_new()
        while up:
            deliver_up(0)
        while down:
            deliver_down(0)
        tick()
    assert pointer == n and set(range(1, n + 1)) <= stored
