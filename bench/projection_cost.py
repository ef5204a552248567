"""The fleet projection's ingest cost, without the broker's noise: one process stores
batches of a device's checkpoint records (200 records, 20 runs of 10 steps, as
bench.fleet's devices send them) straight into SqlCloudStore.store_batch on PostgreSQL,
alternating a store with the projection off and one with it on (two databases, one
cluster), batch by batch, so both sides see the same machine load. Each device's batch is
new to both stores (a real ingest, not a resend). Reports the median time per batch on
and off with its spread (p25-p75), and the projection's share.

Run: python -m bench.projection_cost [--batches 400] [--records 200] [--sqlite]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.postgres import Postgres

from bench.fleet import fresh_db
from bench.fleet_devices import run_record


def quartiles(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=4)
    return {"median": round(statistics.median(ms), 3), "p25": round(q[0], 3),
            "p75": round(q[2], 3)}


def measure(stores: dict[bool, Any], batches: int, records: int) -> dict[str, Any]:
    from sync.envelope import Batch
    ms: dict[bool, list[float]] = {False: [], True: []}
    for i in range(batches + 20):  # the first 20: warm-up (caches, prepared statements)
        device = f"dev-{i:05d}"
        recs = tuple(run_record(device, s, records) for s in range(1, records + 1))
        batch = Batch(device, "checkpoints", 0, 1, records, recs, epoch="e0", version=2)
        for on in (False, True) if i % 2 else (True, False):
            t = time.perf_counter()
            stores[on].store_batch(batch)
            if i >= 20:
                ms[on].append((time.perf_counter() - t) * 1000)
    off, on = quartiles(ms[False]), quartiles(ms[True])
    return {"off_ms": off, "on_ms": on,
            "added_ms": round(on["median"] - off["median"], 3),
            "share": round((on["median"] - off["median"]) / on["median"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--sqlite", action="store_true", help="SQLite files instead")
    a = ap.parse_args()
    from sync.cloud.store import SqlCloudStore
    with tempfile.TemporaryDirectory() as tmp:
        pg = None if a.sqlite else Postgres().start()
        try:
            urls = {on: f"sqlite:///{tmp}/{on}.db" if pg is None else fresh_db(
                pg, f"projcost_{str(on).lower()}") for on in (False, True)}
            stores = {on: SqlCloudStore(u, projection=on) for on, u in urls.items()}
            try:
                out = measure(stores, a.batches, a.records)
            finally:
                for s in stores.values():
                    s.close()
        finally:
            if pg is not None:
                pg.stop()
    out.update(backend="sqlite" if a.sqlite else "postgresql", batches=a.batches,
               records=a.records)
    print(f"store_batch of {a.records} records ({a.records // 10} runs), {a.batches} batches"
          f" each, interleaved, {out['backend']}:")
    for side in ("off", "on"):
        q = out[f"{side}_ms"]
        print(f"  projection {side:3}: median {q['median']:.3f} ms (p25 {q['p25']:.3f},"
              f" p75 {q['p75']:.3f})")
    print(f"  the projection adds {out['added_ms']:.3f} ms a batch"
          f" ({out['share']:.0%} of a batch stored with it)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
