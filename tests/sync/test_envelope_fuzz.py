"""100,000+ random and mutated payloads: every one rejected with a reason, nothing escapes."""

from __future__ import annotations

import random
from collections import Counter

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.acks import decode_ack
from sync.envelope import (
    Command,
    EnvelopeError,
    WireRecord,
    decode_batch,
    decode_command,
    encode_batch,
    encode_command,
)
from sync.outbox import STREAMS

RECORDS = [WireRecord(i, "k", bytes([i % 256]) * 20, 1.0) for i in range(1, 30)]
VALID = [encode_batch("dev-a", "checkpoints", 0, RECORDS),
         encode_batch("dev-a", "traces", 0, RECORDS, compress=True)]
COMMAND = encode_command(Command("c1", "approve", {"run_id": "r"}))


def decode_any(data: bytes, rnd: random.Random) -> str:
    try:
        kind = rnd.randrange(3)
        if kind == 0:
            decode_batch(data, topic_device="dev-a", streams=STREAMS)
        elif kind == 1:
            decode_command(data)
        else:
            decode_ack(data, STREAMS)
    except EnvelopeError as exc:
        return exc.reason
    return "accepted"


def mutate(data: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 6)):
        op = rnd.randrange(5)
        if op == 0 and b:
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        elif op == 1 and b:
            del b[rnd.randrange(len(b)):]  # truncated
        elif op == 2:
            b.insert(rnd.randrange(len(b) + 1), rnd.randrange(256))
        elif op == 3:
            b += bytes([0xc6, 0x7f, 0xff, 0xff, 0xff])  # a huge bin length
        else:
            i = rnd.randrange(len(b) + 1)
            b[i:i] = b[:rnd.randrange(1, 8)]
    return bytes(b)


def test_hundred_thousand_mutated_and_random_payloads() -> None:
    rnd = random.Random(1234)
    reasons: Counter[str] = Counter()
    seeds = VALID + [COMMAND]
    for i in range(100_000):
        data = (rnd.randbytes(rnd.randint(0, 200)) if i % 4 == 0
                else mutate(rnd.choice(seeds), rnd))
        reasons[decode_any(data, rnd)] += 1
    rejected = sum(v for k, v in reasons.items() if k != "accepted")
    assert rejected > 90_000
    assert {"bad_msgpack", "bad_shape"} <= set(reasons)


def test_structurally_wrong_envelopes_have_named_reasons() -> None:
    base = msgpack.unpackb(VALID[0])
    cases = {
        "bad_version": {**base, "v": 99},
        "forged_device": {**base, "dev": "dev-b"},
        "bad_stream": {**base, "s": "logs"},
        "bad_field": {**base, "after": -1},
        "bad_range": {**base, "first": 7},
        "bad_compression": {**base, "z": True},
    }
    for reason, m in cases.items():
        try:
            decode_batch(msgpack.packb(m), topic_device="dev-a", streams=STREAMS)
        except EnvelopeError as exc:
            assert exc.reason == reason, (reason, exc)
        else:
            raise AssertionError(f"{reason} accepted")
    big = encode_batch("dev-a", "metrics", 0, [WireRecord(1, "k", b"x" * 2000, 1.0)])
    try:
        decode_batch(big, topic_device="dev-a", streams=STREAMS, max_bytes=1000)
    except EnvelopeError as exc:
        assert exc.reason == "too_large"
    ok = decode_batch(VALID[1], topic_device="dev-a", streams=STREAMS)
    assert [r.seq for r in ok.records] == list(range(1, 30))


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_decoders(data: bytes) -> None:
    for decode in (lambda d: decode_batch(d, topic_device="x", streams=STREAMS),
                   decode_command, lambda d: decode_ack(d, STREAMS)):
        try:
            decode(data)
        except EnvelopeError:
            pass
