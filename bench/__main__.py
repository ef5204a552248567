"""`make bench`: every benchmark, each figure beside its anchor measured in the same run.

Peers (DBOS, LangGraph) are installed into their own virtualenvs under .bench-venvs/.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import sys

BENCHES = [("durable steps", ["-m", "bench.engine_steps"]),
           ("sync throughput", ["-m", "bench.sync_throughput"]),
           ("inference", ["-m", "bench.inference_bench"]),
           ("hardware tools", ["-m", "bench.hardware_tools"]),
           ("daemon footprint", ["-m", "bench.daemon_footprint"])]


def main() -> int:
    print(f"edge-agent benchmarks, {dt.date.today()}, {platform.machine()}, "
          f"{platform.processor() or platform.platform()}")
    failed = 0
    for name, args in BENCHES:
        print(f"\n### {name}", flush=True)
        r = subprocess.run([sys.executable, *args], text=True, capture_output=True)
        lines = [x for x in r.stdout.splitlines() if not x.startswith("{")]
        print("\n".join(lines))
        if r.returncode != 0:
            failed += 1
            print(f"(failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
