"""Daemon footprint without a model: time from exec to READY=1, and idle resident memory.

Run: .venv/bin/python -m bench.daemon_footprint
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """
[device]
id = "bench"
data_dir = "data"
runtime_dir = "run"
[workflows.w]
start = "gate"
[workflows.w.nodes.gate]
approval = { prompt = "ok?" }
next = "done"
[workflows.w.nodes.done]
end = true
"""


def once(tmp: Path) -> tuple[float, float]:
    cfg = tmp / "config.toml"
    cfg.write_text(CONFIG)
    sock_path = tmp / "notify.sock"
    sock_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(cfg)],
                            env={**os.environ, "NOTIFY_SOCKET": str(sock_path)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while b"READY=1" not in sock.recv(4096):
            pass
        ready = time.perf_counter() - start
        time.sleep(2.0)  # idle
        rss_kb = next(int(line.split()[1]) for line in
                      Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                      if line.startswith("VmRSS:"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        sock.close()
    return ready, rss_kb / 1024


def main() -> None:
    readies, rss = [], []
    for _ in range(5):
        with tempfile.TemporaryDirectory() as d:
            r, m = once(Path(d))
            readies.append(r)
            rss.append(m)
    result = {"start_to_ready_s_median": statistics.median(readies),
              "idle_rss_mb_median": statistics.median(rss)}
    print(f"start to READY: {result['start_to_ready_s_median']:.3f} s (target < 1.5 s)")
    print(f"idle resident memory: {result['idle_rss_mb_median']:.1f} MB (target < 80 MB)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
