"""Wire formats of uplink batches and downlink commands: msgpack, versioned, size-limited.

`sync/PROTOCOL.md` is the specification; this module implements it. Protocol 2 batches
carry the device database's epoch, a `floor` (below which the device holds nothing the
cloud lacks) and, for a record larger than a batch, a chunk header. Protocol 1 batches are
still decoded, for devices not yet upgraded. Every decoder raises EnvelopeError with a
short, stable reason (the quarantine reason); nothing else escapes.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zstandard

PROTOCOL = 2
PROTOCOLS = (1, 2)
MAX_BATCH_BYTES = 4 << 20  # an uplink message as it travels (compressed or not)
MAX_RECORDS = 100_000
MAX_SEQ = 2**63 - 1
MAX_CREATED_AT = 1e11  # seconds since 1970: year 5138
MAX_CHUNKS = 4096
MAX_COMMAND_BYTES = 64 << 10
COMMAND_TYPES = ("approve", "reject", "cancel", "start", "doc_update", "doc_sync", "tool_result",
                 "deploy")
KIND_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
EPOCH_RE = re.compile(r"^[0-9a-f]{16}$")
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
class Chunk:
    """Piece `index` (from 0) of `count` of one record of `size` bytes with this SHA-256."""

    index: int
    count: int
    size: int
    sha256: str


@dataclass(frozen=True)
class Batch:
    device: str
    stream: str
    floor: int  # v2: seqs <= floor the cloud lacks are gone for good; v1: `after`
    first: int
    last: int
    records: tuple[WireRecord, ...]
    epoch: str = ""  # "" for protocol 1 devices
    version: int = 1
    chunk: Chunk | None = None

    @property
    def after(self) -> int:
        return self.floor

    @property
    def digest(self) -> str:
        return batch_digest(self.records, self.chunk)


@dataclass(frozen=True)
class Command:
    id: str
    type: str
    args: Mapping[str, Any] = field(default_factory=dict)
    ts: float = 0.0


def batch_digest(records: Sequence[WireRecord], chunk: Chunk | None = None) -> str:
    """Lowercase hex SHA-256 of, per record, its seq (8 bytes, big-endian) then the SHA-256
    of its payload; a chunk adds its index and count (4 bytes each, big-endian)."""
    h = hashlib.sha256()
    for r in records:
        h.update(r.seq.to_bytes(8, "big", signed=False))
        h.update(hashlib.sha256(r.payload).digest())
    if chunk is not None:
        h.update(chunk.index.to_bytes(4, "big") + chunk.count.to_bytes(4, "big"))
    return h.hexdigest()


def unpack(data: bytes, max_bytes: int, what: str) -> Any:
    if len(data) > max_bytes:
        raise EnvelopeError("too_large", f"{what} of {len(data)} bytes (limit {max_bytes})")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=max_bytes,
                               max_str_len=max_bytes, max_array_len=MAX_RECORDS * 4 + 16,
                               max_map_len=64, max_ext_len=0)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError,
            TypeError, UnicodeDecodeError, OverflowError) as exc:
        raise EnvelopeError("bad_msgpack", str(exc)[:120]) from exc


def encode_batch(device: str, stream: str, floor: int, records: Sequence[WireRecord], *,
                 epoch: str | None = None, chunk: Chunk | None = None,
                 compress: bool = False, max_bytes: int = MAX_BATCH_BYTES) -> bytes:
    """A protocol 2 batch when `epoch` is given, else a protocol 1 batch (`floor` is then
    v1's `after`)."""
    rows = msgpack.packb([[r.seq, r.kind, r.payload, float(r.created_at)] for r in records])
    body: bytes = zstandard.ZstdCompressor(level=3).compress(rows) if compress else rows
    env: dict[str, Any] = {"v": 1 if epoch is None else 2, "dev": device, "s": stream,
                           "first": records[0].seq, "last": records[-1].seq,
                           "z": compress, "r": body}
    if epoch is None:
        env["after"] = floor
    else:
        env.update(ep=epoch, floor=floor)
        if chunk is not None:
            env["ch"] = [chunk.index, chunk.count, chunk.size, chunk.sha256]
    out: bytes = msgpack.packb(env)
    if len(out) > max_bytes:
        raise EnvelopeError("too_large", f"batch of {len(out)} bytes (limit {max_bytes})")
    return out


def _int(m: Mapping[str, Any], k: str, low: int = 0) -> int:
    v = m.get(k)
    if not isinstance(v, int) or isinstance(v, bool) or v < low or v > MAX_SEQ:
        raise EnvelopeError("bad_field", f"{k} must be an integer in {low}..2^63-1")
    return v


def _str(m: Mapping[str, Any], k: str, limit: int = 256) -> str:
    v = m.get(k)
    if not isinstance(v, str) or not v or len(v) > limit:
        raise EnvelopeError("bad_field", f"{k} must be a non-empty string")
    return v


def _chunk(m: Mapping[str, Any]) -> Chunk | None:
    ch = m.get("ch")
    if ch is None:
        return None
    if (not isinstance(ch, list) or len(ch) != 4
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in ch[:3])
            or not isinstance(ch[3], str) or not re.fullmatch(r"[0-9a-f]{64}", ch[3])
            or not 1 <= ch[1] <= MAX_CHUNKS or not 0 <= ch[0] < ch[1] or ch[2] < 1):
        raise EnvelopeError("bad_chunk", "ch is [index, count, size, sha256 hex]")
    return Chunk(ch[0], ch[1], ch[2], ch[3])


def _record(row: Any) -> WireRecord:
    if (not isinstance(row, list) or len(row) != 4 or not isinstance(row[0], int)
            or isinstance(row[0], bool) or not isinstance(row[1], str)
            or not isinstance(row[2], bytes) or not isinstance(row[3], (int, float))
            or isinstance(row[3], bool)):
        raise EnvelopeError("bad_record", "a record is [seq, kind, payload, created_at]")
    if not 1 <= row[0] <= MAX_SEQ:
        raise EnvelopeError("bad_seq", "a seq is in 1..2^63-1")
    if not KIND_RE.match(row[1]):
        raise EnvelopeError("bad_kind", "a kind is 1-64 of A-Z a-z 0-9 . _ : -")
    created = float(row[3])
    if not (math.isfinite(created) and 0 <= created <= MAX_CREATED_AT):
        raise EnvelopeError("bad_created_at", "created_at must be finite in 0..1e11")
    return WireRecord(row[0], row[1], row[2], created)


def decode_batch(data: bytes, *, topic_device: str, streams: Sequence[str],
                 max_bytes: int = MAX_BATCH_BYTES, max_records: int = MAX_RECORDS) -> Batch:
    m = unpack(data, max_bytes, "batch")
    if not isinstance(m, dict):
        raise EnvelopeError("bad_shape", "a batch is a map")
    version = m.get("v")
    if version not in PROTOCOLS or isinstance(version, bool):
        raise EnvelopeError("bad_version", f"protocol {version!r}, expected one of {PROTOCOLS}")
    device = _str(m, "dev")
    if device != topic_device:
        raise EnvelopeError("forged_device", f"batch for {device!r} on {topic_device!r}'s topic")
    stream = _str(m, "s")
    if stream not in streams:
        raise EnvelopeError("bad_stream", ascii(stream[:40]))
    epoch, chunk = "", None
    if version == 2:
        epoch = m.get("ep")  # type: ignore[assignment]
        if not isinstance(epoch, str) or not EPOCH_RE.match(epoch):
            raise EnvelopeError("bad_epoch", "ep is 16 lowercase hex digits")
        chunk = _chunk(m)
    floor = _int(m, "after" if version == 1 else "floor")
    first, last = _int(m, "first", 1), _int(m, "last", 1)
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
    rows = unpack(body, max_bytes * 4, "records")
    if not isinstance(rows, list) or not rows or len(rows) > max_records:
        raise EnvelopeError("bad_records", "records must be a non-empty list within limits")
    records = [_record(row) for row in rows]
    if any(b.seq <= a.seq for a, b in itertools.pairwise(records)):
        raise EnvelopeError("bad_order", "sequences must increase")
    if records[0].seq != first or records[-1].seq != last or first <= floor:
        raise EnvelopeError("bad_range", "first/last do not match the records")
    if chunk is not None and len(records) != 1:
        raise EnvelopeError("bad_chunk", "a chunk message carries exactly one record")
    return Batch(device, stream, floor, first, last, tuple(records), epoch, version, chunk)


def encode_command(cmd: Command) -> bytes:
    """Commands are the same in protocols 1 and 2 and carry v = 1, so both read them."""
    out: bytes = msgpack.packb({"v": 1, "id": cmd.id, "type": cmd.type,
                                "args": dict(cmd.args), "ts": cmd.ts})
    return out


def decode_command(data: bytes) -> Command:
    m = unpack(data, MAX_COMMAND_BYTES, "command")
    if not isinstance(m, dict):
        raise EnvelopeError("bad_shape", "a command is a map")
    if m.get("v") != 1:
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

