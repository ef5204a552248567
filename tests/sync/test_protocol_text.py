"""What PROTOCOL.md now says where it was silent (issue 27, 18), held to the code: the order
in which a device checks an ack's fields, and what a batch's budget counts."""

from __future__ import annotations

import msgpack
import pytest

from sync.acks import decode_ack
from sync.chunks import piece
from sync.envelope import EnvelopeError, WireRecord, encode_batch
from sync.outbox import STREAMS

EP, D = "0123456789abcdef", "ab" * 32
GOOD = {"v": 2, "s": "control", "ep": EP, "d": D, "wm": 3, "c": 0}


@pytest.mark.parametrize("changes, reason", [
    ({"v": 3, "s": "nope", "ep": "x"}, "bad_version"),       # v before s and ep
    ({"v": True}, "bad_version"),
    ({"s": "nope", "ep": "x", "d": ""}, "bad_stream"),        # s before ep and d
    ({"ep": "x", "d": "", "wm": -1}, "bad_epoch"),            # ep before d and wm
    ({"d": "", "wm": -1}, "bad_digest"),                      # d before wm
    ({"wm": True, "c": "x"}, "bad_field"),
    ({"c": -1}, "bad_field"),
])
def test_an_acks_fields_are_checked_in_the_documented_order(changes: dict, reason: str
                                                            ) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_ack(msgpack.packb({**GOOD, **changes}), STREAMS)
    assert info.value.reason == reason
    assert decode_ack(msgpack.packb({**GOOD, "later": 1}), STREAMS).watermark == 3


def test_size_and_shape_come_first() -> None:
    for data, reason in ((b"\x00" * 5000, "too_large"), (b"\xc1", "bad_msgpack"),
                         (msgpack.packb([1, 2]), "bad_shape")):
        with pytest.raises(EnvelopeError) as info:
            decode_ack(data, STREAMS)
        assert info.value.reason == reason


def test_the_budget_counts_payload_bytes_not_the_encoded_message() -> None:
    budget = 1000
    payload = bytes(range(256)) * 10  # 2,560 bytes: three pieces of at most 1,000
    pieces = [piece(payload, budget, i) for i in range(3)]
    assert [len(data) for _, data in pieces] == [1000, 1000, 560]
    chunk, data = pieces[0]
    message = encode_batch("dev-a", "checkpoints", 0, [WireRecord(1, "run.finished", data,
                                                                  1.0)], chunk=chunk)
    assert len(message) > budget  # the envelope and framing come on top of the budget
    assert len(message) - budget < 400
