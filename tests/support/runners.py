"""Runners of the ledger workflow for the store-outage and shared-runner tests: a config
whose three nodes each call a non-idempotent command tool that appends its idempotency key
to a ledger (a second call of one step would be a second line), runs queued straight into
the database, and the checks on how they ended."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from support.daemon import DaemonProcess, until

RUNS = 24
NODES = ("a", "b", "c")
CONFIG = """
[device]
id = "runner"
data_dir = "{data_dir}"
runtime_dir = "rt"
{database}
[tools.mark]
kind = "command"
argv = ["./mark.sh"]
params = {{ type = "object", properties = {{}} }}

[workflows.job]
start = "a"
[workflows.job.nodes.a]
tool = "mark"
next = "b"
[workflows.job.nodes.b]
tool = "mark"
next = "c"
[workflows.job.nodes.c]
tool = "mark"
next = "done"
[workflows.job.nodes.done]
end = true
"""


def setup(tmp: Path, *, database: str | None = None, data_dir: str = "data",
          seconds: float = 0.05) -> Path:
    """The ledger workflow's config in `tmp`; each call takes `seconds` after its line."""
    cfg = tmp / "runner.toml"
    cfg.write_text(CONFIG.format(data_dir=data_dir, database=(
        f'database = "{database}"\n' if database else "")))
    script = tmp / "mark.sh"  # not idempotent: a second call would be a second line
    script.write_text('#!/bin/sh\necho "$EDGE_AGENT_IDEMPOTENCY_KEY" >> ledger\n'
                      f'sleep {seconds}\necho \'{{"marked": true}}\'\n')
    script.chmod(0o755)
    return cfg


def start_runner(tmp: Path, cfg: Path, command: str) -> DaemonProcess:
    r = DaemonProcess(cfg, tmp, argv=[sys.executable, "-m", "edge_agent", command,
                                      "--config", str(cfg)], cwd=tmp).start()
    r.wait_for("READY=1", timeout=90)
    return r


def queue_runs(cfg: Path, n: int) -> list[str]:
    """Written straight into the database (the runner's watch picks them up)."""
    from edge_agent.config import load_config
    from edge_agent.engine import queue_run
    from edge_agent.store.opening import open_database
    config = load_config(cfg)
    db = open_database(config.database)
    try:
        return [db.write(lambda c: queue_run(lambda fn: fn(c), workflow="job", input={"n": i},
                                             workflows=config.workflows))
                for i in range(n)]
    finally:
        db.close()


def all_completed(cfg: Path, rids: list[str], r: DaemonProcess | Callable[[], str],
                  timeout: float = 60, ended: tuple[str, ...] = ("completed",)
                  ) -> dict[str, int]:
    """Until every run has ended in one of `ended` (nothing else but queued and running on
    the way); the counts by status."""
    from edge_agent.config import load_config
    from edge_agent.engine import queries as q
    from edge_agent.store.opening import open_database
    config = load_config(cfg)
    counts: dict[str, int] = {}
    output = r.output if isinstance(r, DaemonProcess) else r

    def done() -> bool:
        nonlocal counts
        db = open_database(config.database, readonly=True)
        try:
            counts = db.read(q.count_by_status)
        finally:
            db.close()
        assert not set(counts) - {"queued", "running", *ended}, (counts, output())
        return sum(counts.get(s, 0) for s in ended) == len(rids)
    until(done, timeout=timeout, every=0.5, why=lambda: (counts, output()))
    return counts


def ledger(tmp: Path) -> Counter[str]:
    path = tmp / "ledger"
    return Counter(path.read_text().split() if path.exists() else [])


def assert_each_call_once(tmp: Path, n: int) -> None:
    lines = ledger(tmp)
    twice = {k: v for k, v in lines.items() if v > 1}
    assert not twice, twice
    assert len(lines) == n * len(NODES), len(lines)
