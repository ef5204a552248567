"""The CLI's surface: --help everywhere, options before or after the command, --json of
each command, the stable `status --json` shape, and commands with the daemon down and up."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, cli, cli_json

COMMANDS = [["run"], ["status"], ["start"], ["runs"], ["approvals"], ["approve"], ["reject"],
            ["cancel"], ["trace"], ["config", "check"], ["tools", "list"], ["tools", "call"],
            ["conflicts"], ["sync", "now"], ["model", "make-test-model"], ["install-service"],
            ["uninstall-service"], ["metrics"]]


def edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str]) -> None:
    r = edge_agent(*command, "--help")
    assert r.returncode == 0, r.stderr
    assert " ".join(r.stdout.split()).startswith("usage: edge-agent " + command[0])
    if command != ["run"] and command != ["model", "make-test-model"] \
            and command not in (["install-service"], ["uninstall-service"]):
        assert "--json" in r.stdout


def test_options_before_or_after_the_command(config: Path) -> None:
    before = edge_agent("--config", str(config), "--json", "status")
    after = edge_agent("status", "--config", str(config), "--json")
    assert before.returncode == after.returncode == 0, before.stderr
    assert json.loads(before.stdout)["daemon"]["config"] == str(config.resolve())
    assert json.loads(before.stdout)["daemon"] == json.loads(after.stdout)["daemon"]
    assert edge_agent("--json", "config", "check", str(config)).stdout.strip().startswith("{")


def assert_status_shape(status: dict, *, running: bool) -> None:
    """The documented, stable interface of `status --json`."""
    assert isinstance(status["daemon"]["running"], bool) and status["daemon"]["running"] is running
    assert isinstance(status["daemon"]["pid"], int) if running else status["daemon"]["pid"] is None
    sync = status["sync"]
    assert isinstance(sync["configured"], bool) and isinstance(sync["connected"], bool)
    assert sync["last_sync"] is None or dt.datetime.fromisoformat(sync["last_sync"])
    assert set(sync["streams"]) >= {"control", "checkpoints", "traces", "metrics"}
    for s in sync["streams"].values():
        assert isinstance(s["pending"], int) and isinstance(s["pending_bytes"], int)
        assert s["oldest_pending_age_s"] is None or isinstance(s["oldest_pending_age_s"], float)
        assert isinstance(s["acked_seq"], int) and isinstance(s["dropped"], int)
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in status["runs"].items())
    assert isinstance(status["approvals_pending"], int) and isinstance(status["conflicts"], int)


def wait_status(config: Path, rid: str, want: str, timeout: float = 15) -> dict:
    deadline = time.time() + timeout
    while (run := cli_json(config, "runs", "show", rid))["status"] != want:
        assert time.time() < deadline, run["status"]
        time.sleep(0.05)
    return run


def test_decisions_with_the_daemon_down_then_up(config: Path, tmp_path: Path,
                                                daemons: list[DaemonProcess]) -> None:
    runs = [cli_json(config, "start", "gated")["run_id"] for _ in range(3)]
    d = DaemonProcess(config, tmp_path).start()
    daemons.append(d)
    d.wait_for("READY=1")
    for rid in runs:
        wait_status(config, rid, "waiting_approval")
    live = cli_json(config, "status")
    assert_status_shape(live, running=True)
    assert live["runs"] == {"waiting_approval": 3} and live["approvals_pending"] == 3
    assert d.stop() == 0
    down = cli_json(config, "status")
    assert_status_shape(down, running=False)
    assert down["approvals_pending"] == 3
    assert {a["run_id"] for a in cli_json(config, "approvals")["approvals"]} == set(runs)
    approved = cli_json(config, "approve", runs[0], "--note", "ok")
    rejected = cli_json(config, "reject", runs[1], "--note", "no")
    cancelled = cli_json(config, "cancel", runs[2])
    assert approved["decision"] == "approved" and approved["run_id"] == runs[0]
    assert rejected["decision"] == "rejected" and rejected["run_id"] == runs[1]
    assert cancelled["run_id"] == runs[2]
    d2 = DaemonProcess(config, tmp_path).start()
    daemons.append(d2)
    d2.wait_for("READY=1")
    wait_status(config, runs[0], "completed")
    assert wait_status(config, runs[1], "cancelled")["error"].endswith("no")
    wait_status(config, runs[2], "cancelled")
    sock = config.parent / "run" / "control.sock"
    mode = os.stat(sock).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660  # owner and group only


def test_tools_against_a_live_daemon_each_call_its_own_key(tmp_path: Path,
                                                          daemons: list[DaemonProcess]) -> None:
    config = tmp_path / "config.toml"
    config.write_text("""
[device]
id = "cell-3"
data_dir = "data"
runtime_dir = "run"

[tools.mark]
kind = "command"
argv = ["./mark.sh", "{part}"]
params = { type = "object", properties = { part = { type = "string" } }, required = ["part"] }
""")
    script = tmp_path / "mark.sh"
    script.write_text('#!/bin/sh\necho "$EDGE_AGENT_IDEMPOTENCY_KEY $1" >> '
                      '"$(dirname "$0")/ledger"\necho done\n')
    script.chmod(0o755)
    d = DaemonProcess(config, tmp_path).start()
    daemons.append(d)
    d.wait_for("READY=1")
    assert [t["name"] for t in cli_json(config, "tools", "list")["tools"]] == ["mark"]
    for part in ("A", "B"):
        assert cli_json(config, "tools", "call", "mark", "--args",
                        json.dumps({"part": part}))["ok"]
    lines = [line.split() for line in (tmp_path / "ledger").read_text().splitlines()]
    assert [p for _, p in lines] == ["A", "B"]
    assert lines[0][0] != lines[1][0]  # a device that drops repeated ids still acts twice
    r = cli(config, "sync", "now", check=False)  # no [sync]: says so, does not pretend
    assert r.returncode == 1 and "sync" in r.stderr
