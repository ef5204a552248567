"""The crash test as a soak: hundreds of SIGKILLs over several seeds.

Run: .venv/bin/python -m bench.crash_soak [--kills-per-seed 100] [--seeds 7 8 9]
Each seed runs tests/engine/test_crash.py with CRASH_KILLS kills; the test asserts that every
run finished, no completed step is missing, no non-idempotent action ran twice for one
intent, and PRAGMA integrity_check is ok.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills-per-seed", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    args = ap.parse_args()
    total = answered = failed = 0
    start = time.monotonic()
    for seed in args.seeds:
        env = {**os.environ, "CRASH_SEED": str(seed), "CRASH_KILLS": str(args.kills_per_seed)}
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                            str(ROOT / "tests/engine/test_crash.py")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=3600)
        m = re.search(r"kills=(\d+) unknown outcomes answered=(\d+)", r.stdout)
        ok = r.returncode == 0 and m is not None
        failed += not ok
        if m:
            total += int(m[1])
            answered += int(m[2])
        why = "\n".join(x for x in r.stdout.splitlines() if x.startswith("E "))[:3000]
        print(f"seed {seed}: {'ok' if ok else 'FAILED'} ({m[0] if m else why or r.stdout[-500:]})",
              flush=True)
    print(f"{total} SIGKILLs over {len(args.seeds)} seeds in {time.monotonic() - start:.0f} s; "
          f"{answered} unknown outcomes answered by the operator; {failed} seed(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
