"""Versioned workflows from the operator's side: a config change leaves runs in flight on
their version; `config check` says which; `runs migrate` moves one, checked."""

from __future__ import annotations

import time
from pathlib import Path

from support.daemon import DaemonProcess, cli, cli_json

from .conftest import GATED


def _wait(config: Path, rid: str, want: str, timeout: float = 15) -> dict:
    deadline = time.time() + timeout
    while (run := cli_json(config, "runs", "show", rid))["status"] != want:
        assert time.time() < deadline, run["status"]
        time.sleep(0.05)
    return run


def test_a_renamed_gate_keeps_runs_in_flight_on_their_version(
        config: Path, tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    d = DaemonProcess(config, tmp_path).start()
    daemons.append(d)
    d.wait_for("READY=1")
    stays, moves = (cli_json(config, "start", "gated")["run_id"] for _ in range(2))
    old = _wait(config, stays, "waiting_approval")["version"]
    _wait(config, moves, "waiting_approval")
    assert d.stop() == 0
    config.write_text(GATED.replace('start = "gate"', 'start = "review"')
                      .replace("nodes.gate]", "nodes.review]"))

    check = cli_json(config, "config", "check")
    assert check["ok"] is True
    listed = {r["run_id"]: r for r in check["runs_on_changed_workflows"]}
    assert set(listed) == {stays, moves}
    new = listed[stays]["new_version"]
    assert listed[stays]["version"] == old and new != old
    assert listed[stays]["node"] == "gate" and listed[stays]["node_exists"] is False
    text = cli(config, "config", "check").stdout
    assert text.startswith("ok\n") and "--map gate=NODE" in text

    refused = cli(config, "runs", "migrate", moves, "--to-version", new, check=False)
    assert refused.returncode == 1 and "node 'gate'" in refused.stderr
    moved = cli_json(config, "runs", "migrate", moves, "--to-version", new[:6],
                     "--map", "gate=review")
    assert moved == {"run_id": moves, "workflow": "gated", "from": old, "to": new,
                     "node": "review", "was_at": "gate"}
    runs = {r["run_id"]: r for r in cli_json(config, "runs")["runs"]}
    assert runs[stays]["version"] == old and runs[moves]["version"] == new
    assert cli_json(config, "trace", moves)["version"] == new
    assert f"version {new}" in cli(config, "trace", moves).stdout

    d2 = DaemonProcess(config, tmp_path).start()
    daemons.append(d2)
    d2.wait_for("READY=1")
    for rid in (stays, moves):
        cli(config, "approve", rid)
    assert [s["node"] for s in _wait(config, stays, "completed")["steps"]] == ["gate", "done"]
    assert [s["node"] for s in _wait(config, moves, "completed")["steps"]] == ["review", "done"]
    assert cli_json(config, "config", "check")["runs_on_changed_workflows"] == []
