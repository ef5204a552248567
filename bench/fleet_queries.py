"""The operator's queries on a large fleet: PostgreSQL filled with DEVICES x RUNS projected
runs (default 1,000 x 1,000), each with its checkpoint records, then the views the
CLI and the console call, timed (median and p95 of repeated calls after a warm-up):

  runs --status failed --since 1h   views.runs(status="failed", since=now - 3600)
  runs (the console's first page)   views.runs()
  runs --device D                    views.runs(device=D)
  approvals                          views.approvals()   (one pending gate per device)
  trace                              views.trace(device, run_id)
  devices                            views.devices()     (runs by status of every device)

Rows are written straight into `records` (4 checkpoints a run, msgpack as a device writes
them) and the projection's `fleet_runs` with generate_series (the store's own migrations
made the tables and indexes), with the per-device counters by status the projection keeps
beside them (`fleet_device_runs`): the ingest's cost is bench.fleet's (and
bench.projection_cost's). For reference, `devices by counting runs` times the count over
every run that the devices view made before those counters. Every
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
REFERENCE = "devices by counting runs"  # what `devices` did before its counters: no goal

FILL = (
    """INSERT INTO fleet_runs (device, epoch, run_id, workflow, version, origin, status, node,
        error, queued_at, started_at, updated_at, finished_at, steps, retries, conflicts,
        seqs, head, gates, approval_id, approval_node, approval_visit, approval_kind,
        approval_prompt, approval_at, approval_expires_at)
    SELECT 'dev-' || lpad(d::text, 5, '0'), 'e0', 'r-' || r, 'wf-' || (r %% 5), 'v1', 'local',
        CASE WHEN r = 0 THEN 'waiting_approval' WHEN r %% 50 = 1 THEN 'failed'
             ELSE 'completed' END,
        CASE WHEN r = 0 THEN 'gate' ELSE NULL END,
        CASE WHEN r %% 50 = 1 THEN 'tool press failed: timeout after 5s' ELSE NULL END,
        %(now)s - r * 2592 - d - 60, %(now)s - r * 2592 - d - 50, %(now)s - r * 2592 - d,
        CASE WHEN r = 0 THEN NULL ELSE %(now)s - r * 2592 - d END, 3, 1, 0,
        '{"checkpoints": [' || (r * 4 + 1) || ', ' || (r * 4 + 4) || ']}', '{}', '{}',
        CASE WHEN r = 0 THEN 1 END, CASE WHEN r = 0 THEN 'gate' END,
        CASE WHEN r = 0 THEN 1 END, CASE WHEN r = 0 THEN 'approval' END,
        CASE WHEN r = 0 THEN 'Ship lot ' || d || '?' END,
        CASE WHEN r = 0 THEN %(now)s - d END, NULL
    FROM generate_series(0, %(devices)s - 1) d, generate_series(0, %(runs)s - 1) r""",
    # the records themselves (the truth a trace reads back): 4 checkpoints a run, each a
    # msgpack map {run_id, node, attempt, ts} as a device writes it
    """INSERT INTO records (device, epoch, stream, seq, kind, payload, created_at,
        received_at)
    SELECT 'dev-' || lpad(d::text, 5, '0'), 'e0', 'checkpoints', r * 4 + k + 1,
        (ARRAY['run.started', 'step.completed', 'step.retry', 'run.finished'])[k + 1],
        decode('84a6' || encode('run_id', 'hex') || to_hex(160 + length('r-' || r))
               || encode(('r-' || r)::bytea, 'hex') || 'a4' || encode('node', 'hex') || 'a2'
               || encode(('n' || k)::bytea, 'hex') || 'a7' || encode('attempt', 'hex')
               || '01a2' || encode('ts', 'hex') || 'cb', 'hex')
            || float8send(%(now)s - r * 2592 - d - 50 + k),
        %(now)s - r * 2592 - d - 50 + k, %(now)s - r * 2592 - d - 50 + k
    FROM generate_series(0, %(devices)s - 1) d, generate_series(0, %(runs)s - 1) r,
         generate_series(0, 3) k""",
    # each device's runs by status, as the projection keeps them with the rows
    """INSERT INTO fleet_device_runs (device, status, count)
    SELECT device, status, count(*) FROM fleet_runs GROUP BY device, status""",
    "ANALYZE",
)
# the devices, their epoch and streams, as the store keeps them (bench.console_page adds
# its own)
DEVICES = (
    """INSERT INTO devices (device, first_seen, last_seen, online)
    SELECT 'dev-' || lpad(d::text, 5, '0'), %(now)s - 2592000, %(now)s - d, d %% 10 <> 0
    FROM generate_series(0, %(devices)s - 1) d""",
    """INSERT INTO epochs (device, epoch, first_seen, protocol)
    SELECT device, 'e0', first_seen, 2 FROM devices""",
    """INSERT INTO streams (device, epoch, stream, received_seq, acked_seq, last_created_at)
    SELECT device, 'e0', s, %(runs)s * 4, %(runs)s * 4, last_seen
    FROM devices, unnest(ARRAY['checkpoints', 'control', 'traces']) s""",
)
COUNT_RUNS = """SELECT device, status, count(*) FROM fleet_runs WHERE queued_at IS NOT NULL OR
    started_at IS NOT NULL GROUP BY device, status"""


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


def count_runs(store: Any) -> list[Any]:
    with store.tx() as c:
        return list(c.execute(COUNT_RUNS).fetchall())


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
                for sql in DEVICES + FILL:
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
                    "trace": lambda: views.trace(store, device, rid),
                    "devices": lambda: views.devices(store),
                    "devices by counting runs": lambda: count_runs(store)}
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
        verdict = "reference" if name == REFERENCE else "ok" if out["median_ms"][
            name] < GOAL_MS else "OVER"
        print(f"{name:36} {out['rows'][name]:6d} {out['median_ms'][name]:7.2f}ms "
              f"{out['p95_ms'][name]:7.2f}ms  {verdict}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
