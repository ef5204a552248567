"""Spans as plain data and their OTLP protobuf encoding (an ExportTraceServiceRequest).

Spans are derived from the durable records (see derive.py) and encoded into the outbox's
`traces` stream; the cloud ingest re-exports them with their original ids, and a device with
an OTLP endpoint also exports them directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

SCOPE = "edge_agent"
OK, ERROR = trace_pb2.Status.STATUS_CODE_OK, trace_pb2.Status.STATUS_CODE_ERROR
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT  # a model call (GenAI inference spans)


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start: float
    end: float
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    events: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)
    kind: int = trace_pb2.Span.SPAN_KIND_INTERNAL


def put_attrs(kvs: Any, attributes: Mapping[str, Any]) -> None:
    """Append attributes to a repeated KeyValue field in place (None values are left out).
    Filling messages in place is about 3x faster with upb than building and copying them."""
    for key, v in attributes.items():
        if v is None:
            continue
        kv = kvs.add()
        kv.key = key
        if isinstance(v, bool):
            kv.value.bool_value = v
        elif isinstance(v, int):
            kv.value.int_value = v
        elif isinstance(v, float):
            kv.value.double_value = v
        elif isinstance(v, (list, tuple)):  # e.g. gen_ai.response.finish_reasons
            for item in v:
                kv.value.array_value.values.add().string_value = str(item)
        else:
            kv.value.string_value = str(v)


def encode(spans: Sequence[Span], *, service: str, device_id: str) -> bytes:
    """One OTLP ExportTraceServiceRequest holding the spans."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    put_attrs(rs.resource.attributes, {"service.name": service, "service.instance.id": device_id,
                                       "device.id": device_id})
    scope = rs.scope_spans.add()
    scope.scope.name = SCOPE
    for s in spans:
        pb = scope.spans.add()
        pb.trace_id = bytes.fromhex(s.trace_id)
        pb.span_id = bytes.fromhex(s.span_id)
        if s.parent_id:
            pb.parent_span_id = bytes.fromhex(s.parent_id)
        pb.name = s.name
        pb.kind = s.kind  # type: ignore[assignment,unused-ignore]
        pb.start_time_unix_nano = int(s.start * 1e9)
        pb.end_time_unix_nano = int(max(s.end, s.start) * 1e9)
        put_attrs(pb.attributes, s.attributes)
        pb.status.code = ERROR if s.error else OK  # type: ignore[assignment,unused-ignore]
        if s.error:
            pb.status.message = s.error
        for name, ts, attrs in s.events:
            event = pb.events.add()
            event.name = name
            event.time_unix_nano = int(ts * 1e9)
            put_attrs(event.attributes, attrs)
    return bytes(req.SerializeToString())


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


def decode(payload: bytes) -> list[dict[str, Any]]:
    """Spans of an encoded request as plain dicts (for tests and the CLI)."""
    req = trace_service_pb2.ExportTraceServiceRequest.FromString(payload)
    out = []
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                    "parent_id": s.parent_span_id.hex() or None, "name": s.name,
                    "start": s.start_time_unix_nano / 1e9, "end": s.end_time_unix_nano / 1e9,
                    "error": s.status.message if s.status.code == ERROR else None,
                    "attributes": {a.key: _value(a.value) for a in s.attributes},
                    "events": [e.name for e in s.events]})
    return out
