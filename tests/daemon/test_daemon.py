"""The daemon as systemd runs it: READY, watchdog, signals, lock, and the CLI both ways."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from support.daemon import DaemonProcess, cli, cli_json

from edge_agent.daemon.control_socket import request


def start(daemons: list[DaemonProcess], config: Path, tmp_path: Path,
          env: dict[str, str] | None = None) -> DaemonProcess:
    d = DaemonProcess(config, tmp_path, env).start()
    daemons.append(d)
    return d


def slow_ledger_workflow(tmp_path: Path, *, device: str, sleep_s: float, nodes: list[str],
                         timeout_s: float) -> tuple[Path, Path]:
    """A non-idempotent command tool that sleeps, then appends its argument to `ledger`, and
    a workflow `w` calling it once per node in order. Returns (config, script)."""
    script = tmp_path / "slow.sh"
    script.write_text(f"#!/bin/sh\nsleep {sleep_s}\n"
                      "echo \"$1\" >> \"$(dirname \"$0\")/ledger\"\n")
    script.chmod(0o755)
    chain = [*nodes, "done"]
    steps = "".join(f'[workflows.w.nodes.{n}]\ntool = "slow"\nargs = {{ n = "{n}" }}\n'
                    f'next = "{chain[i + 1]}"\n' for i, n in enumerate(nodes))
    config = tmp_path / "config.toml"
    config.write_text(f"""
[device]
id = "{device}"
data_dir = "data"
runtime_dir = "run"
[tools.slow]
kind = "command"
argv = ["./slow.sh", "{{n}}"]
params = {{ type = "object", properties = {{ n = {{ type = "string" }} }}, required = ["n"] }}
idempotent = false
timeout_s = {timeout_s}
[workflows.w]
start = "{nodes[0]}"
{steps}[workflows.w.nodes.done]
end = true
""")
    return config, script


def test_ready_after_recovery_then_status_lines(config: Path, tmp_path: Path,
                                                daemons: list[DaemonProcess]) -> None:
    # a run queued while the daemon was down is recovered before READY
    rid = cli_json(config, "start", "gated")["run_id"]
    d = start(daemons, config, tmp_path)
    ready = d.wait_for("READY=1")
    status = [line for _, line in d.messages if line.startswith("STATUS=")]
    assert status and "cloud not configured" in status[0]
    assert "1 runs active" in status[0] or "1 waiting approval" in status[0]
    deadline = time.time() + 10
    while cli_json(config, "runs")["runs"][0]["status"] != "waiting_approval":
        assert time.time() < deadline
        time.sleep(0.05)
    runs = cli_json(config, "runs")["runs"]
    assert [(r["run_id"], r["status"]) for r in runs] == [(rid, "waiting_approval")]
    assert ready
    assert d.stop() == 0
    assert any(line.startswith("STOPPING=1") for _, line in d.messages + d.read(0.3))


def test_watchdog_pings_stop_while_the_loop_is_blocked(config: Path, tmp_path: Path,
                                                      daemons: list[DaemonProcess]) -> None:
    d = start(daemons, config, tmp_path, {"WATCHDOG_USEC": "200000",
                                          "EDGE_AGENT_TEST_HOOKS": "1"})
    d.wait_for("READY=1")
    pings = [t for t, line in d.read(1.0) if line == "WATCHDOG=1"]
    assert len(pings) >= 5  # every 0.1 s
    sock = config.parent / "run" / "control.sock"
    t0 = time.monotonic()
    request(sock, "block_loop", seconds=1.5, timeout=10)
    t1 = time.monotonic()
    during = [t for t, line in d.read(0.05) if line == "WATCHDOG=1"]
    blocked = [t for t in during if t0 + 0.15 < t < t1 - 0.05]
    assert blocked == []
    after = [t for t, line in d.read(0.8) if line == "WATCHDOG=1"]
    assert len(after) >= 3


def test_cli_against_a_live_daemon(config: Path, tmp_path: Path,
                                   daemons: list[DaemonProcess]) -> None:
    d = start(daemons, config, tmp_path)
    d.wait_for("READY=1")
    status = cli_json(config, "status")
    assert status["daemon"]["running"] and status["daemon"]["pid"] == d.proc.pid
    assert status["sync"]["configured"] is False
    assert set(status["sync"]["streams"]) >= {"control", "checkpoints", "traces", "metrics"}
    rid = cli_json(config, "start", "gated", "--input", '{"lot": 7}')["run_id"]
    deadline = time.time() + 10
    while cli_json(config, "approvals")["approvals"] == [] and time.time() < deadline:
        time.sleep(0.05)
    pending = cli_json(config, "approvals")["approvals"]
    assert pending[0]["run_id"] == rid and pending[0]["prompt"] == "Proceed?"
    assert cli_json(config, "status")["approvals_pending"] == 1
    cli(config, "approve", rid, "--note", "looks good", "--patch", '{"ok": true}')
    while cli_json(config, "runs", "show", rid)["status"] != "completed":
        assert time.time() < deadline
        time.sleep(0.05)
    shown = cli_json(config, "runs", "show", rid)
    assert shown["context"]["ok"] is True and shown["context"]["gate"]["note"] == "looks good"
    trace = cli_json(config, "trace", rid)
    assert [s["node"] for s in trace["steps"]] == ["gate", "done"]
    assert "approval (gate) approved" in cli(config, "trace", rid).stdout
    bad = cli(config, "approve", rid, check=False)
    assert bad.returncode == 1 and "no pending approval" in bad.stderr
    cancel_me = cli_json(config, "start", "gated")["run_id"]
    cli(config, "cancel", cancel_me)
    while cli_json(config, "runs", "show", cancel_me)["status"] != "cancelled":
        assert time.time() < deadline + 10
        time.sleep(0.05)
    assert cli(config, "sync", "now", check=False).returncode == 1  # no [sync] table


def test_cli_with_the_daemon_down_then_up(config: Path, tmp_path: Path,
                                          daemons: list[DaemonProcess]) -> None:
    r = cli(config, "status", check=False)
    assert r.returncode == 0 and "not running" in r.stdout
    assert cli_json(config, "status")["daemon"] == {
        "running": False, "pid": None, "uptime_s": None, "version": None,
        "config": str(config.resolve()), "answering": False}
    out = cli(config, "start", "gated")
    assert "queued" in out.stderr
    rid = out.stdout.strip()
    assert cli_json(config, "runs", "--state", "queued")["runs"][0]["run_id"] == rid
    d = start(daemons, config, tmp_path)
    d.wait_for("READY=1")
    d.stop()
    cli(config, "reject", rid, "--note", "not today")  # daemon down: written to the database
    d2 = start(daemons, config, tmp_path)
    d2.wait_for("READY=1")
    deadline = time.time() + 10
    while cli_json(config, "runs", "show", rid)["status"] != "cancelled":
        assert time.time() < deadline
        time.sleep(0.05)
    assert "not today" in cli_json(config, "runs", "show", rid)["error"]


def test_sigterm_mid_run_then_restart_completes(tmp_path: Path,
                                                daemons: list[DaemonProcess]) -> None:
    config, _ = slow_ledger_workflow(tmp_path, device="cell-2", sleep_s=0.5,
                                     nodes=["a", "b"], timeout_s=5)
    d = start(daemons, config, tmp_path)
    d.wait_for("READY=1")
    rid = cli_json(config, "start", "w")["run_id"]
    time.sleep(0.2)  # inside step a
    d.signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0
    ledger = (tmp_path / "ledger").read_text().split()
    assert ledger == ["a"]  # the in-flight step reached its checkpoint, b did not start
    assert cli_json(config, "runs", "show", rid)["node"] == "b"
    d2 = start(daemons, config, tmp_path)
    d2.wait_for("READY=1")
    deadline = time.time() + 15
    while cli_json(config, "runs", "show", rid)["status"] != "completed":
        assert time.time() < deadline
        time.sleep(0.1)
    assert (tmp_path / "ledger").read_text().split() == ["a", "b"]


def test_sighup_reload_keeps_old_config_when_new_is_bad(config: Path, tmp_path: Path,
                                                        daemons: list[DaemonProcess]) -> None:
    d = start(daemons, config, tmp_path)
    d.wait_for("READY=1")
    good = config.read_text()
    config.write_text(good + "\n[workflows.broken]\nstart = 'nowhere'\n")
    d.signal(signal.SIGHUP)
    d.wait_for("STATUS=reload rejected")
    config.write_text(good)
    # still the same daemon, answering on its socket (a CLI would read the database alone
    # if it had exited), with the configuration it ran before
    assert cli_json(config, "status")["daemon"]["pid"] == d.proc.pid
    assert "reload rejected, keeping the running configuration" in d.output()
    rid = cli_json(config, "start", "gated")["run_id"]  # the old workflows still run
    config.write_text(good.replace("[workflows.gated]", "[workflows.second]\nstart = \"e\"\n"
                                   "[workflows.second.nodes.e]\nend = true\n\n"
                                   "[workflows.gated]"))
    d.signal(signal.SIGHUP)
    deadline = time.time() + 10
    while "reloaded " not in d.output():  # the good file is taken, by the same process
        assert d.proc.poll() is None and time.time() < deadline, d.output()
        time.sleep(0.05)
    assert cli_json(config, "status")["daemon"]["pid"] == d.proc.pid
    rid2 = cli_json(config, "start", "second")["run_id"]
    deadline = time.time() + 10
    while cli_json(config, "runs", "show", rid2)["status"] != "completed":
        assert time.time() < deadline
        time.sleep(0.05)
    assert cli_json(config, "runs", "show", rid)["status"] == "waiting_approval"


def test_one_daemon_per_data_dir_and_config_errors(config: Path, tmp_path: Path,
                                                   daemons: list[DaemonProcess]) -> None:
    d = start(daemons, config, tmp_path)
    d.wait_for("READY=1")
    second = start(daemons, config, tmp_path)
    assert second.proc.wait(20) == 75
    assert f"pid {d.proc.pid}" in second.output()
    bad = tmp_path / "bad.toml"
    bad.write_text("[device]\nid = 'x'\nwat = 1\n")
    third = start(daemons, bad, tmp_path)
    assert third.proc.wait(20) == 78
    assert "device.wat: unknown key" in third.output()
    assert json.loads(cli(config, "status", "--json").stdout)["daemon"]["pid"] == d.proc.pid


def test_a_second_sigterm_aborts_the_drain(tmp_path: Path,
                                           daemons: list[DaemonProcess]) -> None:
    """The first SIGTERM waits for the in-flight step; a second one does not wait."""
    config, script = slow_ledger_workflow(tmp_path, device="cell-4", sleep_s=8, nodes=["a"],
                                          timeout_s=30)
    d = start(daemons, config, tmp_path)
    d.wait_for("READY=1")
    rid = cli_json(config, "start", "w")["run_id"]
    time.sleep(0.5)  # inside the 8-second step
    d.signal(signal.SIGTERM)
    d.wait_for("STOPPING=1")
    time.sleep(0.3)
    assert d.proc.poll() is None  # draining: the step is still in flight
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    try:
        assert d.proc.wait(5) == 1 and time.monotonic() - t0 < 3  # aborted, not drained
        assert not (tmp_path / "ledger").exists()
    finally:  # the tool's own process outlives an abort (systemd kills the whole cgroup)
        import subprocess
        subprocess.run(["pkill", "-f", str(script)], check=False)
    run = cli_json(config, "runs", "show", rid)
    assert run["status"] == "running" and run["node"] == "a"  # resumes at the next start
