"""The console's pages over a large fleet: the runs page must render in under 300 ms.

On PostgreSQL the projection is filled with bench.fleet_queries' data (DEVICES x RUNS runs
with their checkpoint events and spans: one run per device waiting at a gate, 1 in 50
failed, the rest completed over 30 days); on SQLite (--sqlite, and the test) with one
INSERT ... SELECT of the same shape. The devices and their epochs are added for the devices
page. Each page is then timed as the server renders it (the view's query and the template)
through Starlette's TestClient, logged in as an operator: the median and the slowest of
REPEAT renders, and one JSON line.

Run: python -m bench.console_page [--devices 1000] [--runs 1000] [--sqlite] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BUDGET_MS = 300.0
PAGES = ("/runs", "/runs?status=failed&since=1h", "/runs?device=dev-00007", "/approvals",
         "/devices", "/runs/dev-00007/r-1")
DEVICES = ("WITH RECURSIVE dd(d) AS (SELECT 0 UNION ALL SELECT d + 1 FROM dd WHERE d < {n})"
           " INSERT INTO {table} SELECT 'dev-' || substr('0000' || d, length('0000' || d) - 4, 5), {cols} FROM dd")
RUNS = """WITH RECURSIVE dd(d) AS (SELECT 0 UNION ALL SELECT d + 1 FROM dd WHERE d < {n}),
    rr(r) AS (SELECT 0 UNION ALL SELECT r + 1 FROM rr WHERE r < {m})
    INSERT INTO fleet_runs (device, epoch, run_id, workflow, version, origin, status, node,
        error, queued_at, started_at, updated_at, finished_at, steps, retries, approval_id,
        approval_node, approval_visit, approval_kind, approval_prompt, approval_at)
    SELECT 'dev-' || substr('0000' || d, length('0000' || d) - 4, 5), 'e0', 'r-' || r, 'wf-' || (r % 5), 'v1',
        'local', CASE WHEN r = 0 THEN 'waiting_approval' WHEN r % 50 = 1 THEN 'failed'
        ELSE 'completed' END, CASE WHEN r = 0 THEN 'gate' END,
        CASE WHEN r % 50 = 1 THEN 'tool press failed: timeout after 5s' END,
        {now} - r * 2592 - d - 60, {now} - r * 2592 - d - 50, {now} - r * 2592 - d,
        CASE WHEN r = 0 THEN NULL ELSE {now} - r * 2592 - d END, 3, r % 3,
        CASE WHEN r = 0 THEN 1 END, CASE WHEN r = 0 THEN 'gate' END,
        CASE WHEN r = 0 THEN 1 END, CASE WHEN r = 0 THEN 'approval' END,
        CASE WHEN r = 0 THEN 'Ship lot ' || d || '?' END, CASE WHEN r = 0 THEN {now} - d END
    FROM dd, rr"""


def fill(store: Any, devices: int, runs: int) -> None:
    """DEVICES x RUNS runs in the projection, and the devices with their epochs."""
    now = time.time()
    with store.tx() as c:
        c.execute(DEVICES.format(n=devices - 1, table="devices (device, first_seen, last_seen)",
                                 cols=f"{now - 86400}, {now}"))
        c.execute(DEVICES.format(n=devices - 1, table="epochs (device, epoch, first_seen,"
                                 " protocol)", cols=f"'e0', {now - 86400}, 2"))
        if store.dialect == "sqlite":
            c.execute(RUNS.format(n=devices - 1, m=runs - 1, now=now))
            return
        from bench.fleet_queries import FILL
        for sql in FILL:
            c.execute(sql, {"now": now, "devices": devices, "runs": runs})


def operator_client(store: Any, tmp: Path) -> Any:
    """A TestClient on the console, logged in through the form as an operator."""
    from starlette.testclient import TestClient

    from sync.cloud.console.app import Console
    from sync.cloud.console.fleet import Fleet
    from sync.cloud.console.tokens import TokenFile
    tokens = TokenFile(tmp / "tokens.json")
    token = tokens.add("bench", "operator")
    client = TestClient(Console(Fleet(store, lambda **kw: {}), tokens).app(),
                        base_url="http://127.0.0.1")
    csrf = re.findall(r'csrf-token" content="([^"]+)"', client.get("/login").text)[0]
    assert client.post("/login", data={"token": token, "csrf": csrf}).status_code == 200
    return client


def time_pages(client: Any, repeat: int) -> dict[str, dict[str, float]]:
    out = {}
    for page in PAGES:
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = client.get(page)
            samples.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, (page, r.status_code)
        out[page] = {"median_ms": round(statistics.median(samples), 1),
                     "max_ms": round(max(samples), 1), "bytes": len(r.content)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    a = ap.parse_args()
    from sync.cloud.store import SqlCloudStore
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pg = None
        if a.sqlite:
            url = f"sqlite:///{tmp / 'cloud.db'}"
        else:
            from support.postgres import Postgres, fresh_pg_url
            pg = Postgres().start()
            url = fresh_pg_url(pg)
        try:
            store = SqlCloudStore(url)
            t0 = time.perf_counter()
            fill(store, a.devices, a.runs)
            filled = time.perf_counter() - t0
            with operator_client(store, tmp) as client:
                pages = time_pages(client, a.repeat)
            store.close()
        finally:
            if pg is not None:
                pg.stop()
    backend = "SQLite" if a.sqlite else "PostgreSQL"
    print(f"console pages: {a.devices} devices x {a.runs} runs on {backend} (filled in"
          f" {filled:.1f}s); budget for /runs: {BUDGET_MS:.0f} ms")
    for page, r in pages.items():
        print(f"{page:34} median {r['median_ms']:7.1f} ms   max {r['max_ms']:7.1f} ms"
              f"   {r['bytes'] / 1024:6.1f} KiB")
    print(json.dumps({"devices": a.devices, "runs": a.runs, "backend": backend,
                      "pages": pages}))


if __name__ == "__main__":
    main()
