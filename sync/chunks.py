"""A record larger than a batch travels as chunks; one above the largest record size
travels as a stub (its size and digest; the data stays on the device)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgpack

from sync.envelope import MAX_CHUNKS, Chunk, EnvelopeError, WireRecord

DEFAULT_MAX_RECORD_BYTES = 16 << 20
STUB_KIND = "stub"


def split(payload: bytes, piece_bytes: int) -> list[tuple[Chunk, bytes]]:
    """The chunks of a payload, each at most piece_bytes (the last may be shorter)."""
    count = max(1, -(-len(payload) // piece_bytes))
    if count > MAX_CHUNKS:
        raise EnvelopeError("too_large", f"{len(payload)} bytes need {count} chunks")
    digest = hashlib.sha256(payload).hexdigest()
    return [(Chunk(i, count, len(payload), digest), payload[i * piece_bytes:
                                                          (i + 1) * piece_bytes])
            for i in range(count)]


def piece(payload: bytes, piece_bytes: int, index: int) -> tuple[Chunk, bytes]:
    count = max(1, -(-len(payload) // piece_bytes))
    return (Chunk(index, count, len(payload), hashlib.sha256(payload).hexdigest()),
            payload[index * piece_bytes:(index + 1) * piece_bytes])


def assemble(chunk: Chunk, pieces: Sequence[bytes]) -> bytes:
    """The record's payload from all its pieces in order; EnvelopeError("bad_chunk") when
    they do not make the size and digest the header announced."""
    data = b"".join(pieces)
    if len(pieces) != chunk.count or len(data) != chunk.size:
        raise EnvelopeError("bad_chunk", f"pieces make {len(data)} bytes, not {chunk.size}")
    if hashlib.sha256(data).hexdigest() != chunk.sha256:
        raise EnvelopeError("bad_chunk", "pieces do not match the record's digest")
    return data


def stub(kind: str, size: int, sha256: str) -> bytes:
    """The payload of a stub record (kind "stub"): what the record was, not its data."""
    out: bytes = msgpack.packb({"kind": kind, "size": size, "sha256": sha256})
    return out


def stub_of(record: WireRecord) -> WireRecord:
    return WireRecord(record.seq, STUB_KIND, stub(record.kind, len(record.payload),
                                                  hashlib.sha256(record.payload).hexdigest()),
                      record.created_at)
