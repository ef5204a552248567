"""Reading the records that concern runs: what the projection folds and a trace shows.

`decode` turns a batch's records into Events (one per record about a run, bounded) and
counts what it cannot use; `spans_of` reads an `otlp.traces` record's spans. Both are pure.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

from sync.envelope import WireRecord

MAX_PROJECTED_BYTES = 1 << 20  # a larger record is skipped (`too_large`), never decoded
NARROW_BYTES = 512  # a larger record is read narrowly: only the fields the projection uses
# the fields of a run record the projection reads (sync/cloud/projection.py's fold)
PROJECTED = frozenset({"run_id", "ts", "workflow", "version", "origin", "to", "node", "next",
                       "attempt", "run_status", "error", "key", "local", "cloud", "resolved",
                       "rule", "approval_id", "visit", "kind", "prompt", "timeout_at"})
DATA_CHARS = 500  # a text field of an event as a trace shows it

# kind -> rank among records of the same timestamp (a later phase of a run ranks higher)
RUN_KINDS = {"run.queued": 0, "run.started": 1, "step.completed": 2, "step.retry": 2,
             "run.migrated": 2, "agent.handoff": 2, "tool.request": 3, "handoff.request": 3,
             "approval.requested": 3, "approval.decided": 4, "approval.conflict": 4,
             "handoff.conflict": 4, "run.cancel_requested": 4, "run.finished": 5}
# kinds the cloud knows that say nothing about a run's course
NOT_RUNS = frozenset({"doc.version", "doc.summary", "otlp.metrics"})
SPANS = "otlp.traces"
# a span: (trace_id, span_id, parent_id, run_id, name, start_s, end_s, attributes)
Span = tuple[str, str, str | None, str | None, str, float, float, dict[str, Any]]


class Event(NamedTuple):
    """One record about one run, decoded. For an `otlp.traces` record, one Event per run
    its spans name (rec empty). A tuple: a batch makes one per record."""

    stream: str
    seq: int
    kind: str
    run_id: str
    ts: float
    rec: Mapping[str, Any]


@dataclass
class Decoded:
    events: list[Event] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def ts_of(v: Any, default: float) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) \
        and math.isfinite(v) and 0 <= v < 1e11 else default


def decode(stream: str, records: Iterable[WireRecord]) -> Decoded:
    """What the projection can use of a batch's records, and what it skips (by reason).
    A record's map holds the fields the projection reads (PROJECTED) at least: a large one
    is read narrowly, its other values skipped undecoded."""
    out = Decoded()
    events, skipped = out.events, out.skipped
    for r in records:
        kind = r.kind
        if kind in NOT_RUNS or (kind == "cmd.result" and stream != "control"):
            continue
        if kind == SPANS:
            try:
                runs = {s[3] for s in spans_of(r.payload) if s[3]}
            except Exception:  # noqa: BLE001 - a device's bytes: whatever protobuf says
                out.skipped["bad_spans"] += 1
                continue
            out.events += [Event(stream, r.seq, SPANS, rid, r.created_at, {})
                           for rid in sorted(runs) if len(rid) <= 200]
            continue
        rec = one(r, skipped, narrow=True)
        if rec is not None:
            ts = rec.get("ts")
            if type(ts) is not float or not 0 <= ts < 1e11:  # a float: the common case
                ts = ts_of(ts, r.created_at)
            events.append(Event(stream, r.seq, kind, rec["run_id"].replace("\x00", ""), ts,
                                rec))
    return out


def one(r: WireRecord, skipped: Counter[str], *, narrow: bool = False
        ) -> dict[str, Any] | None:
    """A run record's map (a command's result: its fields and the result's), or None
    (counted in `skipped` when it is a record the projection cannot use). `narrow`: a large
    run record's map holds only the PROJECTED fields (the others are not decoded)."""
    if r.kind not in RUN_KINDS and r.kind != "cmd.result":
        skipped["unknown_kind" if r.kind != "stub" else "stub"] += 1
        return None
    if len(r.payload) > MAX_PROJECTED_BYTES:
        skipped["too_large"] += 1
        return None
    rec = _narrow(r.payload) if narrow and len(r.payload) > NARROW_BYTES and \
        r.kind != "cmd.result" else None
    try:
        rec = rec if rec is not None else msgpack.unpackb(r.payload, raw=False,
                                                          strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError):
        skipped["undecodable"] += 1
        return None
    if not isinstance(rec, dict):
        skipped["not_a_map"] += 1
        return None
    if r.kind == "cmd.result":  # a command's answer belongs to the run it acted on
        inner = rec.get("result")
        if not isinstance(inner, dict) or not isinstance(inner.get("run_id"), str):
            return None  # a command about no run (a document, a tool's result)
        rec = {"id": rec.get("id"), "type": rec.get("type"), "ok": rec.get("ok"),
               "error": rec.get("error"), "reason": rec.get("reason"), **inner}
    rid = rec.get("run_id")
    if not isinstance(rid, str) or not 0 < len(rid) <= 200:
        skipped["no_run_id"] += 1
        return None
    return rec


def _narrow(payload: bytes) -> dict[str, Any] | None:
    """The PROJECTED fields of a msgpack map, the other values skipped undecoded; None when
    the payload is not a whole, well-formed map with text keys (the full read then says
    what it is)."""
    u = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(payload))
    u.feed(payload)
    out: dict[str, Any] = {}
    try:
        for _ in range(u.read_map_header()):
            k = u.unpack()
            if isinstance(k, str) and k in PROJECTED:
                out[k] = u.unpack()
            else:
                u.skip()
    except (ValueError, msgpack.UnpackException, TypeError):
        return None
    return out if u.tell() == len(payload) else None


def bounded(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A record's fields as a trace shows them: text cut to DATA_CHARS, small values only."""
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if isinstance(v, str):
            out[k] = v[:DATA_CHARS]
        elif v is None or isinstance(v, bool | int | float):
            out[k] = v if not isinstance(v, float) or math.isfinite(v) else None
        elif len(json.dumps(v, default=str)) <= DATA_CHARS:
            out[k] = v
    return out


def spans_of(payload: bytes) -> list[Span]:
    """The spans of an OTLP ExportTraceServiceRequest."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    req = ExportTraceServiceRequest()
    req.ParseFromString(payload)
    out: list[Span] = []
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                attrs = {a.key: _value(a.value) for a in s.attributes}
                rid = attrs.get("edge_agent.run_id")
                out.append((s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex() or None,
                            rid if isinstance(rid, str) else None, s.name[:200],
                            s.start_time_unix_nano / 1e9, s.end_time_unix_nano / 1e9, attrs))
    return out


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which in (None, "kvlist_value", "bytes_value"):
        return None
    got = getattr(v, which)
    return got[:DATA_CHARS] if isinstance(got, str) else got


__all__ = ["RUN_KINDS", "Decoded", "Event", "Span", "bounded", "decode", "one", "spans_of"]
