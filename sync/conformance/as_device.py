"""Plays a device against the cloud under test and checks its answers (sections 3-7, 10).

Each run uses a fresh device id and epochs, so it can run against a cloud in service.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import msgpack

from sync.acks import Ack, decode_ack
from sync.chunks import split
from sync.conformance.checks import Report
from sync.conformance.wire import Wire
from sync.envelope import EnvelopeError, WireRecord, batch_digest, encode_batch
from sync.outbox import STREAMS

VECTORS = Path(__file__).resolve().parents[1] / "protocol_vectors.json"


def recs(seqs: Any, tag: str = "p") -> list[WireRecord]:
    return [WireRecord(i, "conformance.rec", f"{tag}-{i}".encode(), time.time())
            for i in seqs]


class CloudUnderTest:
    def __init__(self, wire: Wire, prefix: str, device: str, timeout: float) -> None:
        self.wire, self.prefix, self.device, self.timeout = wire, prefix, device, timeout
        self.acks: list[Ack] = []
        self.malformed: list[bytes] = []

    def send(self, payload: bytes) -> None:
        self.wire.publish(f"{self.prefix}/{self.device}/up", payload)

    def ack_for(self, digest: str, timeout: float | None = None) -> Ack | None:
        """The first ack (since the start) answering `digest`, waiting for it."""
        end = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for a in self.acks:
                if a.digest == digest:
                    return a
            got = self.wire.receive(end - time.monotonic())
            if got is None:
                return None
            try:
                self.acks.append(decode_ack(got[1], STREAMS))
            except EnvelopeError:
                self.malformed.append(got[1])

    def batch(self, stream: str, floor: int, records: list[WireRecord], epoch: str | None,
              **kw: Any) -> Ack | None:
        self.acks = []  # answers to earlier sends no longer matter
        self.send(encode_batch(self.device, stream, floor, records, epoch=epoch, **kw))
        return self.ack_for(batch_digest(records, kw.get("chunk")))


def run(wire_args: dict[str, Any], prefix: str = "edge", timeout: float = 10.0) -> Report:
    device = f"conformance-{os.urandom(4).hex()}"
    wire = Wire(topics=[f"{prefix}/{device}/ack"], **wire_args)
    cloud = CloudUnderTest(wire, prefix, device, timeout)
    r = Report()
    ep, ep2 = os.urandom(8).hex(), os.urandom(8).hex()
    try:
        a = cloud.batch("checkpoints", 0, recs(range(1, 11)), ep)
        r.check("5", "a valid batch is acked with its digest", a is not None)
        if a is None:
            return r
        r.check("5", "the ack carries v 2, the stream and the epoch",
                (a.version, a.stream, a.epoch) == (2, "checkpoints", ep), repr(a))
        r.check("6", "the watermark covers a contiguous batch", a.watermark == 10,
                f"wm {a.watermark}")
        a = cloud.batch("checkpoints", 0, recs(range(1, 11)), ep)
        r.check("5", "a resend is acked again, nothing changes",
                a is not None and a.watermark == 10 and a.conflicts == 0, repr(a))
        a = cloud.batch("checkpoints", 0, recs(range(21, 31)), ep)
        r.check("6", "no ack over a hole (held 1-10, got 21-30 with floor 0)",
                a is not None and a.watermark == 10, repr(a))
        a = cloud.batch("checkpoints", 10, recs([2**63 - 1]), ep)
        r.check("6", "seq 2^63-1 is stored but does not move the watermark",
                a is not None and a.watermark == 10, repr(a))
        a = cloud.batch("checkpoints", 10, recs(range(11, 21)), ep)
        r.check("6", "the watermark moves over what was stored ahead when the gap fills",
                a is not None and a.watermark == 30, repr(a))
        a = cloud.batch("checkpoints", 0, recs([5], "other"), ep)
        r.check("4", "a resend with other content is counted in the ack (c)",
                a is not None and a.conflicts == 1 and a.watermark == 30, repr(a))
        cloud.acks = []
        payload = os.urandom(70_000)
        pieces = split(payload, 32_000)
        for chunk, data in reversed(pieces):  # out of order on purpose
            cloud.send(encode_batch(device, "checkpoints", 30, [WireRecord(
                31, "conformance.big", data, time.time())], epoch=ep, chunk=chunk))
        answers = [cloud.ack_for(batch_digest([WireRecord(31, "", d, 0)], c))
                   for c, d in pieces]
        r.check("7", "each chunk is acked on its own; the record counts once all are held",
                all(x is not None for x in answers) and max(
                    x.watermark for x in answers if x) == 31,
                repr([x.watermark if x else None for x in answers]))
        a = cloud.batch("checkpoints", 39, recs(range(40, 42)), ep)
        r.check("6", "a floor lets the watermark pass records the device dropped",
                a is not None and a.watermark == 41, repr(a))
        a = cloud.batch("checkpoints", 0, recs(range(1, 4)), ep2)
        r.check("2", "a new epoch is a new sequence space",
                a is not None and a.epoch == ep2 and a.watermark == 3, repr(a))
        cloud.acks = []
        order = [recs(range(s, s + 5)) for s in (6, 11, 16)]
        for b in reversed(order):
            cloud.send(encode_batch(device, "traces", 0, b, epoch=ep))
        got = [cloud.ack_for(batch_digest(b)) for b in order]
        r.check("6", "batches in reverse order: the last ack leaves the hole 1-5 open",
                all(got) and max(x.watermark for x in got if x) == 0, repr(got))
        a = cloud.batch("traces", 0, recs(range(1, 6)), ep)
        r.check("6", "the gap filled, the watermark covers everything stored",
                a is not None and a.watermark == 20, repr(a))
        v1 = recs(range(1, 4))
        cloud.acks = []
        cloud.send(encode_batch(device, "metrics", 0, v1))
        raw = _raw_ack(cloud, timeout)
        r.check("10", "a protocol 1 batch gets a protocol 1 ack",
                raw is not None and raw.get("v") == 1 and raw.get("seq") == 3
                and raw.get("digest") == batch_digest(v1), repr(raw))
        _invalid(cloud, device, ep, r)
        r.check("5", "every ack was well-formed", not cloud.malformed,
                f"{len(cloud.malformed)} malformed")
    finally:
        wire.close()
    return r


def _raw_ack(cloud: CloudUnderTest, timeout: float) -> dict[str, Any] | None:
    """The next protocol 1 ack (later answers to earlier batches are passed over)."""
    end = time.monotonic() + timeout
    while (got := cloud.wire.receive(end - time.monotonic())) is not None:
        m = msgpack.unpackb(got[1])
        if isinstance(m, dict) and m.get("v") == 1:
            return m
    return None


def _invalid(cloud: CloudUnderTest, device: str, ep: str, r: Report) -> None:
    """Every invalid vector, retargeted to this device: none is acked (quarantined)."""
    vectors = json.loads(VECTORS.read_text())["invalid_batches"]
    cloud.acks = []
    sent = 0
    for v in vectors:
        data = bytes.fromhex(v["hex"])
        try:
            m = msgpack.unpackb(data, strict_map_key=False)
        except Exception:  # noqa: BLE001 - not msgpack at all: send as is
            m = None
        if isinstance(m, dict) and m.get("dev") == "dev-a":
            m["dev"] = device
            data = msgpack.packb(m)
        cloud.send(data)
        sent += 1
    sentinel = recs([1])
    cloud.send(encode_batch(device, "control", 0, sentinel, epoch=ep))
    ok = cloud.ack_for(batch_digest(sentinel)) is not None
    stray = [a for a in cloud.acks if a.stream != "control"]
    for _, p in cloud.wire.drain(0.5):
        try:
            a = decode_ack(p, STREAMS)
        except EnvelopeError:
            cloud.malformed.append(p)
            continue
        if a.digest != batch_digest(sentinel):
            stray.append(a)
    r.check("4", f"none of the {sent} invalid vectors is acked (each is quarantined)",
            ok and not stray, f"sentinel acked: {ok}, stray acks: {stray!r}")
