"""The fleet's projection: one row per device run, kept beside the records that are the truth.

`project(store, c, device, epoch, stream, records)` runs inside the transaction that stored
a batch (SqlCloudStore.store_batch), for the records that batch newly stored, so a run's row
never disagrees with the records the cloud holds. `reindex` rebuilds it from the records.

A run's row is a fold of its records that gives the same row in any arrival order (shared
subscriptions reorder batches, and two streams of a device are stored side by side):
counters add, first times take the least, and status/node/error follow the record with the
greatest key (terminal first, then the device's timestamp, then the kind's rank). Approvals
are kept per id (requested, decided), so a decision that arrives before its request still
answers it. The row also keeps, per stream, the least and greatest seq of the records about
the run (its trace reads them back from `records`). The pure part is `fold`; the driver
folds every run a batch touches in two round trips (on PostgreSQL under a per-device lock:
two streams of one device may be stored at once by two workers).

A record the projection cannot use (an unknown kind, a payload over 1 MiB, one that is not a
msgpack map, invalid UTF-8, no run id) is counted per device and reason in `fleet_skips`
and skipped: it never fails the batch. A run whose records never include a start
(`run.queued` or `run.started`) keeps a row that views do not list (`no_start`). Each
device's listed runs are counted by status in `fleet_device_runs`, changed with the rows
(the devices view reads it, not a count over every run).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import orjson

from sync.cloud.run_records import RUN_KINDS, SPANS, Event, decode, ts_of
from sync.cloud.views import ViewError
from sync.envelope import WireRecord

TEXT_CHARS = 2000  # an error or a prompt, as the projection keeps it
MAX_GATES = 64  # approvals remembered per run (the oldest decided ones go first)
REINDEX_PAGE = 2000
DEVICE_LOCK = 7118  # pg_advisory_xact_lock(DEVICE_LOCK, hashtext(device))

TERMINAL = frozenset({"completed", "failed", "cancelled"})
# the status a record leaves a run in (the device's own names: edge_agent's records.STATUSES)
HEAD_KINDS = {"run.queued": "queued", "run.started": "running", "step.completed": "running",
              "step.retry": "running", "tool.request": "running",
              "handoff.request": "running", "approval.requested": "waiting_approval",
              "approval.decided": "running"}
GATE_KINDS = frozenset({"approval.requested", "approval.decided", "approval.conflict"})
COLUMNS = ("workflow", "version", "origin", "status", "node", "error", "queued_at",
           "started_at", "updated_at", "finished_at", "steps", "retries", "conflicts", "seqs",
           "head", "gates", "approval_id", "approval_node", "approval_visit", "approval_kind",
           "approval_prompt", "approval_at", "approval_expires_at")


def _text(v: Any, limit: int = TEXT_CHARS) -> str | None:
    return None if v is None else str(v)[:limit].replace("\x00", "\\x00")


def _int(v: Any, bound: int = 1 << 63) -> int | None:
    """An id or a count a column can hold, else None."""
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < bound else None


def _least(a: Any, b: float) -> float:
    return b if a is None else min(float(a), b)


# the fold: pure ------------------------------------------------------------------------------
def empty_row(ts: float) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(updated_at=ts, steps=0, retries=0, conflicts=0, seqs="{}", head="{}",
               gates="{}")
    return row


def fold(row: Mapping[str, Any], events: Sequence[Event]) -> dict[str, Any]:
    """The run's row after `events`; the same row whatever order the events come in.

    One pass over the events: counters, first times and spans; the record that sets the
    head (status, node, error) is the one with the greatest key, applied once. JSON columns
    a batch leaves alone (gates, head) are neither parsed nor written again."""
    new = dict(row)
    head: dict[str, Any] | None = None  # parsed when a record needs it
    gates: dict[str, dict[str, Any]] | None = None
    seqs: dict[str, list[int]] = orjson.loads(new["seqs"] or "{}")
    updated, steps, retries = float(new["updated_at"] or 0.0), 0, 0
    heads: list[tuple[list[Any], Event, str]] = []  # records that may set the head
    for e in events:
        kind = e.kind
        span = seqs.get(e.stream)
        if span is None:
            seqs[e.stream] = [e.seq, e.seq]
        elif e.seq < span[0]:
            span[0] = e.seq
        elif e.seq > span[1]:
            span[1] = e.seq
        if kind == SPANS:
            continue
        r = e.rec
        if e.ts > updated:
            updated = e.ts
        if new["workflow"] is None and isinstance(r.get("workflow"), str):
            new["workflow"] = _text(r["workflow"], 200)
        if kind == "step.completed":
            steps += 1
        elif kind == "step.retry":
            retries += 1
        elif kind == "run.finished":
            steps += "attempt" in r
        elif kind == "run.queued":
            new["queued_at"] = _least(new["queued_at"], e.ts)
            new["origin"] = _text(r.get("origin"), 64)
            head = _loads(new, "head") if head is None else head
            if head.get("vts") is None:
                new["version"] = _text(r.get("version"), 64)
        elif kind == "run.started":
            new["started_at"] = _least(new["started_at"], e.ts)
        elif kind == "run.migrated":
            head = _loads(new, "head") if head is None else head
            if e.ts >= (head.get("vts") or 0.0):
                head["vts"] = e.ts
                new["version"] = _text(r.get("to"), 64)
        elif kind == "handoff.conflict":
            head = _loads(new, "head") if head is None else head
            head.setdefault("handoffs", {})[_text(r.get("key"), 200) or "?"] = {
                "node": _text(r.get("node"), 200), "local": _text(r.get("local"), 64),
                "at": e.ts}
        if kind in GATE_KINDS:
            gates = _loads(new, "gates") if gates is None else gates
            _gate(gates, e)
        status = "" if kind == "run.finished" else HEAD_KINDS.get(kind)
        if status is not None:
            heads.append(([1 if kind == "run.finished" else 0, e.ts, RUN_KINDS[kind],
                           e.stream, e.seq], e, status))
    new["updated_at"], new["steps"], new["retries"] = updated, new["steps"] + steps, \
        new["retries"] + retries
    if heads:
        head = _loads(new, "head") if head is None else head
        _heads(new, head, heads)
    if gates is not None and len(gates) > MAX_GATES:  # forget the oldest decided ones
        for k in sorted((k for k, g in gates.items() if g.get("decided")), key=int)[
                :len(gates) - MAX_GATES]:
            del gates[k]
    if head is not None:
        new["head"] = orjson.dumps(head, option=orjson.OPT_SORT_KEYS).decode()
    if gates is not None:
        new["gates"] = orjson.dumps(gates, option=orjson.OPT_SORT_KEYS).decode()
    if head is not None or gates is not None:
        if gates is None:
            gates = _loads(new, "gates")
        new["conflicts"] = sum(1 for g in gates.values() if "conflict" in g) + len(
            (head if head is not None else _loads(new, "head")).get("handoffs", {}))
    new["seqs"] = orjson.dumps(seqs, option=orjson.OPT_SORT_KEYS).decode()
    if gates is not None or new["gates"] not in (None, "", "{}"):  # else: no gate, none pending
        _pending(new, _loads(new, "gates") if gates is None else gates)
    return new


def _loads(row: Mapping[str, Any], column: str) -> dict[str, Any]:
    got: dict[str, Any] = orjson.loads(row[column] or "{}")
    return got


def _heads(new: dict[str, Any], head: dict[str, Any],
           heads: Sequence[tuple[list[Any], Event, str]]) -> None:
    """Status, node and error follow the record with the greatest key. Only the greatest
    is applied, unless it is a decision that names no node (it keeps the node before it):
    then all of them, in order, as one at a time would."""
    top = max(heads, key=lambda h: h[0])
    if top[1].kind == "approval.decided" and top[1].rec.get("node") is None:
        for key, e, status in heads:
            _head(new, head, key, e, status)
    else:
        _head(new, head, *top)


def _gate(gates: dict[str, dict[str, Any]], e: Event) -> None:
    r = e.rec
    aid = _int(r.get("approval_id"))
    if aid is None:
        return
    if e.kind == "approval.requested":
        gates.setdefault(str(aid), {}).update(
            node=_text(r.get("node"), 200), visit=_int(r.get("visit"), 1 << 31),
            kind=_text(r.get("kind"), 64), prompt=_text(r.get("prompt")), at=e.ts,
            expires=ts_of(r.get("timeout_at"), 0.0) or None)
    elif e.kind in ("approval.decided", "approval.conflict"):
        g = gates.setdefault(str(aid), {})
        g["decided"] = True
        if e.kind == "approval.conflict":
            g["conflict"] = {k: _text(r.get(k), 64) for k in ("local", "cloud", "resolved",
                                                               "rule")}
            g["conflict"].update(at=e.ts, node=_text(r.get("node"), 200))


def _head(new: dict[str, Any], head: dict[str, Any], key: list[Any], e: Event,
          status: str) -> None:
    if head.get("key") is not None and key <= head["key"]:
        return
    head["key"] = key
    r = e.rec
    if e.kind == "run.finished":
        new["status"] = _text(r.get("run_status"), 32) or "finished"
        new["error"] = _text(r.get("error"))
        new["finished_at"] = e.ts
        new["node"] = _text(r.get("node"), 200)
        return
    new["status"] = status
    new["error"] = None
    node = r.get("next") if e.kind == "step.completed" else r.get("node")
    if node is not None or e.kind != "approval.decided":
        new["node"] = _text(node, 200)


def _pending(row: dict[str, Any], gates: Mapping[str, Mapping[str, Any]]) -> None:
    """The approval the run waits for: the newest one requested and not decided."""
    waiting = [] if row["status"] in TERMINAL else sorted(
        (int(k) for k, g in gates.items() if "at" in g and not g.get("decided")))
    g = gates[str(waiting[-1])] if waiting else {}
    row.update(approval_id=waiting[-1] if waiting else None, approval_node=g.get("node"),
               approval_visit=g.get("visit"), approval_kind=g.get("kind"),
               approval_prompt=g.get("prompt"), approval_at=g.get("at"),
               approval_expires_at=g.get("expires"))


# the driver: rows --------------------------------------------------------------------------
def project(store: Any, c: Any, device: str, epoch: str, stream: str,
            records: Sequence[WireRecord]) -> Counter[str]:
    """Project records a batch newly stored, in the batch's transaction; returns what was
    skipped, by reason (also added to fleet_skips)."""
    if not records:
        return Counter()
    got = decode(stream, records)
    if got.events:
        _runs(store, c, device, epoch, got.events, got.skipped)
    for reason, n in got.skipped.items():
        store._exec(c, "INSERT INTO fleet_skips (device, reason, count) VALUES (?, ?, ?) ON"
                       " CONFLICT (device, reason) DO UPDATE SET count = fleet_skips.count +"
                       " excluded.count", (device, reason, n))
    return got.skipped


def _runs(store: Any, c: Any, device: str, epoch: str, events: Sequence[Event],
          skipped: Counter[str]) -> None:
    """Fold the batch's events into their runs' rows: lock the device (PostgreSQL), read
    the rows, write them back with the device's counters; two round trips on PostgreSQL
    whatever the number of runs."""
    by_run: dict[str, list[Event]] = {}
    for e in events:
        by_run.setdefault(e.run_id, []).append(e)
    rids = sorted(by_run)
    held: dict[str, dict[str, Any]] = {}
    select = f"SELECT run_id, {', '.join(COLUMNS)} FROM fleet_runs WHERE device = ? AND epoch = ?"
    if store.dialect == "postgresql":  # the lock, then the rows: one round trip
        with c.pipeline():
            c.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (DEVICE_LOCK, device))
            cur = c.execute(f"{select} AND run_id = ANY(?)".replace("?", "%s"),
                            (device, epoch, rids))
        found = cur.fetchall()
    else:  # BEGIN IMMEDIATE already serializes writers
        found = [row for i in range(0, len(rids), 500) for row in store._exec(
            c, f"{select} AND run_id IN ({', '.join('?' * len(rids[i:i + 500]))})",
            (device, epoch, *rids[i:i + 500])).fetchall()]
    for row in found:
        held[row[0]] = dict(zip(COLUMNS, row[1:], strict=True))
    rows = []
    by_status: Counter[str] = Counter()  # the device's listed runs, by status: the change
    for rid in rids:
        old = held.get(rid)
        row = fold(old or empty_row(by_run[rid][0].ts), by_run[rid])
        if _listed(row):
            by_status[str(row["status"])] += 1
        elif any(e.kind == "run.finished" for e in by_run[rid]):
            skipped["no_start"] += 1
        if old is not None and _listed(old):
            by_status[str(old["status"])] -= 1
        rows.append((device, rid, epoch, *(row[k] for k in COLUMNS)))
    changed = [(device, status, n) for status, n in sorted(by_status.items()) if n]
    with c.pipeline() if store.dialect == "postgresql" else nullcontext():  # one round trip
        _upsert(store, c, "fleet_runs", ("device", "run_id", "epoch", *COLUMNS), rows,
                "ON CONFLICT (device, run_id, epoch) DO UPDATE SET "
                + ", ".join(f"{k} = excluded.{k}" for k in COLUMNS))
        if changed:
            _upsert(store, c, "fleet_device_runs", ("device", "status", "count"), changed,
                    "ON CONFLICT (device, status) DO UPDATE SET count ="
                    " fleet_device_runs.count + excluded.count")


def _listed(row: Mapping[str, Any]) -> bool:
    """A run views list: the cloud has seen its start."""
    return row["queued_at"] is not None or row["started_at"] is not None


def _upsert(store: Any, c: Any, table: str, columns: Sequence[str],
            rows: Sequence[tuple[Any, ...]], tail: str) -> None:
    """Rows in one statement of a fixed text: on PostgreSQL as one JSON parameter (one round
    trip, a query psycopg and the server prepare once), on SQLite by executemany."""
    names = ", ".join(columns)
    if store.dialect == "postgresql":
        c.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM jsonb_populate_recordset("
                  f"NULL::{table}, %s::jsonb) {tail}",
                  (orjson.dumps([dict(zip(columns, r, strict=True)) for r in rows]).decode(),))
        return
    cur = c.cursor()
    try:
        cur.executemany(f"INSERT INTO {table} ({names}) VALUES"
                        f" ({', '.join('?' * len(columns))}) {tail}", rows)
    finally:
        cur.close()


def reindex(store: Any, device: str | None = None) -> dict[str, Any]:
    """Rebuild the projection (of one device, or all) from the stored records: the rows the
    ingest keeps. Each device in one transaction of its own. ViewError (exit 1) for a
    device the cloud holds no records of."""
    one = "" if device is None else " WHERE device = ?"
    with store.tx() as c:
        devices = [r[0] for r in store._exec(
            c, f"SELECT DISTINCT device FROM epochs{one} ORDER BY device",
            () if device is None else (device,))]
    if device is not None and not devices:
        raise ViewError(f"no device {device!r}: the cloud holds no records of it")
    out: dict[str, Any] = {"devices": 0, "records": 0, "skipped": Counter()}
    for d in devices:
        with store.tx() as c:
            for table in ("fleet_runs", "fleet_skips", "fleet_device_runs"):
                store._exec(c, f"DELETE FROM {table} WHERE device = ?", (d,))
            keys = store._exec(c, "SELECT DISTINCT epoch, stream FROM records WHERE device = ?"
                                  " ORDER BY epoch, stream", (d,)).fetchall()
            for epoch, stream in keys:
                after = 0
                while True:
                    rows = store._exec(
                        c, "SELECT seq, kind, payload, created_at FROM records WHERE device ="
                           " ? AND epoch = ? AND stream = ? AND seq > ? ORDER BY seq LIMIT"
                           f" {REINDEX_PAGE}", (d, epoch, stream, after)).fetchall()
                    if not rows:
                        break
                    page = [WireRecord(int(s), k, bytes(p), float(t)) for s, k, p, t in rows]
                    out["skipped"].update(project(store, c, d, epoch, stream, page))
                    out["records"] += len(page)
                    after = page[-1].seq
        out["devices"] += 1
    out["skipped"] = dict(out["skipped"])
    return out


__all__ = ["Event", "decode", "fold", "project", "reindex"]
