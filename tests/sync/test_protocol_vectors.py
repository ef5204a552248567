"""The code against sync/protocol_vectors.json, the worked examples of sync/PROTOCOL.md."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

import sync
from sync.acks import decode_ack, encode_ack
from sync.envelope import (
    Chunk,
    EnvelopeError,
    WireRecord,
    batch_digest,
    decode_batch,
    decode_command,
    encode_batch,
)
from sync.outbox import STREAMS

VECTORS = json.loads((Path(sync.__file__).parent / "protocol_vectors.json").read_text())


def records(v: dict[str, Any]) -> list[WireRecord]:
    return [WireRecord(r["seq"], r["kind"], bytes.fromhex(r["payload_hex"]), r["created_at"])
            for r in v["records"]]


@pytest.mark.parametrize("v", VECTORS["digest"])
def test_digest_bytes_as_the_spec_lays_them_out(v: dict[str, Any]) -> None:
    laid = b"".join(r["seq"].to_bytes(8, "big") + hashlib.sha256(
        bytes.fromhex(r["payload_hex"])).digest() for r in v["records"])
    chunk = None
    if "chunk" in v:
        laid += v["chunk"]["index"].to_bytes(4, "big") + v["chunk"]["count"].to_bytes(4, "big")
        chunk = Chunk(v["chunk"]["index"], v["chunk"]["count"], 1, "0" * 64)
    assert laid.hex() == v["bytes_hashed_hex"]
    assert hashlib.sha256(laid).hexdigest() == v["digest"]
    recs = [WireRecord(r["seq"], "k", bytes.fromhex(r["payload_hex"]), 0.0)
            for r in v["records"]]
    assert batch_digest(recs, chunk) == v["digest"]


@pytest.mark.parametrize("v", VECTORS["batches"], ids=lambda v: v["name"])
def test_batches_decode_and_encode_to_the_vectors(v: dict[str, Any]) -> None:
    data = bytes.fromhex(v["hex"])
    raw = msgpack.unpackb(data)
    assert {k: x for k, x in raw.items() if k != "r"} == v["fields"]
    b = decode_batch(data, topic_device="dev-a", streams=STREAMS)
    assert list(b.records) == records(v) and b.digest == v["digest"]
    f = v["fields"]
    chunk = Chunk(*f["ch"]) if "ch" in f else None
    again = encode_batch(f["dev"], f["s"], f.get("floor", f.get("after")), records(v),
                         epoch=f.get("ep"), chunk=chunk, compress=f["z"])
    assert again.hex() == v["hex"]


@pytest.mark.parametrize("v", VECTORS["acks"], ids=lambda v: v["name"])
def test_acks(v: dict[str, Any]) -> None:
    data = bytes.fromhex(v["hex"])
    assert msgpack.unpackb(data) == v["fields"]
    ack = decode_ack(data, STREAMS)
    f = v["fields"]
    assert (ack.stream, ack.watermark, ack.digest) == (f["s"], f.get("wm", f.get("seq")),
                                                       f.get("d", f.get("digest")))
    assert encode_ack(f["s"], ack.watermark, ack.digest, epoch=f.get("ep"),
                      conflicts=f.get("c", 0)).hex() == v["hex"]


def test_commands_and_stubs() -> None:
    for v in VECTORS["commands"]:
        cmd = decode_command(bytes.fromhex(v["hex"]))
        assert (cmd.id, cmd.type, dict(cmd.args), cmd.ts) == (
            v["fields"]["id"], v["fields"]["type"], v["fields"]["args"], v["fields"]["ts"])
    s = VECTORS["stub"]
    assert msgpack.unpackb(bytes.fromhex(s["hex"])) == {k: s[k] for k in ("kind", "size",
                                                                           "sha256")}


@pytest.mark.parametrize("v", VECTORS["invalid_batches"], ids=lambda v: v["reason"])
def test_invalid_batches_have_the_spec_reason(v: dict[str, Any]) -> None:
    with pytest.raises(EnvelopeError) as err:
        decode_batch(bytes.fromhex(v["hex"]), topic_device=v["topic_device"], streams=STREAMS)
    assert err.value.reason == v["reason"]
