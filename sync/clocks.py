"""Vector clocks and hybrid logical clocks: plain data and pure functions.

A vector clock is an immutable mapping node -> counter. `compare` tells causality apart from
concurrency. Size stays bounded by pruning the entries of retired nodes, and only when it is
safe: a clock may drop a retired node's entry once it has seen that node's final counter
(every replica that prunes has then the same value there, so no comparison changes). Asked
to prune earlier, `prune` raises instead of silently turning a concurrent pair into an
ordered one.

A hybrid logical clock stamp is (wall milliseconds, logical counter, node). It never goes
backwards, even when the device boots with a wrong wall clock or the clock jumps back, and
it follows causality: a stamp taken after receiving another is greater than it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

VectorClock = Mapping[str, int]
EMPTY: VectorClock = MappingProxyType({})


class ClockError(Exception):
    """Root of clock errors."""

    retryable = False


class UnsafePrune(ClockError):
    def __init__(self, node: str, seen: int, final: int) -> None:
        self.node, self.seen, self.final = node, seen, final
        super().__init__(f"cannot prune {node!r}: this clock has seen {seen} of its {final} "
                         "events; pruning now could order concurrent versions")


class ClockDrift(ClockError):
    def __init__(self, remote_ms: int, local_ms: int, max_drift_ms: int) -> None:
        self.remote_ms, self.local_ms, self.max_drift_ms = remote_ms, local_ms, max_drift_ms
        super().__init__(f"remote stamp {remote_ms} is {remote_ms - local_ms} ms ahead of the "
                         f"local clock (limit {max_drift_ms} ms)")


class Order(enum.Enum):
    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


def vc(entries: Mapping[str, int] | None = None) -> VectorClock:
    return MappingProxyType({k: int(v) for k, v in sorted((entries or {}).items()) if v > 0})


def increment(clock: VectorClock, node: str) -> VectorClock:
    return vc({**clock, node: clock.get(node, 0) + 1})


def merge(a: VectorClock, b: VectorClock) -> VectorClock:
    return vc({n: max(a.get(n, 0), b.get(n, 0)) for n in set(a) | set(b)})


def compare(a: VectorClock, b: VectorClock) -> Order:
    less = greater = False
    for n in set(a) | set(b):
        x, y = a.get(n, 0), b.get(n, 0)
        if x < y:
            less = True
        elif x > y:
            greater = True
        if less and greater:
            return Order.CONCURRENT
    if less:
        return Order.BEFORE
    return Order.AFTER if greater else Order.EQUAL


def dominates(a: VectorClock, b: VectorClock) -> bool:
    """a has seen everything b has (a >= b)."""
    return compare(a, b) in (Order.AFTER, Order.EQUAL)


def prune(clock: VectorClock, retired: Mapping[str, int]) -> VectorClock:
    """Drop entries of retired nodes (node -> final counter) this clock has fully seen."""
    out = dict(clock)
    for node, final in retired.items():
        seen = clock.get(node, 0)
        if seen < final:
            raise UnsafePrune(node, seen, final)
        out.pop(node, None)
    return vc(out)


@dataclass(frozen=True, order=True)
class Stamp:
    """A hybrid logical clock stamp; ordered by (wall_ms, logical, node)."""

    wall_ms: int
    logical: int
    node: str

    def encode(self) -> list[object]:
        return [self.wall_ms, self.logical, self.node]

    @classmethod
    def decode(cls, data: object) -> Stamp:
        if (not isinstance(data, (list, tuple)) or len(data) != 3
                or not isinstance(data[0], int) or not isinstance(data[1], int)
                or not isinstance(data[2], str)):
            raise ClockError(f"not an HLC stamp: {data!r}")
        return cls(data[0], data[1], data[2])


ZERO = Stamp(0, 0, "")


class HybridClock:
    """Issues stamps for one node; `wall` is injectable (milliseconds)."""

    def __init__(self, node: str, *, wall: Callable[[], int] | None = None,
                 max_drift_ms: int = 24 * 3600 * 1000, last: Stamp = ZERO) -> None:
        self.node = node
        self.wall = wall or (lambda: time.time_ns() // 1_000_000)
        self.max_drift_ms = max_drift_ms
        self.last = last

    def now(self) -> Stamp:
        wall = self.wall()
        if wall > self.last.wall_ms:
            self.last = Stamp(wall, 0, self.node)
        else:
            self.last = Stamp(self.last.wall_ms, self.last.logical + 1, self.node)
        return self.last

    def update(self, remote: Stamp) -> Stamp:
        """Take a stamp after receiving `remote`: greater than both it and our last."""
        wall = self.wall()
        if remote.wall_ms - wall > self.max_drift_ms:
            raise ClockDrift(remote.wall_ms, wall, self.max_drift_ms)
        top = max(wall, self.last.wall_ms, remote.wall_ms)
        if top == self.last.wall_ms == remote.wall_ms:
            logical = max(self.last.logical, remote.logical) + 1
        elif top == self.last.wall_ms:
            logical = self.last.logical + 1
        elif top == remote.wall_ms:
            logical = remote.logical + 1
        else:
            logical = 0
        self.last = Stamp(top, logical, self.node)
        return self.last
