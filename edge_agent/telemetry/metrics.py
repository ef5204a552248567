"""Metrics computed from the durable records, exported like spans (outbox and OTLP).

Nothing is counted on the hot path: every interval, the daemon reads what was committed
since the last collection (steps, tool calls, approvals, model turns, the outbox) and
encodes one OTLP ExportMetricsServiceRequest into the outbox's `metrics` stream (which may
drop its oldest under pressure), and to the OTLP endpoint when one is configured.

Metrics: edge_agent.step.duration (histogram, s, by node kind and status),
edge_agent.tool.calls (sum, by tool and outcome), edge_agent.retries,
edge_agent.escalations, edge_agent.outbox.pending / .oldest_age (gauges, by stream),
edge_agent.sync.lag (gauge, s), and for model turns the OpenTelemetry GenAI conventions'
histograms: gen_ai.client.token.usage ({token}, by gen_ai.token.type input/output),
gen_ai.client.operation.duration, gen_ai.server.time_to_first_token and
gen_ai.server.time_per_output_token (s), each by gen_ai.operation.name,
gen_ai.provider.name and gen_ai.request.model.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from typing import Any

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from sync.dbapi import Connection

DURATION_BOUNDS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60]
# the bucket boundaries the GenAI conventions advise for each instrument
TOKEN_BOUNDS: list[float] = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                16777216, 67108864]
OPERATION_BOUNDS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92]
TTFT_BOUNDS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
               5.0, 7.5, 10.0]
TPOT_BOUNDS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA


def _attrs(d: dict[str, Any]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=str(v)))
            for k, v in sorted(d.items())]


class _Hist:
    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.n = 0

    def add(self, v: float) -> None:
        self.n += 1
        self.sum += v
        i = next((i for i, b in enumerate(self.bounds) if v <= b), len(self.bounds))
        self.counts[i] += 1


class _GenAi:
    """Model turns as the GenAI conventions' histograms, keyed by their attributes."""

    def __init__(self) -> None:
        self.tokens: dict[tuple[str, str, str], _Hist] = {}
        self.duration: dict[tuple[str, str], _Hist] = {}
        self.ttft: dict[tuple[str, str], _Hist] = {}
        self.tpot: dict[tuple[str, str], _Hist] = {}

    def add(self, comp: dict[str, Any]) -> None:
        key = (str(comp.get("provider") or "unknown"), str(comp["model"]))
        out = int(comp.get("completion_tokens") or 0)
        for kind, n in (("input", comp.get("prompt_tokens")), ("output", out)):
            if n is not None:
                self.tokens.setdefault((*key, kind), _Hist(TOKEN_BOUNDS)).add(float(n))
        ttft = float(comp.get("ttft_s") or 0)
        tps = float(comp.get("tokens_per_s") or 0)
        self.ttft.setdefault(key, _Hist(TTFT_BOUNDS)).add(ttft)
        if tps > 0:
            self.tpot.setdefault(key, _Hist(TPOT_BOUNDS)).add(1 / tps)
        self.duration.setdefault(key, _Hist(OPERATION_BOUNDS)).add(
            ttft + (out / tps if tps > 0 else 0))

    @staticmethod
    def _attrs(provider: str, model: str) -> dict[str, Any]:
        return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
                "gen_ai.request.model": model}

    def metrics(self) -> list[tuple[str, str, list[tuple[dict[str, Any], _Hist]]]]:
        return [
            ("gen_ai.client.token.usage", "{token}",
             [({**self._attrs(p, m), "gen_ai.token.type": t}, h)
              for (p, m, t), h in self.tokens.items()]),
            ("gen_ai.client.operation.duration", "s",
             [(self._attrs(*k), h) for k, h in self.duration.items()]),
            ("gen_ai.server.time_to_first_token", "s",
             [(self._attrs(*k), h) for k, h in self.ttft.items()]),
            ("gen_ai.server.time_per_output_token", "s",
             [(self._attrs(*k), h) for k, h in self.tpot.items()]),
        ]


class MetricsCollector:
    """Collects deltas since the previous call, from the store."""

    def __init__(self, *, device_id: str, service: str = "edge-agent") -> None:
        self.device_id = device_id
        self.service = service
        self.last_step = 0
        self.last_call = 0
        self.since = time.time()

    def collect(self, conn: Connection, sync_lag_s: float | None = None) -> bytes:
        now = time.time()
        durations: dict[tuple[str, str], _Hist] = defaultdict(lambda: _Hist(DURATION_BOUNDS))
        retries = 0
        calls: Counter[tuple[str, str]] = Counter()
        for sid, node, status, started, finished, _kind, tool in conn.execute(
                "SELECT id, node, status, started_at, finished_at, error_kind, tool FROM steps"
                " WHERE id > ? ORDER BY id", (self.last_step,)):
            self.last_step = sid
            durations[(node, status)].add(max(0.0, finished - started))
            retries += status == "failed"
            if tool is not None:  # an idempotent call journaled in its step row
                calls[(tool, "ok" if status == "completed" else "error")] += 1
        for cid, tool, status in conn.execute(
                "SELECT id, tool, status FROM tool_calls WHERE id > ? AND status != 'intent'"
                " AND status != 'requested' ORDER BY id", (self.last_call,)):
            self.last_call = cid
            calls[(tool, status)] += 1
        escalations = conn.execute(
            "SELECT count(*) FROM approvals WHERE kind != 'gate' AND created_at > ?",
            (self.since,)).fetchone()[0]
        genai = _GenAi()
        for (value,) in conn.execute("SELECT value FROM memo WHERE created_at > ?",
                                     (self.since,)):
            comp = (json.loads(value) or {}).get("completion") or {}
            if comp.get("model"):
                genai.add(comp)
        outbox = conn.execute("SELECT stream, pending_count, acked_seq FROM outbox_streams"
                              ).fetchall()
        oldest = {s: conn.execute("SELECT min(created_at) FROM outbox WHERE stream = ? AND"
                                  " seq > ?", (s, a)).fetchone()[0] for s, _, a in outbox}
        start_ns, now_ns = int(self.since * 1e9), int(now * 1e9)
        self.since = now
        metrics = [
            self._hist("edge_agent.step.duration", "s", start_ns, now_ns,
                       {f"{n}|{s}": h for (n, s), h in durations.items()},
                       ("edge_agent.node", "edge_agent.step_status")),
            self._sum("edge_agent.tool.calls", start_ns, now_ns,
                      [({"edge_agent.tool": t, "edge_agent.outcome": o}, c)
                       for (t, o), c in calls.items()]),
            self._sum("edge_agent.retries", start_ns, now_ns, [({}, retries)]),
            self._sum("edge_agent.escalations", start_ns, now_ns, [({}, escalations)]),
            self._gauge("edge_agent.outbox.pending", now_ns,
                        [({"edge_agent.stream": s}, float(p)) for s, p, _ in outbox]),
            self._gauge("edge_agent.outbox.oldest_age", now_ns,
                        [({"edge_agent.stream": s}, 0.0 if o is None else now - o)
                         for s, o in oldest.items()], unit="s"),
            *(self._hist_points(name, unit, start_ns, now_ns, points)
              for name, unit, points in genai.metrics()),
        ]
        if sync_lag_s is not None:
            metrics.append(self._gauge("edge_agent.sync.lag", now_ns, [({}, sync_lag_s)],
                                       unit="s"))
        req = metrics_service_pb2.ExportMetricsServiceRequest(resource_metrics=[
            metrics_pb2.ResourceMetrics(
                resource=resource_pb2.Resource(attributes=_attrs({
                    "service.name": self.service, "device.id": self.device_id})),
                scope_metrics=[metrics_pb2.ScopeMetrics(metrics=metrics)])])
        return bytes(req.SerializeToString())

    def _sum(self, name: str, start: int, now: int,
             points: list[tuple[dict[str, Any], int]]) -> metrics_pb2.Metric:
        return metrics_pb2.Metric(name=name, sum=metrics_pb2.Sum(
            aggregation_temporality=CUMULATIVE, is_monotonic=True, data_points=[
                metrics_pb2.NumberDataPoint(attributes=_attrs(a), start_time_unix_nano=start,
                                            time_unix_nano=now, as_int=int(v))
                for a, v in points]))

    def _gauge(self, name: str, now: int, points: list[tuple[dict[str, Any], float]],
               unit: str = "1") -> metrics_pb2.Metric:
        return metrics_pb2.Metric(name=name, unit=unit, gauge=metrics_pb2.Gauge(data_points=[
            metrics_pb2.NumberDataPoint(attributes=_attrs(a), time_unix_nano=now, as_double=v)
            for a, v in points]))

    def _hist_points(self, name: str, unit: str, start: int, now: int,
                     points: list[tuple[dict[str, Any], _Hist]]) -> metrics_pb2.Metric:
        return metrics_pb2.Metric(name=name, unit=unit, histogram=metrics_pb2.Histogram(
            aggregation_temporality=CUMULATIVE, data_points=[
                metrics_pb2.HistogramDataPoint(
                    attributes=_attrs(a), start_time_unix_nano=start, time_unix_nano=now,
                    count=h.n, sum=h.sum, bucket_counts=h.counts, explicit_bounds=h.bounds)
                for a, h in points]))

    def _hist(self, name: str, unit: str, start: int, now: int, hists: dict[Any, _Hist],
              keys: tuple[str, ...]) -> metrics_pb2.Metric:
        points = []
        for label, h in hists.items():
            values = str(label).split("|")
            points.append(metrics_pb2.HistogramDataPoint(
                attributes=_attrs(dict(zip(keys, values, strict=False))), start_time_unix_nano=start,
                time_unix_nano=now, count=h.n, sum=h.sum, bucket_counts=h.counts,
                explicit_bounds=h.bounds))
        return metrics_pb2.Metric(name=name, unit=unit, histogram=metrics_pb2.Histogram(
            aggregation_temporality=CUMULATIVE, data_points=points))


def decode(payload: bytes) -> dict[str, Any]:
    """Metric name -> data points as dicts (tests, the CLI)."""
    req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(payload)
    out: dict[str, Any] = {}
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                points = getattr(m, kind).data_points
                out[m.name] = [{"attributes": {a.key: a.value.string_value
                                               for a in p.attributes},
                                **({"count": p.count, "sum": p.sum} if kind == "histogram"
                                   else {"value": p.as_int if p.WhichOneof("value") ==
                                         "as_int" else p.as_double})}
                               for p in points]
    return out
