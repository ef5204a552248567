"""Storing one batch inside the store's transaction: records once per (device, epoch,
stream, seq), chunks reassembled, conflicting resends quarantined, and the watermark
computed from what is stored (under a lock on the stream's row, so concurrent workers
storing the same stream take turns and each sees the other's commits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from sync.chunks import STUB_KIND, assemble, stub, stub_of
from sync.envelope import Batch, EnvelopeError, WireRecord
from sync.watermark import advance

_ROWS_PER_SQLITE_INSERT = 4000  # 8 variables a row, under SQLite's 32,766 per statement
_WALK_PAGE = 1024


@dataclass(frozen=True)
class Stored:
    watermark: int
    conflicts: int = 0  # records whose seq the store already held with other content
    stubs: int = 0  # records stored as stubs (larger than the largest record kept)
    bad_chunk: str = ""  # set when the pieces of a record did not make the record
    new: tuple[WireRecord, ...] = ()  # records stored by this batch (not held before)


def store_batch(store: Any, c: Any, batch: Batch, now: float, *,
                new_epoch: bool = True) -> Stored:
    """`new_epoch`: whether the epoch may be new to the store (else its row is not written
    again; a worker remembers the epochs it has stored)."""
    x = store._exec
    key = (batch.device, batch.epoch, batch.stream)
    if new_epoch:
        x(c, "INSERT INTO epochs (device, epoch, first_seen, protocol) VALUES (?, ?, ?, ?)"
             " ON CONFLICT (device, epoch) DO NOTHING", (batch.device, batch.epoch, now,
                                                          batch.version))
    # the stream's row, made if new, and locked until commit (an upsert locks the row on
    # PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes writers)
    received = int(x(c, "INSERT INTO streams (device, epoch, stream) VALUES (?, ?, ?) ON"
                        " CONFLICT (device, epoch, stream) DO UPDATE SET received_seq ="
                        " streams.received_seq RETURNING received_seq", key).fetchone()[0])
    records, bad = list(batch.records), ""
    if batch.chunk is not None:
        records, bad = _chunk(store, c, batch, received)
    else:
        for i, r in enumerate(records):
            if len(r.payload) > store.max_record_bytes:
                records[i] = stub_of(r)
    conflicts, new = _insert(store, c, batch, records, now) if records else (0, set())
    # every stub newly stored counts once, the cloud's own and the device's alike
    stubs = sum(1 for r in records if r.kind == STUB_KIND and r.seq in new)
    floor = batch.floor if batch.version >= 2 else 0  # protocol 1's `after` is not trusted
    wm = _walk(store, c, key, received, floor, {r.seq for r in records})
    if wm != received or conflicts or stubs:
        x(c, "UPDATE streams SET received_seq = ?, acked_seq = ?, last_created_at ="
             " coalesce(?, last_created_at), conflicts = conflicts + ?, stubs = stubs + ?"
             " WHERE device = ? AND epoch = ? AND stream = ?",
          (wm, wm, records[-1].created_at if records else None, conflicts, stubs, *key))
    return Stored(wm, conflicts, stubs, bad, tuple(r for r in records if r.seq in new))


def _chunk(store: Any, c: Any, batch: Batch, received: int) -> tuple[list[WireRecord], str]:
    """Keep one piece; when the record is complete (or too large to keep), the record."""
    x, ch, r = store._exec, batch.chunk, batch.records[0]
    assert ch is not None
    key = (batch.device, batch.epoch, batch.stream, r.seq)
    if r.seq <= received:
        return [], ""  # the record is stored already
    if ch.size > store.max_record_bytes:
        x(c, "DELETE FROM chunks WHERE device = ? AND epoch = ? AND stream = ? AND seq = ?",
          key)
        return [WireRecord(r.seq, STUB_KIND, stub(r.kind, ch.size, ch.sha256),
                           r.created_at)], ""
    x(c, "INSERT INTO chunks (device, epoch, stream, seq, idx, count, size, sha256, kind,"
         " created_at, piece) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device,"
         " epoch, stream, seq, idx) DO UPDATE SET count = excluded.count, size ="
         " excluded.size, sha256 = excluded.sha256, kind = excluded.kind, created_at ="
         " excluded.created_at, piece = excluded.piece",  # a new layout replaces the old
      (*key, ch.index, ch.count, ch.size, ch.sha256, r.kind, r.created_at, r.payload))
    rows = x(c, "SELECT idx, piece FROM chunks WHERE device = ? AND epoch = ? AND stream = ?"
                " AND seq = ? AND count = ? AND size = ? AND sha256 = ? ORDER BY idx",
             (*key, ch.count, ch.size, ch.sha256)).fetchall()
    if len(rows) < ch.count:
        return [], ""
    x(c, "DELETE FROM chunks WHERE device = ? AND epoch = ? AND stream = ? AND seq = ?", key)
    try:
        data = assemble(ch, [bytes(p) for _, p in rows])
    except EnvelopeError as exc:
        return [], str(exc)  # pieces dropped: the device resends the record's chunks
    return [WireRecord(r.seq, r.kind, data, r.created_at)], ""


def _insert(store: Any, c: Any, batch: Batch, records: list[WireRecord],
            now: float) -> tuple[int, set[int]]:
    """Insert what is new; count (and quarantine) seqs held with other content."""
    x = store._exec
    dev, ep, st = batch.device, batch.epoch, batch.stream
    inserted: set[int] = set()
    if store.dialect == "postgresql":
        # one statement, the rows as one JSON parameter: twice as fast as psycopg's arrays
        rows = c.execute(
            "INSERT INTO records (device, epoch, stream, seq, kind, payload, created_at,"
            " received_at) SELECT %s, %s, %s, (x->>0)::bigint, x->>1, decode(x->>2, 'hex'),"
            " (x->>3)::float8, %s FROM jsonb_array_elements(%s::jsonb) AS x"
            " ON CONFLICT DO NOTHING RETURNING seq",
            (dev, ep, st, now, orjson.dumps([[r.seq, r.kind, r.payload.hex(), r.created_at]
                                             for r in records]).decode())).fetchall()
        inserted = {int(s) for (s,) in rows}
    else:
        for i in range(0, len(records), _ROWS_PER_SQLITE_INSERT):
            part = records[i:i + _ROWS_PER_SQLITE_INSERT]
            rows = c.execute(
                "INSERT INTO records (device, epoch, stream, seq, kind, payload, created_at,"
                " received_at) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(part))
                + " ON CONFLICT DO NOTHING RETURNING seq",
                [v for r in part for v in (dev, ep, st, r.seq, r.kind, r.payload,
                                           r.created_at, now)]).fetchall()
            inserted |= {int(s) for (s,) in rows}
    if len(inserted) == len(records):
        return 0, inserted
    mine = {r.seq: r for r in records if r.seq not in inserted}
    held = x(c, "SELECT seq, kind, payload FROM records WHERE device = ? AND epoch = ? AND"
                " stream = ? AND seq >= ? AND seq <= ?",
             (dev, ep, st, min(mine), max(mine))).fetchall()
    conflicts = 0
    for seq, kind, payload in held:
        r = mine.get(int(seq))
        if r is not None and (r.kind != kind or r.payload != bytes(payload)):
            conflicts += 1
            store.quarantine_in(c, device=dev, topic=f"{dev}/up", reason="seq_conflict",
                                detail=f"epoch {ep!r} stream {st} seq {seq}: a resend with"
                                       " other content than the record stored",
                                payload=r.payload)
    return conflicts, inserted


def _walk(store: Any, c: Any, key: tuple[str, str, str], received: int, floor: int,
          fresh: set[int]) -> int:
    """The watermark: from what was held, the floor, this batch, then the store."""
    wm = max(received, floor)
    while True:
        while wm + 1 in fresh:
            wm += 1
        seqs = [int(s) for (s,) in store._exec(
            c, f"SELECT seq FROM records WHERE device = ? AND epoch = ? AND stream = ? AND"
               f" seq > ? ORDER BY seq LIMIT {_WALK_PAGE}", (*key, wm)).fetchall()]
        new = advance(wm, 0, seqs)
        if new == wm:
            return wm
        wm = new
