"""The cloud's watermark rule, as a pure function (the store feeds it what it holds).

The watermark of (device, epoch, stream) is the highest seq W such that every seq in
1..W is stored, or lies at or below a `floor` the device declared (records it dropped
under its outbox bound before the cloud had them). It never passes a hole and moves on
when a gap fills, whatever order batches arrive in.
"""

from __future__ import annotations

from collections.abc import Iterable


def advance(watermark: int, floor: int, stored_above: Iterable[int]) -> int:
    """The new watermark from the old one, a declared floor, and stored seqs (ascending)
    above max(watermark, floor)."""
    wm = max(watermark, floor)
    for seq in stored_above:
        if seq <= wm:
            continue
        if seq != wm + 1:
            break
        wm = seq
    return wm
