"""The console's pages over a large fleet: the runs page must render in under 300 ms.

Fills the projection of a fresh store with DEVICES x RUNS runs (one INSERT ... SELECT over
generated series, the same SQL on both stores: 1 in 20 failed, 1 in 200 waiting for a
person, the rest completed or running, spread over the last RUNS x DEVICES / 2 seconds),
then times each page as the server renders it (the view's query and the template) through
Starlette's TestClient, logged in as an operator. Prints the median and the slowest of
REPEAT renders per page, and one JSON line.

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
PAGES = ("/runs", "/runs?status=failed&since=1h", "/runs?device=dev-7", "/approvals",
         "/devices")
STATUS = ("CASE WHEN (r * 31 + d) % 20 = 0 THEN 'failed' WHEN (r * 31 + d) % 200 = 1 THEN"
          " 'waiting_approval' WHEN (r * 31 + d) % 20 = 2 THEN 'running' ELSE 'completed' END")


def gate(value: str) -> str:
    """A pending approval's column: set on the waiting runs only."""
    return f"CASE WHEN (r * 31 + d) % 200 = 1 THEN {value} END"


def fill(store: Any, devices: int, runs: int, now: float | None = None) -> None:
    """DEVICES x RUNS rows in fleet_runs, and the devices and their epochs."""
    now = time.time() if now is None else now
    series = (f"WITH RECURSIVE dd(d) AS (SELECT 1 UNION ALL SELECT d + 1 FROM dd WHERE"
              f" d < {devices}), rr(r) AS (SELECT 1 UNION ALL SELECT r + 1 FROM rr WHERE"
              f" r < {runs}) ")
    at = f"({now} - (r * {devices} + d) * 0.5)"
    pending = ", ".join(gate(v) for v in ("1", "'gate'", "1", "'approval'",
                                          "'Ship lot ' || r || '?'", at))
    with store.tx() as c:
        c.execute(series + "INSERT INTO devices (device, first_seen, last_seen) SELECT"
                  f" 'dev-' || d, {now - 86400}, {now} FROM dd")
        c.execute(series + "INSERT INTO epochs (device, epoch, first_seen, protocol) SELECT"
                  f" 'dev-' || d, 'e1', {now - 86400}, 2 FROM dd")
        c.execute(series + "INSERT INTO fleet_runs (device, epoch, run_id, workflow, version,"
                  " origin, status, node, error, queued_at, started_at, updated_at,"
                  " finished_at, steps, retries, approval_id, approval_node, approval_visit,"
                  " approval_kind, approval_prompt, approval_at) SELECT 'dev-' || d, 'e1',"
                  " 'run-' || d || '-' || r, 'inspect-' || (r % 5), 'v1', 'local', "
                  f"{STATUS}, 'step-' || (r % 7), CASE WHEN (r * 31 + d) % 20 = 0 THEN 'tool sensor"
                  f" failed: timeout after 5s' END, {at} - 30, {at} - 29, {at},"
                  f" CASE WHEN (r * 31 + d) % 20 <> 2 AND (r * 31 + d) % 200 <> 1 THEN {at} END, r % 9,"
                  f" r % 3, {pending} FROM dd, rr")
    if store.dialect == "postgresql":
        with store.tx() as c:
            c.execute("ANALYZE fleet_runs")


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
