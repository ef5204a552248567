"""The engine issue's contract example, run exactly as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from support.daemon import DaemonProcess

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = (ROOT / "tests" / "foundation" / "test_config.py").read_text().split('CONTRACT = """')[1] \
    .split('"""')[0]
EXE = str(Path(sys.executable).parent / "edge-agent")


def sh(cwd: Path, *args: str, env: dict[str, str] | None = None
       ) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                       check=False, env=env)
    assert r.returncode == 0, r.stderr
    return r


def test_contract_example_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "cfg.toml").write_text(CONTRACT)
    stamp = tmp_path / "stamp.sh"
    stamp.write_text('#!/bin/sh\necho "$1" >> "$(dirname "$0")/stamped.txt"\n'
                     'echo "{\\"stamped\\": \\"$1\\"}"\n')
    stamp.chmod(0o755)
    # queued while no daemon runs
    out = sh(tmp_path, "start", "stamp_parts", "--input", '{"count": 2}', "--config", "cfg.toml")
    run_id = out.stdout.strip()
    as_json = sh(tmp_path, "start", "stamp_parts", "--input", '{"count": 1}', "--config",
                 "cfg.toml", "--json")
    other = json.loads(as_json.stdout)["run_id"]
    runs = json.loads(sh(tmp_path, "runs", "--json", "--config", "cfg.toml").stdout)["runs"]
    assert {(r["run_id"], r["workflow"], r["status"]) for r in runs} == {
        (run_id, "stamp_parts", "queued"), (other, "stamp_parts", "queued")}
    # `edge-agent run --config cfg.toml`, as written, from the config's directory
    daemon = DaemonProcess(tmp_path / "cfg.toml", tmp_path, cwd=tmp_path,
                           argv=[EXE, "run", "--config", "cfg.toml"])
    try:
        daemon.start()
        daemon.wait_for("READY=1")
        deadline = time.time() + 20
        while True:
            runs = json.loads(sh(tmp_path, "runs", "--json", "--config", "cfg.toml").stdout)
            states = {r["run_id"]: r["status"] for r in runs["runs"]}
            if set(states.values()) == {"waiting_approval"}:
                break
            assert time.time() < deadline, states
            time.sleep(0.1)
        assert sorted((tmp_path / "stamped.txt").read_text().split()) == ["A", "A", "B"]
        # `edge-agent approve RUN_ID` / `reject RUN_ID` as the issue writes them: no --config,
        # the file found where a device keeps it (here through $EDGE_AGENT_CONFIG)
        device = {**os.environ, "EDGE_AGENT_CONFIG": str(tmp_path / "cfg.toml")}
        sh(tmp_path, "approve", run_id, env=device)
        sh(tmp_path, "reject", other, env=device)
        while True:
            runs = json.loads(sh(tmp_path, "runs", "--json", "--config", "cfg.toml").stdout)
            states = {r["run_id"]: r["status"] for r in runs["runs"]}
            if states == {run_id: "completed", other: "cancelled"}:
                break
            assert time.time() < deadline, states
            time.sleep(0.1)
        shown = json.loads(sh(tmp_path, "runs", "show", run_id, "--json", "--config",
                              "cfg.toml").stdout)
        assert shown["context"]["first"]["json"] == {"stamped": "A"}
    finally:
        daemon.close()
