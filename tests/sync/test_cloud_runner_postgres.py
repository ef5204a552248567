"""The cloud runner with its engine in PostgreSQL (`[device] database = "postgresql://..."`):
the daemon of `edge-agent cloud-run` and the CLI on a fresh database of a throwaway
cluster, a run that waits for a person across a SIGKILL of the runner, and the config
errors a runner with a PostgreSQL store can meet."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, cli, cli_json
from support.postgres import Postgres, fresh_pg_url

EXE = str(Path(sys.executable).parent / "edge-agent")
CONFIG = """
[device]
id = "cloud"
data_dir = "cloud-data"
runtime_dir = "cloud-run"
database = "{url}"

[tools.verdict]
kind = "command"
argv = ["./verdict.sh"]
params = {{ type = "object", properties = {{}} }}

[workflows.review]
start = "verdict"
[workflows.review.nodes.verdict]
tool = "verdict"
next = "sign"
[workflows.review.nodes.sign]
approval = {{ prompt = "Release the lot?" }}
next = "done"
[workflows.review.nodes.done]
end = true
output = "verdict.json"
"""


def setup(tmp: Path, url: str) -> Path:
    cfg = tmp / "cloud-agent.toml"
    cfg.write_text(CONFIG.format(url=url))
    script = tmp / "verdict.sh"
    script.write_text('#!/bin/sh\necho \'{"verdict": "approved"}\'\n')
    script.chmod(0o755)
    return cfg


def runner(tmp: Path, cfg: Path) -> DaemonProcess:
    return DaemonProcess(cfg, tmp, argv=[sys.executable, "-m", "edge_agent", "cloud-run",
                                         "--config", str(cfg)], cwd=tmp)


def status(cfg: Path, rid: str, *wanted: str, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while (run := cli_json(cfg, "runs", "show", rid))["status"] not in wanted:
        assert time.time() < deadline, run
        time.sleep(0.2)
    return run


def test_the_cloud_runner_keeps_its_runs_in_postgresql(tmp_path: Path,
                                                       pg_cluster: Postgres) -> None:
    url = fresh_pg_url(pg_cluster)
    cfg = setup(tmp_path, url)
    r = runner(tmp_path, cfg).start()
    try:
        r.wait_for("READY=1", timeout=60)
        rid = cli_json(cfg, "start", "review", "--input", '{"lot": 7}')["run_id"]
        status(cfg, rid, "waiting_approval")
        r.kill()  # SIGKILL: only PostgreSQL remembers
        r = runner(tmp_path, cfg).start()
        r.wait_for("READY=1", timeout=60)
        assert cli_json(cfg, "runs", "show", rid)["status"] == "waiting_approval"
        cli(cfg, "approve", rid, "--by", "qa")
        run = status(cfg, rid, "completed", "failed", "cancelled")
        assert run["status"] == "completed", run
        assert run["output"] == {"verdict": "approved"}
        assert [s["node"] for s in run["steps"]] == ["verdict", "sign", "done"]
        trace = cli(cfg, "trace", rid).stdout
        assert "verdict" in trace and "sign" in trace
        assert cli_json(cfg, "status")["runs"] == {"completed": 1}
        time.sleep(1.5)  # a round of spans and metrics on this store
        log = r.output()
        assert "Traceback" not in log and "WARNING" not in log and "ERROR" not in log, log
    finally:
        r.close()
    # the SQLite file was never made: the state is in PostgreSQL
    assert not (tmp_path / "cloud-data" / "edge-agent.db").exists()
    import psycopg
    with psycopg.connect(url) as c:
        assert c.execute("SELECT status FROM runs WHERE run_id = %s",
                         (rid,)).fetchone() == ("completed",)


def test_a_postgresql_store_with_sync_or_a_bad_url_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.format(url="postgresql://edge:pw@127.0.0.1:9/x") +
                   '[sync]\nbroker = "127.0.0.1:1883"\ninsecure = true\n')
    r = subprocess.run([EXE, "cloud-run", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 78, r.stdout + r.stderr
    assert "device.database" in r.stdout + r.stderr and "pw" not in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    cfg.write_text(CONFIG.format(url="mysql://edge:hunter2@db/x"))
    r = subprocess.run([EXE, "--config", str(cfg), "config", "check"], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 78 and "device.database: must be a postgresql:// URL" in out, out
    assert "hunter2" not in out and "mysql://edge:***@db/x" in out, out


def test_a_postgresql_store_it_cannot_reach_is_reported_not_a_traceback(
        tmp_path: Path) -> None:
    cfg = setup(tmp_path, "postgresql://edge:pw@127.0.0.1:9/x?connect_timeout=2")
    r = subprocess.run([EXE, "cloud-run", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Traceback" not in out, out
    assert "cannot connect" in out and "pw" not in out.replace("pwd", ""), out


def test_two_runners_share_one_postgresql_database(tmp_path: Path,
                                                   pg_cluster: Postgres) -> None:
    """Runners are stateless workers around PostgreSQL (issue 30): a second runner on the
    same database starts (it used to exit 75), a run waiting for a person is approved
    whichever runner holds it, and when the runner that drove it is SIGKILLed the other one
    takes the run over once its lease expires."""
    url = fresh_pg_url(pg_cluster)
    cfg = setup(tmp_path, url)
    other = tmp_path / "other"
    other.mkdir()
    cfg2 = setup(other, url)
    fast = {"EDGE_AGENT_LEASE_S": "2"}
    first = DaemonProcess(cfg, tmp_path, env=fast, argv=[
        sys.executable, "-m", "edge_agent", "cloud-run", "--config", str(cfg)], cwd=tmp_path)
    second = DaemonProcess(cfg2, other, env=fast, argv=[
        sys.executable, "-m", "edge_agent", "cloud-run", "--config", str(cfg2)], cwd=other)
    try:
        first.start().wait_for("READY=1", timeout=60)
        second.start().wait_for("READY=1", timeout=60)
        assert cli_json(cfg, "status")["runner"] != cli_json(cfg2, "status")["runner"]
        rids = [cli_json(cfg, "start", "review", "--input", f'{{"lot": {i}}}')["run_id"]
                for i in range(4)]
        for rid in rids:
            status(cfg, rid, "waiting_approval")
        first.kill()  # SIGKILL: its leases stay until they expire
        for rid in rids:  # the CLI writes whichever runner holds the run
            cli(cfg2, "approve", rid, "--by", "qa")
        for rid in rids:
            run = status(cfg2, rid, "completed", "failed", "cancelled", timeout=90)
            assert run["status"] == "completed", run
            assert [s["node"] for s in run["steps"]] == ["verdict", "sign", "done"]
        log = second.output()
        assert "Traceback" not in log and "ERROR" not in log, log
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_runner_notices_a_run_queued_by_another_process(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """A run written straight into the database, with no word on the control socket, is
    picked up by the runner's watch for outside changes (SQLite's data_version, or
    PostgreSQL's WAL position), on both stores."""
    from edge_agent.config import load_config
    from edge_agent.engine import queue_run
    from edge_agent.store.opening import open_database
    url = fresh_pg_url(request.getfixturevalue("pg_cluster")) if backend == "postgresql" \
        else None
    cfg = setup(tmp_path, url or "")
    if url is None:
        cfg.write_text(cfg.read_text().replace('database = ""\n', ""))
    r = runner(tmp_path, cfg).start()
    try:
        r.wait_for("READY=1", timeout=60)
        config = load_config(cfg)
        db = open_database(config.database)
        try:
            rid = db.write(lambda c: queue_run(lambda fn: fn(c), workflow="review",
                                               input={"lot": 9}, workflows=config.workflows))
        finally:
            db.close()
        assert status(cfg, rid, "waiting_approval", "failed")["status"] == "waiting_approval"
    finally:
        r.close()
