"""The cloud's acks (`<prefix>/<device>/ack`): which batch was stored, and the watermark.

Protocol 2: {v: 2, s: stream, ep: epoch, d: digest of the batch answered (lowercase hex),
wm: the highest contiguous seq the cloud has stored for (device, epoch, stream), c: how
many records of that batch conflicted with what the cloud already held under their seq}.
Protocol 1: {v: 1, s, seq: watermark, digest: the batch's digest or ""}.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from sync.envelope import EPOCH_RE, MAX_SEQ, EnvelopeError, unpack

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Ack:
    stream: str
    watermark: int
    digest: str
    epoch: str = ""
    conflicts: int = 0
    version: int = 2


def encode_ack(stream: str, watermark: int, digest: str, *, epoch: str | None = None,
               conflicts: int = 0) -> bytes:
    """A protocol 2 ack when `epoch` is given (the batch was protocol 2), else protocol 1."""
    if epoch is None:
        out: bytes = msgpack.packb({"v": 1, "s": stream, "seq": watermark, "digest": digest})
    else:
        out = msgpack.packb({"v": 2, "s": stream, "ep": epoch, "d": digest, "wm": watermark,
                             "c": conflicts})
    return out


def _nat(m: dict[str, object], k: str) -> int:
    v = m.get(k)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_SEQ:
        raise EnvelopeError("bad_field", f"{k} must be an integer in 0..2^63-1")
    return v


def decode_ack(data: bytes, streams: Sequence[str]) -> Ack:
    m = unpack(data, 4096, "ack")
    if not isinstance(m, dict):
        raise EnvelopeError("bad_shape", "an ack is a map")
    version = m.get("v")
    if version not in (1, 2) or isinstance(version, bool):
        raise EnvelopeError("bad_version", f"ack protocol {version!r}")
    stream = m.get("s")
    if not isinstance(stream, str) or stream not in streams:
        raise EnvelopeError("bad_stream", ascii(stream)[:40])
    if version == 1:
        digest = m.get("digest", "")
        if not isinstance(digest, str):
            raise EnvelopeError("bad_field", "digest")
        return Ack(stream, _nat(m, "seq"), digest, "", 0, 1)
    epoch, digest = m.get("ep"), m.get("d")
    if not isinstance(epoch, str) or not EPOCH_RE.match(epoch):
        raise EnvelopeError("bad_epoch", "ep is 16 lowercase hex digits")
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise EnvelopeError("bad_digest", "d is 64 lowercase hex digits")
    return Ack(stream, _nat(m, "wm"), digest, epoch, _nat(m, "c"), 2)
