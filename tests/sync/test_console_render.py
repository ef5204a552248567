"""The runs page's render budget (300 ms) over a large projection, on both stores; the
full-size figure (1,000 devices x 1,000 runs on PostgreSQL) is `python -m bench.console_page`."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

from bench.console_page import BUDGET_MS, fill, operator_client
from sync.cloud.store import SqlCloudStore


def test_runs_page_renders_within_budget(cloud_url: str, tmp_path: Path) -> None:
    store = SqlCloudStore(cloud_url)
    try:
        fill(store, devices=100, runs=500)  # 50,000 runs (the bench: 1,000,000)
        with operator_client(store, tmp_path) as client:
            samples, page = [], ""
            for _ in range(7):
                t0 = time.perf_counter()
                page = client.get("/runs").text
                samples.append((time.perf_counter() - t0) * 1000)
            assert len(re.findall(r'<tr class="run"', page)) == 100  # the default limit
            assert statistics.median(samples) < BUDGET_MS, samples
            failed = client.get("/runs?status=failed&since=1h&limit=50").text
            statuses = re.findall(r'<td class="status ([a-z_]+)"', failed)
            assert len(statuses) == 50 and set(statuses) == {"failed"}
    finally:
        store.close()
