"""Vector clock laws, safe pruning, and hybrid logical clocks under skew and jumps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.clocks import (
    ClockDrift,
    HybridClock,
    Order,
    Stamp,
    UnsafePrune,
    compare,
    increment,
    merge,
    prune,
    vc,
)

nodes = st.sampled_from(["a", "b", "c", "cloud"])
clocks = st.dictionaries(nodes, st.integers(0, 5)).map(vc)


@given(clocks, clocks)
def test_compare_is_antisymmetric(a, b) -> None:
    flip = {Order.BEFORE: Order.AFTER, Order.AFTER: Order.BEFORE, Order.EQUAL: Order.EQUAL,
            Order.CONCURRENT: Order.CONCURRENT}
    assert compare(b, a) == flip[compare(a, b)]


@given(clocks, clocks, clocks)
def test_merge_is_a_join(a, b, c) -> None:
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, a) == a
    assert compare(merge(a, b), a) in (Order.AFTER, Order.EQUAL)


@given(clocks, nodes)
def test_increment_moves_after(a, n) -> None:
    assert compare(increment(a, n), a) == Order.AFTER


@given(clocks, clocks, st.integers(0, 5))
def test_pruning_a_fully_seen_retired_node_keeps_every_comparison(a, b, final) -> None:
    a2 = vc({**a, "gone": final})
    b2 = vc({**b, "gone": final})
    assert compare(prune(a2, {"gone": final}), prune(b2, {"gone": final})) == compare(a2, b2)


def test_pruning_too_early_is_refused() -> None:
    a = vc({"x": 1, "gone": 1})
    b = vc({"x": 2, "gone": 0})
    assert compare(a, b) == Order.CONCURRENT
    with pytest.raises(UnsafePrune):
        prune(b, {"gone": 1})  # dropping it would make b look AFTER a


def test_hlc_survives_a_wrong_wall_clock_and_jumps_back() -> None:
    wall = [1_000_000]
    clock = HybridClock("dev", wall=lambda: wall[0])
    stamps = [clock.now()]
    for jump in (0, -500_000, -1, 10, -999_000, 0):
        wall[0] += jump
        stamps.append(clock.now())
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    # a device booted in 1970 receives a stamp from a correct cloud clock
    remote = Stamp(1_700_000_000_000, 4, "cloud")
    booted = HybridClock("dev2", wall=lambda: 5_000, max_drift_ms=2**62)
    after = booted.update(remote)
    assert after > remote and booted.now() > after


@given(st.lists(st.tuples(st.integers(-10_000, 10_000), st.booleans(),
                          st.integers(0, 50_000), st.integers(0, 3)), max_size=60))
def test_hlc_is_monotonic_and_causal(events) -> None:
    wall = [10_000_000]
    a = HybridClock("a", wall=lambda: wall[0])
    last = a.now()
    for jump, receive, remote_wall, remote_logical in events:
        wall[0] = max(0, wall[0] + jump)
        if receive:
            remote = Stamp(remote_wall + 10_000_000 - 25_000, remote_logical, "b")
            stamp = a.update(remote)
            assert stamp > remote
        else:
            stamp = a.now()
        assert stamp > last
        last = stamp


def test_absurd_remote_stamps_are_rejected() -> None:
    clock = HybridClock("a", wall=lambda: 1_000, max_drift_ms=60_000)
    with pytest.raises(ClockDrift):
        clock.update(Stamp(10**12, 0, "evil"))
    assert clock.now().wall_ms == 1_000
