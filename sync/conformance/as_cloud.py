"""Plays the cloud against a device under test and checks how it sends (sections 3, 5, 6).

The device must be connected with records pending: at least two batches' worth on some
stream (three to check the hole rule), and an ack timeout of at most `--ack-timeout`.
At the end the suite acks everything it saw, so the device is left in sync.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from sync.acks import encode_ack
from sync.conformance.checks import Report
from sync.conformance.wire import Wire
from sync.envelope import Batch, EnvelopeError, decode_batch
from sync.outbox import STREAMS


class DeviceUnderTest:
    def __init__(self, wire: Wire, prefix: str, device: str) -> None:
        self.wire, self.prefix, self.device = wire, prefix, device
        self.seen: list[Batch] = []
        self.invalid: list[str] = []

    def collect(self, seconds: float, until: Any = None) -> list[Batch]:
        """Batches arriving for `seconds` (or until `until(batches)` is true)."""
        end, got = time.monotonic() + seconds, []
        while (msg := self.wire.receive(end - time.monotonic())) is not None:
            try:
                b = decode_batch(msg[1], topic_device=self.device, streams=STREAMS)
            except EnvelopeError as exc:
                self.invalid.append(exc.reason)
                continue
            got.append(b)
            self.seen.append(b)
            if until is not None and until(got):
                break
        return got

    def ack(self, b: Batch, wm: int, digest: str | None = None,
            epoch: str | None = None) -> None:
        self.wire.publish(f"{self.prefix}/{self.device}/ack", encode_ack(
            b.stream, wm, b.digest if digest is None else digest,
            epoch=b.epoch if epoch is None else epoch))


def run(wire_args: dict[str, Any], device: str, prefix: str = "edge",
        ack_timeout: float = 10.0) -> Report:
    wire = Wire(topics=[f"{prefix}/{device}/up"], **wire_args)
    d = DeviceUnderTest(wire, prefix, device)
    r = Report()
    wait = ack_timeout + 5
    try:
        first = d.collect(wait, until=lambda g: len(g) >= 1)
        first += d.collect(1.0)
        if not r.check("3", "the device sends batches", bool(first)):
            return r
        r.check("3", "every batch is a valid protocol 2 batch", not d.invalid
                and all(b.version == 2 for b in first), repr(d.invalid))
        stream = max(STREAMS, key=lambda s: sum(b.stream == s for b in first))
        mine = [b for b in first if b.stream == stream and b.chunk is None]
        r.check("6", "batches of a stream are consecutive seqs, sent once",
                all(b.first == a.last + 1 for a, b in itertools.pairwise(mine)),
                repr([(b.first, b.last) for b in mine]))
        b1 = mine[0]
        again = d.collect(wait, until=lambda g: any(b.digest == b1.digest for b in g))
        r.check("6", "an unanswered batch is sent again, unchanged (same digest)",
                any(b.digest == b1.digest for b in again))
        huge = 2**63 - 1
        d.ack(b1, huge, digest="ab" * 32)  # a digest of no batch
        d.ack(b1, huge, epoch="f" * 16)  # another epoch
        wire.publish(f"{prefix}/{device}/ack", encode_ack(b1.stream, huge, ""))  # v1, empty
        again = d.collect(wait, until=lambda g: any(b.digest == b1.digest for b in g))
        r.check("5", "acks naming no batch in flight move nothing (the batch comes again)",
                any(b.digest == b1.digest for b in again))
        d.ack(b1, b1.last)
        if len(mine) >= 3:
            b2, b3 = mine[1], mine[2]
            d.ack(b3, b1.last)  # b3 stored, b2 missing: the watermark stays at b1
            d.collect(0.5)  # sent before the device read the acks
            later = d.collect(wait, until=lambda g: any(b.digest == b2.digest for b in g))
            later += d.collect(1.0)
            digests = {b.digest for b in later}
            r.check("6", "only what is missing is sent again (not the answered batches)",
                    b2.digest in digests and b3.digest not in digests
                    and b1.digest not in digests,
                    f"b1 {b1.digest in digests}, b2 {b2.digest in digests},"
                    f" b3 {b3.digest in digests}")
        else:
            d.collect(0.5)
            later = d.collect(wait)
            r.check("6", "an acked batch is not sent again",
                    all(b.digest != b1.digest for b in later))
        _settle(d, r, wait)
    finally:
        wire.close()
    return r


def _settle(d: DeviceUnderTest, r: Report, wait: float) -> None:
    """Ack everything seen with the highest seq per stream and epoch, until quiet."""
    quiet_since = time.monotonic()
    high: dict[tuple[str, str], int] = {}
    pending = list(d.seen)
    while time.monotonic() - quiet_since < min(wait, 3.0):
        for b in pending:
            key = (b.epoch, b.stream)
            if b.chunk is None or b.chunk.index + 1 == b.chunk.count:
                high[key] = max(high.get(key, 0), b.last)
        for b in pending:
            d.ack(b, high.get((b.epoch, b.stream), 0))
        pending = d.collect(0.5)
        if pending:
            quiet_since = time.monotonic()
    r.check("5", "acked in full, the device stops sending", not pending)
