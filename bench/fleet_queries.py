"""The operator's queries on a large fleet: PostgreSQL filled with DEVICES x RUNS projected
runs (default 1,000 x 1,000), each with its checkpoint events and spans, then the views the
CLI and the console call, timed (median and p95 of repeated calls after a warm-up):

  runs --status failed --since 1h   views.runs(status="failed", since=now - 3600)
  runs (the console's first page)   views.runs()
  runs --device D                    views.runs(device=D)
  approvals                          views.approvals()   (one pending gate per device)
  trace                              views.trace(device, run_id)

Rows are written straight into the projection's tables with generate_series (the store's
own migrations made them, with their indexes): the ingest's cost is bench.fleet's. Every
device has one run waiting at a gate, one failed 43 minutes ago, the rest completed over
30 days. PostgreSQL at its defaults except fsync (nothing here measures a commit).

Run: python -m bench.fleet_queries [--devices 1000] [--runs 1000] [--repeat 21]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.postgres import Postgres

from bench.fleet import fresh_db

GOAL_MS = 100.0

FILL = (
    """INSERT INTO fleet_runs (device, epoch, run_id, workflow, version, origin, status, node,
        error, queued_at, started_at, updated_at, finished_at, steps, retries, head, gates,
        approval_id, approval_node, approval_visit, approval_kind, approval_prompt,
        approval_at, approval_expires_at)
    SELECT 'dev-' || lpad(d::text, 5, '0'), 'e0', 'r-' || r, 'wf-' || (r %% 5), 'v1', 'local',
        CASE WHEN r = 0 THEN 'waiting_approval' WHEN r %% 50 = 1 THEN 'failed'
             ELSE 'completed' END,
        CASE WHEN r = 0 THEN 'gate' ELSE NULL END,
        CASE WHEN r %% 50 = 1 THEN 'tool press failed: timeout after 5s' ELSE NULL END,
        %(now)s - r * 2592 - d - 60, %(now)s - r * 2592 - d - 50, %(now)s - r * 2592 - d,
        CASE WHEN r = 0 THEN NULL ELSE %(now)s - r * 2592 - d END, 3, r %% 3, '{}', '{}',
        CASE WHEN r = 0 THEN 1 END, CASE WHEN r = 0 THEN 'gate' END,
        CASE WHEN r = 0 THEN 1 END, CASE WHEN r = 0 THEN 'approval' END,
        CASE WHEN r = 0 THEN 'Ship lot ' || d || '?' END,
        CASE WHEN r = 0 THEN %(now)s - d END, NULL
    FROM generate_series(0, %(devices)s - 1) d, generate_series(0, %(runs)s - 1) r""",
    """INSERT INTO fleet_events (device, epoch, stream, seq, run_id, kind, ts, data)
    SELECT 'dev-' || lpad(d::text, 5, '0'), 'e0', 'checkpoints', r * 4 + k, 'r-' || r,
        (ARRAY['run.started', 'step.completed', 'step.retry', 'run.finished'])[k + 1],
        %(now)s - r * 2592 - d - 50 + k,
        '{"node": "n' || k || '", "visit": 1, "attempt": 1, "status": "completed"}'
    FROM generate_series(0, %(devices)s - 1) d, generate_series(0, %(runs)s - 1) r,
         generate_series(0, 3) k""",
    """INSERT INTO fleet_spans (device, trace_id, span_id, parent_id, run_id, name, start_s,
        end_s, attrs)
    SELECT 'dev-' || lpad(d::text, 5, '0'), md5(d || '-' || r), md5(d || '-' || r || '-' || k),
        CASE WHEN k = 0 THEN NULL ELSE md5(d || '-' || r || '-0') END, 'r-' || r,
        CASE WHEN k = 0 THEN 'run wf' ELSE 'step n' || k END,
        %(now)s - r * 2592 - d - 50 + k, %(now)s - r * 2592 - d - 49 + k,
        CASE WHEN k = 0 THEN '{"edge_agent.run_id": "r-' || r || '"}'
             ELSE '{"edge_agent.node": "n' || k || '", "edge_agent.attempt": 1}' END
    FROM generate_series(0, %(devices)s - 1) d, generate_series(0, %(runs)s - 1) r,
         generate_series(0, 2) k""",
    "ANALYZE",
)


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    for _ in range(3):
        fn()
    ms = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1000)
    ms.sort()
    return {"median": statistics.median(ms), "p95": ms[min(len(ms) - 1,
                                                          int(len(ms) * 0.95))]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=21)
    a = ap.parse_args()
    import psycopg

    from sync.cloud import views
    from sync.cloud.store import SqlCloudStore
    out: dict[str, Any] = {"devices": a.devices, "runs": a.runs}
    with tempfile.TemporaryDirectory():
        pg = Postgres().start()
        try:
            url = fresh_db(pg, "fleetq")
            SqlCloudStore(url).close()  # the migrations: tables and indexes
            now = time.time()
            t = time.perf_counter()
            with psycopg.connect(url, autocommit=True) as c:
                for sql in FILL:
                    c.execute(sql, {"now": now, "devices": a.devices, "runs": a.runs})
            out["fill_s"] = time.perf_counter() - t
            store = SqlCloudStore(url)
            try:
                device, rid = f"dev-{a.devices // 2:05d}", "r-1"
                checks = {
                    "runs --status failed --since 1h": lambda: views.runs(
                        store, status="failed", since=time.time() - 3600),
                    "runs": lambda: views.runs(store),
                    "runs --device D": lambda: views.runs(store, device=device),
                    "approvals": lambda: views.approvals(store),
                    "trace": lambda: views.trace(store, device, rid)}
                got = {name: fn() for name, fn in checks.items()}
                out["rows"] = {name: len(v) if isinstance(v, list) else len(v["steps"])
                               for name, v in got.items()}
                times = {name: timed(fn, a.repeat) for name, fn in checks.items()}
            finally:
                store.close()
        finally:
            pg.stop()
    out["median_ms"] = {k: round(v["median"], 2) for k, v in times.items()}
    out["p95_ms"] = {k: round(v["p95"], 2) for k, v in times.items()}
    print(f"fleet queries: {a.devices:,} devices x {a.runs:,} runs in PostgreSQL "
          f"(filled in {out['fill_s']:.0f}s)")
    print(f"{'query':36} {'rows':>6} {'median':>9} {'p95':>9}  goal {GOAL_MS:.0f} ms")
    for name in checks:
        print(f"{name:36} {out['rows'][name]:6d} {out['median_ms'][name]:7.2f}ms "
              f"{out['p95_ms'][name]:7.2f}ms  "
              f"{'ok' if out['median_ms'][name] < GOAL_MS else 'OVER'}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
