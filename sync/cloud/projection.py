"""The fleet's projection: one row per device run, kept beside the records that are the truth.

`project(store, c, device, epoch, stream, records)` runs inside the transaction that stored
a batch (SqlCloudStore.store_batch), for the records that batch newly stored, so a run's row
never disagrees with the records the cloud holds. `reindex` rebuilds it from the records.

A run's row is a fold of its records that gives the same row in any arrival order (shared
subscriptions reorder batches, and two streams of a device are stored side by side):
counters add, first times take the least, and status/node/error follow the record with the
greatest key (terminal first, then the device's timestamp, then the kind's rank). Approvals
are kept per id (requested, decided), so a decision that arrives before its request still
answers it. The pure part is `fold`; the rest reads and writes rows.

A record the projection cannot use (an unknown kind, a payload over MAX_PROJECTED_BYTES, one
that is not a msgpack map, invalid UTF-8, no run id) is counted per device and reason in
`fleet_skips` and skipped: it never fails the batch. A run whose records never include a
start (`run.queued` or `run.started`) keeps a row that views do not list (`no_start`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from sync.envelope import WireRecord

MAX_PROJECTED_BYTES = 1 << 20  # a larger record is skipped (`too_large`), never decoded
TEXT_CHARS = 2000  # an error or a prompt, as the projection keeps it
DATA_CHARS = 500  # a field of an event as a trace shows it
MAX_GATES = 64  # approvals remembered per run (the oldest decided ones go first)
REINDEX_PAGE = 2000

# kind -> rank among records of the same timestamp (a later phase of a run ranks higher)
RUN_KINDS = {"run.queued": 0, "run.started": 1, "step.completed": 2, "step.retry": 2,
             "run.migrated": 2, "agent.handoff": 2, "tool.request": 3, "handoff.request": 3,
             "approval.requested": 3, "approval.decided": 4, "approval.conflict": 4,
             "handoff.conflict": 4, "run.cancel_requested": 4, "run.finished": 5}
# kinds the cloud knows that say nothing about a run's course
NOT_RUNS = frozenset({"doc.version", "doc.summary", "otlp.metrics"})
TERMINAL = frozenset({"completed", "failed", "cancelled"})
# the status a record leaves a run in (the device's own names: edge_agent's records.STATUSES)
HEAD_KINDS = {"run.queued": "queued", "run.started": "running", "step.completed": "running",
              "step.retry": "running", "tool.request": "running",
              "handoff.request": "running", "approval.requested": "waiting_approval",
              "approval.decided": "running"}
COLUMNS = ("workflow", "version", "origin", "status", "node", "error", "queued_at",
           "started_at", "updated_at", "finished_at", "steps", "retries", "head", "gates",
           "approval_id", "approval_node", "approval_visit", "approval_kind",
           "approval_prompt", "approval_at", "approval_expires_at")


@dataclass(frozen=True)
class Event:
    """One record about one run, decoded and bounded."""

    stream: str
    seq: int
    kind: str
    run_id: str
    ts: float
    rec: Mapping[str, Any]

    def data(self) -> str:
        """The event's fields as a trace shows them: scalars (text bounded), small values."""
        out: dict[str, Any] = {}
        for k, v in self.rec.items():
            if isinstance(v, str):
                out[k] = v[:DATA_CHARS]
            elif v is None or isinstance(v, bool | int | float):
                out[k] = v if not isinstance(v, float) or math.isfinite(v) else None
            else:
                text = json.dumps(v, default=str)
                if len(text) <= DATA_CHARS:
                    out[k] = v
        return json.dumps(out, default=str)


@dataclass
class Decoded:
    events: list[Event] = field(default_factory=list)
    spans: list[tuple[Any, ...]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def _text(v: Any, limit: int = TEXT_CHARS) -> str | None:
    return None if v is None else str(v)[:limit].replace("\x00", "\\x00")


def _ts(v: Any, default: float) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) \
        and math.isfinite(v) and 0 <= v < 1e11 else default


def decode(stream: str, records: Iterable[WireRecord]) -> Decoded:
    """What the projection can use of a batch's records, and what it skips (by reason)."""
    out = Decoded()
    for r in records:
        if r.kind in NOT_RUNS or (r.kind == "cmd.result" and stream != "control"):
            continue
        if r.kind == "otlp.traces":
            try:
                out.spans.extend(_spans(r.payload))
            except Exception:  # noqa: BLE001 - a device's bytes: whatever protobuf says
                out.skipped["bad_spans"] += 1
            continue
        if r.kind not in RUN_KINDS and r.kind != "cmd.result":
            out.skipped["unknown_kind" if r.kind != "stub" else "stub"] += 1
            continue
        if len(r.payload) > MAX_PROJECTED_BYTES:
            out.skipped["too_large"] += 1
            continue
        try:
            rec = msgpack.unpackb(r.payload, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException, TypeError):
            out.skipped["undecodable"] += 1
            continue
        if not isinstance(rec, dict):
            out.skipped["not_a_map"] += 1
            continue
        if r.kind == "cmd.result":  # a command's answer belongs to the run it acted on
            inner = rec.get("result")
            if not isinstance(inner, dict) or not isinstance(inner.get("run_id"), str):
                continue  # a command about no run (a document, a tool's result)
            rec = {"id": rec.get("id"), "type": rec.get("type"), "ok": rec.get("ok"),
                   "error": rec.get("error"), "reason": rec.get("reason"), **inner}
        rid = rec.get("run_id")
        if not isinstance(rid, str) or not 0 < len(rid) <= 200:
            out.skipped["no_run_id"] += 1
            continue
        out.events.append(Event(stream, r.seq, r.kind, rid.replace("\x00", ""),
                                _ts(rec.get("ts"), r.created_at), rec))
    return out


def _spans(payload: bytes) -> list[tuple[Any, ...]]:
    """(trace_id, span_id, parent_id, run_id, name, start_s, end_s, attrs) of each span."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    req = ExportTraceServiceRequest()
    req.ParseFromString(payload)
    out = []
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                attrs = {a.key: _value(a.value) for a in s.attributes}
                rid = attrs.get("edge_agent.run_id")
                out.append((s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex() or None,
                            rid if isinstance(rid, str) else None, _text(s.name, 200) or "",
                            s.start_time_unix_nano / 1e9, s.end_time_unix_nano / 1e9,
                            json.dumps(attrs, default=str)[:4000]))
    return out


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which in (None, "kvlist_value", "bytes_value"):
        return None
    got = getattr(v, which)
    return got[:DATA_CHARS] if isinstance(got, str) else got


# the fold: pure ------------------------------------------------------------------------------
def empty_row(ts: float) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(updated_at=ts, steps=0, retries=0, head="{}", gates="{}")
    return row


def _least(a: Any, b: float) -> float:
    return b if a is None else min(float(a), b)


def fold(row: Mapping[str, Any], events: Sequence[Event]) -> dict[str, Any]:
    """The run's row after `events`; the same row whatever order the events come in."""
    new = dict(row)
    head = json.loads(new["head"] or "{}")
    gates: dict[str, dict[str, Any]] = json.loads(new["gates"] or "{}")
    for e in events:
        r = e.rec
        new["updated_at"] = max(float(new["updated_at"] or 0.0), e.ts)
        if new["workflow"] is None and isinstance(r.get("workflow"), str):
            new["workflow"] = _text(r["workflow"], 200)
        if e.kind == "run.queued":
            new["queued_at"] = _least(new["queued_at"], e.ts)
            new["origin"] = _text(r.get("origin"), 64)
            if head.get("vts") is None:
                new["version"] = _text(r.get("version"), 64)
        elif e.kind == "run.started":
            new["started_at"] = _least(new["started_at"], e.ts)
        elif e.kind == "run.migrated" and e.ts >= (head.get("vts") or 0.0):
            head["vts"] = e.ts
            new["version"] = _text(r.get("to"), 64)
        if e.kind == "step.completed" or (e.kind == "run.finished" and "attempt" in r):
            new["steps"] += 1
        elif e.kind == "step.retry":
            new["retries"] += 1
        if e.kind == "approval.requested" and isinstance(r.get("approval_id"), int):
            g = gates.setdefault(str(r["approval_id"]), {})
            g.update(node=_text(r.get("node"), 200), visit=r.get("visit"),
                     kind=_text(r.get("kind"), 64), prompt=_text(r.get("prompt")), at=e.ts,
                     expires=_ts(r.get("timeout_at"), 0.0) or None)
        elif e.kind in ("approval.decided", "approval.conflict") and \
                isinstance(r.get("approval_id"), int):
            gates.setdefault(str(r["approval_id"]), {})["decided"] = True
        status = "" if e.kind == "run.finished" else HEAD_KINDS.get(e.kind)
        if status is None:
            continue
        key = [1 if e.kind == "run.finished" else 0, e.ts, RUN_KINDS[e.kind], e.stream, e.seq]
        if head.get("key") is None or key > head["key"]:
            head["key"] = key
            if e.kind == "run.finished":
                new["status"] = _text(r.get("run_status"), 32) or "finished"
                new["error"] = _text(r.get("error"))
                new["finished_at"] = e.ts
                new["node"] = _text(r.get("node"), 200)
            else:
                new["status"] = status
                new["error"] = None
                node = r.get("next") if e.kind == "step.completed" else r.get("node")
                if node is not None or e.kind != "approval.decided":
                    new["node"] = _text(node, 200)
    if len(gates) > MAX_GATES:  # forget the oldest decided ones
        for k in sorted((k for k, g in gates.items() if g.get("decided")), key=int)[
                :len(gates) - MAX_GATES]:
            del gates[k]
    new["head"] = json.dumps(head, sort_keys=True)
    new["gates"] = json.dumps(gates, sort_keys=True)
    _pending(new, gates)
    return new


def _pending(row: dict[str, Any], gates: Mapping[str, Mapping[str, Any]]) -> None:
    """The approval the run waits for: the newest one requested and not decided."""
    waiting = [] if row["status"] in TERMINAL else sorted(
        (int(k) for k, g in gates.items() if "at" in g and not g.get("decided")))
    g = gates[str(waiting[-1])] if waiting else {}
    row.update(approval_id=waiting[-1] if waiting else None, approval_node=g.get("node"),
               approval_visit=g.get("visit") if isinstance(g.get("visit"), int) else None,
               approval_kind=g.get("kind"), approval_prompt=g.get("prompt"),
               approval_at=g.get("at"), approval_expires_at=g.get("expires"))


# the driver: rows --------------------------------------------------------------------------
def project(store: Any, c: Any, device: str, epoch: str, stream: str,
            records: Sequence[WireRecord]) -> Counter[str]:
    """Project records a batch newly stored, in the batch's transaction; returns what was
    skipped, by reason (also added to fleet_skips)."""
    if not records:
        return Counter()
    got = decode(stream, records)
    x = store._exec
    if got.spans:
        _store_spans(store, c, device, got.spans)
    by_run: dict[str, list[Event]] = {}
    for e in got.events:
        by_run.setdefault(e.run_id, []).append(e)
    if got.events:
        rows = [(device, epoch, e.stream, e.seq, e.run_id, e.kind, e.ts, e.data())
                for e in got.events]
        _many(store, c, (
            "INSERT INTO fleet_events (device, epoch, stream, seq, run_id, kind, ts, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"), rows)
    lock = " FOR UPDATE" if store.dialect == "postgresql" else ""
    cols = ", ".join(COLUMNS)
    for rid in sorted(by_run):  # one order of row locks for every worker
        events = by_run[rid]
        key = (device, epoch, rid)
        x(c, "INSERT INTO fleet_runs (device, epoch, run_id, updated_at) VALUES (?, ?, ?, ?)"
             " ON CONFLICT DO NOTHING", (*key, events[0].ts))
        held = x(c, f"SELECT {cols} FROM fleet_runs WHERE device = ? AND epoch = ? AND"
                    f" run_id = ?{lock}", key).fetchone()
        row = fold(dict(zip(COLUMNS, held, strict=True)), events)
        if row["queued_at"] is None and row["started_at"] is None and any(
                e.kind == "run.finished" for e in events):
            got.skipped["no_start"] += 1
        x(c, f"UPDATE fleet_runs SET {', '.join(f'{k} = ?' for k in COLUMNS)} WHERE"
             " device = ? AND epoch = ? AND run_id = ?", (*(row[k] for k in COLUMNS), *key))
    for reason, n in got.skipped.items():
        x(c, "INSERT INTO fleet_skips (device, reason, count) VALUES (?, ?, ?) ON CONFLICT"
             " (device, reason) DO UPDATE SET count = fleet_skips.count + excluded.count",
          (device, reason, n))
    return got.skipped


def _many(store: Any, c: Any, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    cur = c.cursor()  # both drivers' executemany lives on a cursor
    try:
        cur.executemany(store._sql(sql), rows)
    finally:
        cur.close()


def _store_spans(store: Any, c: Any, device: str, spans: list[tuple[Any, ...]]) -> None:
    _many(store, c, (
        "INSERT INTO fleet_spans (device, trace_id, span_id, parent_id, run_id, name, start_s,"
        " end_s, attrs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, trace_id,"
        " span_id) DO UPDATE SET parent_id = excluded.parent_id, run_id ="
        " coalesce(excluded.run_id, fleet_spans.run_id), name = excluded.name, start_s ="
        " excluded.start_s, end_s = excluded.end_s, attrs = excluded.attrs"),
        [(device, *s) for s in spans])


def reindex(store: Any, device: str | None = None) -> dict[str, Any]:
    """Rebuild the projection (of one device, or all) from the stored records: the rows the
    ingest keeps. Each device in one transaction of its own."""
    with store.tx() as c:
        devices = [device] if device is not None else [
            r[0] for r in store._exec(c, "SELECT DISTINCT device FROM epochs ORDER BY device")]
    out: dict[str, Any] = {"devices": 0, "records": 0, "skipped": Counter()}
    for d in devices:
        with store.tx() as c:
            for table in ("fleet_runs", "fleet_events", "fleet_spans", "fleet_skips"):
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
