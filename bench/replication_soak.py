"""Thousands of random partition/reorder/duplicate/restart schedules; all must converge.

Run: .venv/bin/python -m bench.replication_soak [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from replication.simulation import NODES, simulate


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for seed in range(10_000, 10_000 + n):
            digests = simulate(seed, Path(d), steps=200)
            assert all(digests[x] == digests[NODES[0]] for x in NODES), f"seed {seed}"
            for p in Path(d).iterdir():
                p.unlink()
    print(f"{n} schedules converged in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
