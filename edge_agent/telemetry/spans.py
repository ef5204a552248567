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
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

SCOPE = "edge_agent"
OK, ERROR = trace_pb2.Status.STATUS_CODE_OK, trace_pb2.Status.STATUS_CODE_ERROR


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


def _value(v: Any) -> common_pb2.AnyValue:
    if isinstance(v, bool):
        return common_pb2.AnyValue(bool_value=v)
    if isinstance(v, int):
        return common_pb2.AnyValue(int_value=v)
    if isinstance(v, float):
        return common_pb2.AnyValue(double_value=v)
    return common_pb2.AnyValue(string_value=str(v))


def _attrs(d: Mapping[str, Any]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=_value(v)) for k, v in d.items() if v is not None]


def encode(spans: Sequence[Span], *, service: str, device_id: str) -> bytes:
    """One OTLP ExportTraceServiceRequest holding the spans."""
    pb_spans = []
    for s in spans:
        pb = trace_pb2.Span(
            trace_id=bytes.fromhex(s.trace_id), span_id=bytes.fromhex(s.span_id),
            name=s.name, kind=s.kind, start_time_unix_nano=int(s.start * 1e9),
            end_time_unix_nano=int(max(s.end, s.start) * 1e9), attributes=_attrs(s.attributes),
            status=trace_pb2.Status(code=ERROR if s.error else OK, message=s.error or ""))
        if s.parent_id:
            pb.parent_span_id = bytes.fromhex(s.parent_id)
        for name, ts, attrs in s.events:
            pb.events.append(trace_pb2.Span.Event(name=name, time_unix_nano=int(ts * 1e9),
                                                  attributes=_attrs(attrs)))
        pb_spans.append(pb)
    resource = resource_pb2.Resource(attributes=_attrs({
        "service.name": service, "service.instance.id": device_id, "device.id": device_id}))
    req = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        resource=resource, scope_spans=[trace_pb2.ScopeSpans(
            scope=common_pb2.InstrumentationScope(name=SCOPE), spans=pb_spans)])])
    return req.SerializeToString()


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
                    "attributes": {a.key: getattr(a.value, a.value.WhichOneof("value"))
                                   for a in s.attributes},
                    "events": [e.name for e in s.events]})
    return out
