"""Fleet start: one workflow started on a group or a list of devices, one line per device,
over a real broker with real daemons and `edge-agent-cloud run` confirming."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.broker import Broker
from support.daemon import cli_json
from support.fleetrig import CLOUD, cloud, device


def cloud_config(tmp: Path, port: int) -> Path:
    cfg = tmp / "cloud.toml"
    cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{port}"\ninsecure = true\n'
                   '[store]\nurl = "sqlite:///cloud.db"\n'
                   '[groups]\nline-a = ["cell-a", "cell-b"]\nwith-ghost = ["cell-a", "ghost"]\n')
    return cfg


def test_start_on_a_group_and_on_a_list(tmp_path: Path, broker: Broker) -> None:
    ccfg = cloud_config(tmp_path, broker.port)
    ingest = subprocess.Popen([CLOUD, "run", "--config", str(ccfg)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (acfg, a), (bcfg, b) = device(tmp_path, "cell-a", broker.port), \
        device(tmp_path, "cell-b", broker.port)
    try:
        a.start(), b.start()
        a.wait_for("READY=1"), b.wait_for("READY=1")
        groups = json.loads(cloud(ccfg, "groups", "--json").stdout)["groups"]
        assert groups == {"line-a": ["cell-a", "cell-b"], "with-ghost": ["cell-a", "ghost"]}

        r = cloud(ccfg, "start", "hello", "--group", "line-a", "--input", '{"n": 1}',
                  "--wait", "--timeout", "20")
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        assert [ln.split()[:2] for ln in lines] == [["cell-a", "confirmed"],
                                                    ["cell-b", "confirmed"]]
        for cfg, ln in ((acfg, lines[0]), (bcfg, lines[1])):
            run_id = ln.split()[-1]
            deadline = time.time() + 20
            while (run := cli_json(cfg, "runs", "show", run_id))["status"] != "completed":
                assert time.time() < deadline, run
                time.sleep(0.2)
            assert run["output"] == {"n": 1}

        r = cloud(ccfg, "start", "hello", "--devices", "cell-b,ghost", "--wait",
                  "--timeout", "4", "--json")
        assert r.returncode == 2, r.stdout + r.stderr  # ghost never answers
        results = {x["device"]: x["state"] for x in json.loads(r.stdout)["results"]}
        assert results == {"cell-b": "confirmed", "ghost": "unconfirmed"}
    finally:
        a.close(), b.close()
        ingest.send_signal(signal.SIGTERM)
        ingest.wait(10)


@pytest.mark.parametrize("args,message", [
    (["--group", "nope"], "no group 'nope'"),
    (["--devices", " , "], "--devices: a comma-separated list"),
])
def test_a_selection_naming_nothing_is_refused(tmp_path: Path, args: list[str],
                                               message: str) -> None:
    r = cloud(cloud_config(tmp_path, 1), "start", "hello", *args)
    assert r.returncode == 64 and message in r.stderr


def test_groups_are_validated(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.toml"
    cfg.write_text('[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n'
                   '[store]\nurl = "sqlite:///cloud.db"\n[groups]\nbad = []\n')
    r = cloud(cfg, "groups")
    assert r.returncode != 0 and "groups.bad: a non-empty list of device ids" in r.stderr
