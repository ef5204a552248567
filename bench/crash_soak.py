"""The crash tests as a soak: hundreds of SIGKILLs and power cuts over several seeds.

Run: .venv/bin/python -m bench.crash_soak [--kills-per-seed 100] [--power-cuts-per-seed 50]
     [--seeds 7 8 9]
Each seed runs tests/engine/test_crash.py: CRASH_KILLS SIGKILLs, then CRASH_POWER_CUTS
SIGKILLs that also lose what no fsync had covered. The tests assert that every run finished,
no completed step is missing, no non-idempotent action ran twice for one intent, and PRAGMA
integrity_check is ok.
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
    ap.add_argument("--power-cuts-per-seed", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    args = ap.parse_args()
    total = cuts = answered = failed = 0
    start = time.monotonic()
    for seed in args.seeds:
        env = {**os.environ, "CRASH_SEED": str(seed), "CRASH_KILLS": str(args.kills_per_seed),
               "CRASH_POWER_CUTS": str(args.power_cuts_per_seed)}
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                            str(ROOT / "tests/engine/test_crash.py")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=3600)
        found = re.findall(r"(kills|power cuts)=(\d+) unknown outcomes answered=(\d+)", r.stdout)
        ok = r.returncode == 0 and len(found) == 2
        failed += not ok
        for what, n, a in found:
            if what == "kills":
                total += int(n)
            else:
                cuts += int(n)
            answered += int(a)
        why = "\n".join(x for x in r.stdout.splitlines() if x.startswith("E "))[:3000]
        said = ", ".join(f"{w}={n} answered={a}" for w, n, a in found)
        print(f"seed {seed}: {'ok' if ok else 'FAILED'} ({said if ok else why or r.stdout[-500:]})",
              flush=True)
    print(f"{total} SIGKILLs and {cuts} power cuts over {len(args.seeds)} seeds in "
          f"{time.monotonic() - start:.0f} s; {answered} unknown outcomes answered by the "
          f"operator; {failed} seed(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
