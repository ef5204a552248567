"""A device's outbox, stored in a cloud store as the device sends it (tests of the cloud's
views of a real engine's records)."""

from __future__ import annotations

from typing import Any

from sync.cloud.store import SqlCloudStore
from sync.envelope import Batch, WireRecord
from sync.outbox import Outbox, epoch


def to_cloud(store: Any, cloud: SqlCloudStore, device: str) -> None:
    """Every record the device's outbox holds, stored in the cloud as a device sends it."""
    ep = epoch(store.conn)
    outbox = Outbox(store.conn)
    for stream in ("checkpoints", "control", "traces"):
        recs = tuple(WireRecord(r.seq, r.kind, r.payload, r.created_at)
                     for r in outbox.pending(stream, after=0, limit=10000))
        if recs:
            cloud.store_batch(Batch(device, stream, recs[0].seq - 1, recs[0].seq,
                                    recs[-1].seq, recs, ep, 2))


__all__ = ["to_cloud"]
