"""Wire formats: uplink batches, acks, downlink commands. msgpack, versioned, size-limited.

Uplink batch (`<prefix>/<device>/up`), a msgpack map:
  v: protocol version (1)            dev: device id (must match the topic)
  s: stream                          after: last seq the cloud should already have
  first, last: seq range             z: true if `r` is zstd-compressed
  r: msgpack array of [seq, kind, payload (bin), created_at (float)], or its zstd bytes
Ack (`<prefix>/<device>/ack`): {v, s, seq, digest} where seq is the highest contiguous
  sequence the cloud has committed and digest the SHA-256 of that batch's payloads.
Command (`<prefix>/<device>/cmd`): {v, id, type, args, ts}.
Every decoder raises EnvelopeError with a short reason; nothing else escapes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zstandard

PROTOCOL = 1
MAX_BATCH_BYTES = 4 << 20
MAX_RECORDS = 100_000
MAX_COMMAND_BYTES = 64 << 10
COMMAND_TYPES = ("approve", "reject", "cancel", "start", "doc_update", "doc_sync", "tool_result")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class EnvelopeError(Exception):
    """A payload that cannot be accepted; `reason` is short and stable (for counters)."""

    retryable = False

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class WireRecord:
    seq: int
    kind: str
    payload: bytes
    created_at: float


@dataclass(frozen=True)
class Batch:
    device: str
    stream: str
    after: int
    first: int
    last: int
    records: tuple[WireRecord, ...]

    @property
    def digest(self) -> str:
        return batch_digest(self.records)


@dataclass(frozen=True)
class Command:
    id: str
    type: str
    args: Mapping[str, Any] = field(default_factory=dict)
    ts: float = 0.0


def batch_digest(records: Sequence[WireRecord]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(r.seq.to_bytes(8, "big", signed=False))
        h.update(hashlib.sha256(r.payload).digest())
    return h.hexdigest()


def _unpack(data: bytes, max_bytes: int, what: str) -> Any:
    if len(data) > max_bytes:
        raise EnvelopeError("too_large", f"{what} of {len(data)} bytes (limit {max_bytes})")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=max_bytes,
                               max_str_len=max_bytes, max_array_len=MAX_RECORDS * 4 + 16,
                               max_map_len=64, max_ext_len=0)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError,
            TypeError, UnicodeDecodeError, OverflowError) as exc:
        raise EnvelopeError("bad_msgpack", str(exc)[:120]) from exc


def encode_batch(device: str, stream: str, after: int, records: Sequence[WireRecord], *,
                 compress: bool = False, max_bytes: int = MAX_BATCH_BYTES) -> bytes:
    rows = msgpack.packb([[r.seq, r.kind, r.payload, r.created_at] for r in records])
    body: bytes = rows
    if compress:
        body = zstandard.ZstdCompressor(level=3).compress(rows)
    out: bytes = msgpack.packb({"v": PROTOCOL, "dev": device, "s": stream, "after": after,
                                "first": records[0].seq, "last": records[-1].seq,
                                "z": compress, "r": body})
    if len(out) > max_bytes:
        raise EnvelopeError("too_large", f"batch of {len(out)} bytes (limit {max_bytes})")
    return out


def _int(m: Mapping[str, Any], k: str) -> int:
    v = m.get(k)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v >= 2**63:
        raise EnvelopeError("bad_field", f"{k} must be a non-negative integer")
    return v


def _str(m: Mapping[str, Any], k: str, limit: int = 256) -> str:
    v = m.get(k)
    if not isinstance(v, str) or not v or len(v) > limit:
        raise EnvelopeError("bad_field", f"{k} must be a non-empty string")
    return v


def decode_batch(data: bytes, *, topic_device: str, streams: Sequence[str],
                 max_bytes: int = MAX_BATCH_BYTES, max_records: int = MAX_RECORDS) -> Batch:
    m = _unpack(data, max_bytes, "batch")
    if not isinstance(m, dict):
        raise EnvelopeError("bad_shape", "a batch is a map")
    if m.get("v") != PROTOCOL:
        raise EnvelopeError("bad_version", f"protocol {m.get('v')!r}, expected {PROTOCOL}")
    device = _str(m, "dev")
    if device != topic_device:
        raise EnvelopeError("forged_device", f"batch for {device!r} on {topic_device!r}'s topic")
    stream = _str(m, "s")
    if stream not in streams:
        raise EnvelopeError("bad_stream", stream[:40])
    after, first, last = _int(m, "after"), _int(m, "first"), _int(m, "last")
    body = m.get("r")
    if not isinstance(body, bytes):
        raise EnvelopeError("bad_field", "r must be bytes")
    if m.get("z") is True:
        if not body.startswith(_ZSTD_MAGIC):
            raise EnvelopeError("bad_compression", "not zstd")
        try:
            body = zstandard.ZstdDecompressor().decompress(body, max_output_size=max_bytes * 4)
        except zstandard.ZstdError as exc:
            raise EnvelopeError("bad_compression", str(exc)[:120]) from exc
        if len(body) > max_bytes * 4:
            raise EnvelopeError("too_large", "decompressed batch")
    elif m.get("z") is not False:
        raise EnvelopeError("bad_field", "z must be a boolean")
    rows = _unpack(body, max_bytes * 4, "records")
    if not isinstance(rows, list) or not rows or len(rows) > max_records:
        raise EnvelopeError("bad_records", "records must be a non-empty list within limits")
    records = []
    prev = after
    for row in rows:
        if (not isinstance(row, list) or len(row) != 4 or not isinstance(row[0], int)
                or isinstance(row[0], bool) or not isinstance(row[1], str)
                or not isinstance(row[2], bytes) or not isinstance(row[3], (int, float))
                or isinstance(row[3], bool)):
            raise EnvelopeError("bad_record", "a record is [seq, kind, payload, created_at]")
        if row[0] <= prev:
            raise EnvelopeError("bad_order", "sequences must increase")
        prev = row[0]
        records.append(WireRecord(row[0], row[1][:128], row[2], float(row[3])))
    if records[0].seq != first or records[-1].seq != last or first <= after:
        raise EnvelopeError("bad_range", "first/last do not match the records")
    return Batch(device, stream, after, first, last, tuple(records))


def encode_ack(stream: str, seq: int, digest: str) -> bytes:
    out: bytes = msgpack.packb({"v": PROTOCOL, "s": stream, "seq": seq, "digest": digest})
    return out


def decode_ack(data: bytes, streams: Sequence[str]) -> tuple[str, int, str]:
    m = _unpack(data, 4096, "ack")
    if not isinstance(m, dict) or m.get("v") != PROTOCOL:
        raise EnvelopeError("bad_version" if isinstance(m, dict) else "bad_shape", "ack")
    stream = _str(m, "s")
    if stream not in streams:
        raise EnvelopeError("bad_stream", stream[:40])
    digest = m.get("digest", "")
    if not isinstance(digest, str):
        raise EnvelopeError("bad_field", "digest")
    return stream, _int(m, "seq"), digest


def encode_command(cmd: Command) -> bytes:
    out: bytes = msgpack.packb({"v": PROTOCOL, "id": cmd.id, "type": cmd.type,
                                "args": dict(cmd.args), "ts": cmd.ts})
    return out


def decode_command(data: bytes) -> Command:
    m = _unpack(data, MAX_COMMAND_BYTES, "command")
    if not isinstance(m, dict):
        raise EnvelopeError("bad_shape", "a command is a map")
    if m.get("v") != PROTOCOL:
        raise EnvelopeError("bad_version", f"protocol {m.get('v')!r}")
    cid = _str(m, "id", 128)
    ctype = _str(m, "type", 32)
    if ctype not in COMMAND_TYPES:
        raise EnvelopeError("bad_type", ctype[:40])
    args = m.get("args", {})
    if not isinstance(args, dict):
        raise EnvelopeError("bad_field", "args must be a map")
    ts = m.get("ts", 0.0)
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise EnvelopeError("bad_field", "ts")
    return Command(cid, ctype, args, float(ts))
