"""OTLP/HTTP export: the project's exporter (sync/otlp.py, fed the protobuf the durable records
already hold) against the package opentelemetry-exporter-otlp-proto-http fed through its
public API (SDK `ReadableSpan`s built from the same spans; `export()` takes nothing else),
on the same 1,000 spans: CPU per 1,000 spans, bytes on the wire, what each does under a 503
and a slow collector, and which `OTEL_EXPORTER_OTLP_*` variables each honours.

The collector runs in a process of its own, so the CPU figures are the exporters' alone.
Run: .venv/bin/python -m bench.otlp_exporters   (about 20 s; needs the package installed:
pip install opentelemetry-exporter-otlp-proto-http)
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edge_agent.telemetry.spans import CLIENT, Span, decode, encode
from sync.otlp import OtlpHttpExporter

SPANS, BATCH, ROUNDS = 1000, 100, 5
HOLD_S = 6.0  # the longest the bench waits for an export() that holds its caller
SERVICE, DEVICE = "edge-agent", "bench-device"


# the collector (its own process) ---------------------------------------------------------------
def collector() -> None:
    """Answers POSTs by the first path segment: /503/... always 503, /slow/... after 2 s,
    anything else 200; GET /stats tells what arrived, GET /reset forgets it."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/reset":
                seen.clear()
            spans = sorted(json.dumps(s, sort_keys=True) for r in seen for s in r["spans"])
            body = json.dumps({
                "requests": [{k: v for k, v in r.items() if k != "spans"} for r in seen],
                "spans": len(spans),
                "digest": hashlib.sha256("\n".join(spans).encode()).hexdigest()[:16]}).encode()
            self._answer(200, body)

        def do_POST(self) -> None:
            wire = self.rfile.read(int(self.headers["Content-Length"]))
            raw = gzip.decompress(wire) if self.headers.get("Content-Encoding") == "gzip" \
                else wire
            mode = self.path.strip("/").split("/")[0]
            seen.append({"path": self.path, "wire": len(wire), "raw": len(raw),
                         "encoding": self.headers.get("Content-Encoding"),
                         "headers": {k.lower(): v for k, v in self.headers.items()
                                     if k.lower().startswith("x-")},
                         "spans": [] if mode in ("503", "slow") else decode(raw)})
            if mode == "slow":
                time.sleep(2.0)
            self._answer(503 if mode == "503" else 200, b"")

        def _answer(self, status: int, body: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the exporter stopped waiting (its timeout)

        def log_message(self, *args: Any) -> None:
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


class Collector:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.otlp_exporters",
                                      "collector"], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.base = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def stats(self, reset: bool = False) -> dict[str, Any]:
        with urllib.request.urlopen(self.base + ("/reset" if reset else "/stats")) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


# the same spans for both -----------------------------------------------------------------------
def spans() -> list[Span]:
    """Traces of ten spans as derive.py makes them: a run, steps, a model call with GenAI
    attributes and an event, one step in five failed."""
    out = []
    for t in range(SPANS // 10):
        trace, root = f"{t + 1:032x}", f"{t + 1:08x}00000000"
        at = 1.79e9 + t
        out.append(Span(trace, root, None, "run inspect", at, at + 9,
                        {"edge_agent.run_id": f"run-{t}", "edge_agent.workflow": "inspect"}))
        for i in range(1, 10):
            out.append(Span(
                trace, f"{t + 1:08x}{i:08x}", root, f"step node{i}", at + i - 1, at + i,
                {"edge_agent.run_id": f"run-{t}", "edge_agent.node": f"node{i}",
                 "edge_agent.attempt": 1, "gen_ai.usage.input_tokens": 120 + i,
                 "gen_ai.request.model": "qwen2.5-0.5b-instruct-q4_k_m"},
                error="timeout after 5s" if i % 5 == 0 else None,
                events=[("gen_ai.choice", at + i - 0.5, {"index": 0})] if i == 3 else [],
                kind=CLIENT if i == 3 else 1))
    return out


def batches(items: list[Span]) -> list[list[Span]]:
    return [items[i:i + BATCH] for i in range(0, len(items), BATCH)]


def readable(batch: list[Span]) -> list[Any]:
    """The package's input: SDK ReadableSpans, built from the spans the records hold."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
    resource = Resource({"service.name": SERVICE, "service.instance.id": DEVICE,
                         "device.id": DEVICE})
    scope = InstrumentationScope("edge_agent")
    flags = TraceFlags(TraceFlags.SAMPLED)
    out = []
    for s in batch:
        trace = int(s.trace_id, 16)
        out.append(ReadableSpan(
            name=s.name, context=SpanContext(trace, int(s.span_id, 16), False, flags),
            parent=SpanContext(trace, int(s.parent_id, 16), False, flags) if s.parent_id
            else None, resource=resource, instrumentation_scope=scope,
            attributes={k: v for k, v in s.attributes.items() if v is not None},
            events=[Event(n, a, int(ts * 1e9)) for n, ts, a in s.events],
            kind=SpanKind.CLIENT if s.kind == CLIENT else SpanKind.INTERNAL,
            status=Status(StatusCode.ERROR, s.error) if s.error else Status(StatusCode.OK),
            start_time=int(s.start * 1e9), end_time=int(max(s.end, s.start) * 1e9)))
    return out


@contextmanager
def environ(env: Mapping[str, str]) -> Iterator[None]:
    """The package reads os.environ when it is built."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
    for k in saved:
        del os.environ[k]
    os.environ.update(env)
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.startswith("OTEL_")]:
            del os.environ[k]
        os.environ.update(saved)


def package(env: Mapping[str, str]) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    with environ(env):
        return OTLPSpanExporter()


def ours(env: Mapping[str, str]) -> OtlpHttpExporter:
    return OtlpHttpExporter(environ=dict(env))


def wait_until(cond: Callable[[], bool], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("the exporter did not finish")
        time.sleep(0.002)


# the measurements -------------------------------------------------------------------------------
def cpu(c: Collector, env: Mapping[str, str]) -> dict[str, Any]:
    """Process CPU per 1,000 spans (the exporter's thread included), median of ROUNDS."""
    data = batches(spans())
    payloads = [encode(b, service=SERVICE, device_id=DEVICE) for b in data]
    out: dict[str, Any] = {}

    def ours_round(with_encode: bool) -> float:
        exp = ours(env)
        try:
            t = time.process_time()
            for b, p in zip(data, payloads, strict=True):
                exp(encode(b, service=SERVICE, device_id=DEVICE) if with_encode else p)
            wait_until(lambda: exp.sent + exp.dropped == len(data))
            assert exp.dropped == 0
            return (time.process_time() - t) * 1000
        finally:
            exp.shutdown()

    def package_round() -> float:
        exp = package(env)
        try:
            t = time.process_time()
            for b in data:
                result = exp.export(readable(b))
                assert result.name == "SUCCESS", result
            return (time.process_time() - t) * 1000
        finally:
            exp.shutdown()

    rounds: list[tuple[str, Callable[[], float]]] = [
        ("ours_ms", lambda: ours_round(False)), ("ours_with_encode_ms", lambda: ours_round(True)),
        ("package_ms", package_round)]
    for name, fn in rounds:
        fn()  # warm: imports, first connection
        c.stats(reset=True)
        runs = [fn() for _ in range(ROUNDS)]
        got = c.stats()
        out[name] = statistics.median(runs)
        out[name.replace("_ms", "_bytes")] = sum(r["wire"] for r in got["requests"]) // ROUNDS
        out[name.replace("_ms", "_raw_bytes")] = sum(r["raw"] for r in got["requests"]) // ROUNDS
        out[name.replace("_ms", "_digest")] = got["digest"]
    return out


def failure(c: Collector, mode: str, timeout_ms: int) -> dict[str, Any]:
    """One payload against a collector that answers 503, or answers after 2 s: attempts,
    seconds until the exporter gives up, seconds the caller was held."""
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{c.base}/{mode}/v1/traces",
           "OTEL_EXPORTER_OTLP_TIMEOUT": str(timeout_ms)}
    batch = batches(spans())[0]
    out: dict[str, Any] = {}
    c.stats(reset=True)
    exp = ours(env)
    try:
        t = time.monotonic()
        exp(encode(batch, service=SERVICE, device_id=DEVICE))
        held = time.monotonic() - t
        wait_until(lambda: exp.sent + exp.dropped == 1)
        out["ours"] = {"attempts": len(c.stats()["requests"]), "gave_up_s":
                       round(time.monotonic() - t, 2), "caller_held_s": round(held, 3),
                       "delivered": exp.sent == 1}
    finally:
        exp.shutdown()
    c.stats(reset=True)
    pkg = package(env)
    results: list[Any] = []
    call = threading.Thread(target=lambda: results.append(pkg.export(readable(batch))))
    t = time.monotonic()
    call.start()
    call.join(HOLD_S)  # export() holds its caller; past HOLD_S the bench stops waiting
    held = time.monotonic() - t
    out["package"] = {"attempts": len(c.stats()["requests"]),
                      "gave_up_s": round(held, 2) if results else None,
                      "caller_held_s": round(held, 3) if results else f"> {HOLD_S:g}",
                      "delivered": bool(results) and results[0].name == "SUCCESS"}
    pkg.shutdown()  # ends a retry wait at once
    call.join(10)
    time.sleep(2.1 if mode == "slow" else 0)  # let the collector's slow answers end
    return out


def footprint() -> dict[str, float]:
    """What importing the package adds to a process that holds the project's own telemetry
    (as the daemon does): seconds and resident MB."""
    code = ("import time\n"
            "def rss():\n"
            "    return int(next(x for x in open('/proc/self/status')"
            " if x.startswith('VmRSS')).split()[1]) / 1024\n"
            "import edge_agent.telemetry.spans, sync.otlp\n"
            "a, t = rss(), time.perf_counter()\n"
            "import opentelemetry.exporter.otlp.proto.http.trace_exporter\n"
            "print(time.perf_counter() - t, rss() - a)\n")
    took, mb = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.split()
    return {"import_s": round(float(took), 3), "added_rss_mb": round(float(mb), 1)}


VARIABLES: list[tuple[str, Callable[[str], dict[str, str]], Callable[[dict[str, Any]], bool]]] = [
    ("OTEL_EXPORTER_OTLP_ENDPOINT (base + /v1/traces)",
     lambda b: {"OTEL_EXPORTER_OTLP_ENDPOINT": f"{b}/base"},
     lambda r: r["path"] == "/base/v1/traces"),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (as it is)",
     lambda b: {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{b}/ok/custom"},
     lambda r: r["path"] == "/ok/custom"),
    ("OTEL_EXPORTER_OTLP_HEADERS (URL-encoded values)",
     lambda b: {"OTEL_EXPORTER_OTLP_ENDPOINT": b, "OTEL_EXPORTER_OTLP_HEADERS": "x-a=1%202"},
     lambda r: r["headers"].get("x-a") == "1 2"),
    ("OTEL_EXPORTER_OTLP_TRACES_HEADERS (replaces the general)",
     lambda b: {"OTEL_EXPORTER_OTLP_ENDPOINT": b, "OTEL_EXPORTER_OTLP_HEADERS": "x-a=1",
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-b=2"},
     lambda r: r["headers"] == {"x-b": "2"}),
    ("OTEL_EXPORTER_OTLP_COMPRESSION=gzip",
     lambda b: {"OTEL_EXPORTER_OTLP_ENDPOINT": b, "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"},
     lambda r: r["encoding"] == "gzip"),
    ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION=none",
     lambda b: {"OTEL_EXPORTER_OTLP_ENDPOINT": b, "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
                "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "none"},
     lambda r: r["encoding"] is None),
]


def variables(c: Collector) -> dict[str, dict[str, bool]]:
    batch = batches(spans())[0]
    out = {}
    for name, env_of, ok in VARIABLES:
        env = env_of(c.base)
        seen = {}
        c.stats(reset=True)
        exp = ours(env)
        try:
            exp(encode(batch, service=SERVICE, device_id=DEVICE))
            wait_until(lambda exp=exp: exp.sent + exp.dropped == 1)  # type: ignore[misc]
        finally:
            exp.shutdown()
        seen["ours"] = ok(c.stats()["requests"][-1])
        c.stats(reset=True)
        pkg = package(env)
        try:
            pkg.export(readable(batch))
        finally:
            pkg.shutdown()
        seen["package"] = ok(c.stats()["requests"][-1])
        out[name] = seen
    return out


def main() -> None:
    c = Collector()
    try:
        gz = {"OTEL_EXPORTER_OTLP_ENDPOINT": c.base, "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}
        result: dict[str, Any] = cpu(c, gz)
        result["same_spans_arrive"] = result["ours_digest"] == result["package_digest"]
        result["under_503"] = failure(c, "503", 3000)
        result["slow_collector"] = failure(c, "slow", 1000)
        result["variables"] = variables(c)
        result["variables"]["OTEL_EXPORTER_OTLP_TIMEOUT (milliseconds)"] = {
            who: result["slow_collector"][who]["gave_up_s"] is not None
            and result["slow_collector"][who]["gave_up_s"] < 1.5 for who in ("ours", "package")}
        result["package_import"] = footprint()
    finally:
        c.close()
    r = result
    print(f"{SPANS} spans in batches of {BATCH}, gzip, median of {ROUNDS} rounds (process CPU)")
    print(f"  ours, records' protobuf as it is: {r['ours_ms']:.1f} ms CPU, "
          f"{r['ours_bytes']:,} bytes on the wire ({r['ours_raw_bytes']:,} before gzip)")
    print(f"  ours, encoding the spans too:     {r['ours_with_encode_ms']:.1f} ms CPU")
    print(f"  package (ReadableSpans built):    {r['package_ms']:.1f} ms CPU, "
          f"{r['package_bytes']:,} bytes on the wire ({r['package_raw_bytes']:,} before gzip)")
    print(f"  same spans arrive: {r['same_spans_arrive']}")
    for case in ("under_503", "slow_collector"):
        for who in ("ours", "package"):
            print(f"  {case} ({who}): {r[case][who]}")
    print(f"  importing the package beside the project's telemetry: {r['package_import']}")
    for name, seen in r["variables"].items():
        print(f"  {name}: ours {seen['ours']}, package {seen['package']}")
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1:] == ["collector"]:
        collector()
    elif importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is None:
        print("skipped: pip install opentelemetry-exporter-otlp-proto-http (the dev extra)")
    else:
        main()
