"""`runs migrate` with the daemon up takes the run's lock: a run still `queued` while its
first idempotent step is in flight (nothing of it committed yet) is refused with exit 75, and
the step finishes on the run's own version; once the run waits, the daemon moves it."""

from __future__ import annotations

import time
from pathlib import Path

from support.daemon import DaemonProcess, cli, cli_json

V1 = """
[device]
id = "cell-1"
data_dir = "data"
runtime_dir = "run"

[tools.slow]
kind = "command"
argv = ["sh", "-c", "touch started; sleep 3"]
idempotent = true
timeout_s = 30

[workflows.w]
start = "slow"
[workflows.w.nodes.slow]
tool = "slow"
next = "gate"
[workflows.w.nodes.gate]
approval = { prompt = "Proceed?" }
next = "done"
[workflows.w.nodes.done]
end = true
"""
V2 = V1.replace('[workflows.w.nodes.gate]\napproval = { prompt = "Proceed?" }\nnext = "done"',
                '[workflows.w.nodes.gate]\napproval = { prompt = "Proceed?" }\nnext = "check"\n'
                '[workflows.w.nodes.check]\napproval = { prompt = "Checked?" }\nnext = "done"')


def _wait(config: Path, rid: str, want: str, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while (run := cli_json(config, "runs", "show", rid))["status"] != want:
        assert time.time() < deadline, run["status"]
        time.sleep(0.05)
    return run


def test_a_run_with_a_step_in_flight_is_not_migrated(tmp_path: Path,
                                                      daemons: list[DaemonProcess]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(V1)
    d = DaemonProcess(config, tmp_path, cwd=tmp_path).start()
    daemons.append(d)
    d.wait_for("READY=1")
    rid = cli_json(config, "start", "w")["run_id"]
    deadline = time.time() + 20
    while not (tmp_path / "started").exists():
        assert time.time() < deadline, d.output()
        time.sleep(0.02)
    config.write_text(V2)
    listed = cli_json(config, "config", "check")["runs_on_changed_workflows"]
    new = next(r["new_version"] for r in listed if r["run_id"] == rid)
    assert cli_json(config, "runs", "show", rid)["status"] == "queued"  # nothing committed
    refused = cli(config, "runs", "migrate", rid, "--to-version", new, check=False)
    assert refused.returncode == 75, refused.stderr
    assert "step in flight" in refused.stderr and "Traceback" not in refused.stderr
    run = _wait(config, rid, "waiting_approval")
    assert run["version"] != new[:len(run["version"])]  # still its own version
    moved = cli_json(config, "runs", "migrate", rid, "--to-version", new)
    assert moved["node"] == "gate" and moved["was_at"] == "gate"
    cli(config, "approve", rid)
    _wait(config, rid, "waiting_approval")
    cli(config, "approve", rid)
    done = _wait(config, rid, "completed")
    assert [s["node"] for s in done["steps"]] == ["slow", "gate", "check", "done"]
    assert d.stop() == 0
