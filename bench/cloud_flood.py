"""One device floods the cloud: 10,000 hand-off requests in 5 s, while a second device syncs
10,000 records (issue 26). A real `edge-agent-cloud run` process (default [limits]: 4
hand-off workers, 4 requests in flight per device), a real broker, both devices as EdgeSync
publishers over real outbox files. Reports the second device's sync time alone and during
the flood (started half-way into it), the cloud's peak threads and RSS from /proc, and the
flood's answers (`busy` or run). A second round sends the whole flood at once (50 ms).

Run: python -m bench.cloud_flood [--requests 10000] [--records 10000] [--spread 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.broker import Broker
from support.flood import measure


def once(requests: int, records: int, spread: float, start_after: float | None) -> dict:
    with tempfile.TemporaryDirectory() as d:
        broker = Broker(Path(d)).start()
        try:
            return measure(Path(d), broker.port, requests=requests, records=records,
                           spread_s=spread, start_after_s=start_after)
        finally:
            broker.kill()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--spread", type=float, default=5.0)
    a = p.parse_args()
    result = {"spread": once(a.requests, a.records, a.spread, None),
              "burst": once(a.requests, a.records, 0.05, 0.3)}
    for name, r in result.items():
        print(f"{name}: {r['requests']:,} hand-off requests in {r['spread_s']:g} s; second "
              f"device's {r['records']:,} records synced in {r['sync_alone_s']:.2f} s alone, "
              f"{r['sync_during_flood_s']:.2f} s during the flood ({r['ratio']:.2f}x); cloud "
              f"threads {r['idle_threads']} idle, {r['peak_threads']} peak; RSS "
              f"{r['idle_rss_mib']:.0f} MiB idle, {r['peak_rss_mib']:.0f} MiB peak; answers "
              f"{r['answers']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
