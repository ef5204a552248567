"""A process that runs workflows until killed; tools append to a device-side ledger.

Used by the crash tests: the parent kills it with SIGKILL at random moments and starts it
again. Run: python -m support.crash_child DB LEDGER RUNS
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from edge_agent.config.model import AgentConfig, RetryPolicy
from edge_agent.engine import ToolBinding, queue_run
from edge_agent.engine import queries as q
from edge_agent.engine.graph import Workflow, tool_config
from support.engine import Harness, LedgerError, LedgerTool


def agent_config(name: str) -> AgentConfig:
    return AgentConfig(name=name, model="none", tools=("mark",))


class Outcome:
    def __init__(self, output: object, handoff_to: str | None = None) -> None:
        self.output, self.handoff_to = output, handoff_to


def scripted_agent(agent: str, message: str, ctx: object) -> Outcome:
    """An agent loop that follows the journal rules: each turn remembered, each call journaled.
    It thinks (a slow 'model turn'), marks the part, thinks again, and answers."""
    import time
    plan = ctx.remembered("turn:0", lambda: (time.sleep(0.01), {"mark": message})[1])
    result = ctx.call_tool("mark", {"part": plan["mark"]}, turn=0, index=0)
    # an interrupted call that an operator confirmed comes back as a confirmation, not the
    # tool's own result: like a model, the agent reads it as "done as asked"
    marked = result["part"] if "part" in result else (
        plan["mark"] if result.get("outcome") == "confirmed" else None)
    answer = ctx.remembered("turn:1", lambda: (time.sleep(0.01), {"ok": True})[1])
    return Outcome({"marked": marked, **answer})

TOOLS = ("press", "weigh", "label", "light", "mark")  # press, label, mark: not idempotent
MAX_ATTEMPTS = 4
IDEMPOTENT = {"weigh", "light"}


def workflows() -> dict:
    tools = {n: tool_config(n) for n in TOOLS}
    retry = RetryPolicy(max_attempts=MAX_ATTEMPTS, initial_delay_s=0.01, multiplier=2,
                        jitter=0.5)
    wf = (Workflow("cell")  # scan (idempotent) starts the run in the commit of its own step
          .tool("scan", "weigh", args_from={"part": "input.part"}, next="press", retry=retry)
          .tool("press", "press", args_from={"part": "input.part"}, next="inspect", retry=retry)
          .agent("inspect", "inspector", input="string(input.part)", next="weigh", retry=retry)
          .tool("weigh", "weigh", args_from={"part": "input.part"}, next="route", retry=retry)
          .branch("route", [("input.part % 2 == 0", "finish")], default="fan")
          .parallel("fan", ["label", "light"], join="all", next="finish")
          .tool("label", "label", args_from={"part": "input.part"}, retry=retry)
          .tool("light", "light", args={"on": True}, retry=retry)
          .end("finish")
          .build(tools=tools, agents={"inspector": agent_config("inspector")}))
    return {"cell": wf}


def attempt_of(key: str) -> int:
    """The node attempt an idempotency key belongs to: `run/scope/turn/index/aN`, where an
    agent's scope is `node#visit.attempt.segment` and its calls are all `a1`."""
    parts = key.split("/")
    bits = parts[-4].partition("#")[2].split(".")
    return int(bits[1]) if len(bits) >= 3 else int(parts[-1][1:])


class FlakyLedgerTool(LedgerTool):
    """Fails one call in ten with a retryable timeout, but never on a node's last attempt:
    retries are exercised across crashes, while whether a run completes does not depend on
    four failures in a row (a 1-in-10,000 chance per node that would fail the test)."""

    def __init__(self, *a: object, rng: random.Random, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.rng = rng

    def call(self, args: dict, *, idempotency_key: str) -> dict:
        if attempt_of(idempotency_key) < MAX_ATTEMPTS and self.rng.random() < 0.1:
            raise LedgerError("transient", kind="timeout", retryable=True)
        return super().call(args, idempotency_key=idempotency_key)


def make_tools(ledger: Path) -> dict[str, ToolBinding]:
    rng = random.Random()
    return {n: ToolBinding(FlakyLedgerTool(n, ledger, idempotent=n in IDEMPOTENT, rng=rng,
                                           delay_s=rng.uniform(0.0, 0.02)))
            for n in TOOLS}


def keep_what_each_fsync_makes_durable(db: Path, into: Path) -> None:
    """Power-cut mode: as each of the writer's fsyncs begins, copy the WAL and then the
    database (a checkpoint between the two leaves both holding the pages); once the fsync
    has returned, that copy is what a power cut would leave, and `into/durable` names it
    (replaced atomically: a kill at any moment leaves a name of a whole copy). The parent
    puts it back after each kill. SQLite's own checkpoints are turned off, so that only the
    writer syncs."""
    import os
    import shutil
    import threading
    import time

    from edge_agent.store import writer as writer_module
    real = os.fdatasync
    lock = threading.Lock()
    count = [0]

    def fdatasync(fd: int) -> None:
        with lock:
            count[0] += 1
            snap = into / f"snap-{os.getpid()}-{count[0]}"
            snap.mkdir(parents=True)
            for suffix in ("-wal", ""):
                if Path(f"{db}{suffix}").exists():
                    shutil.copyfile(f"{db}{suffix}", snap / f"{db.name}{suffix}")
            time.sleep(0.01)  # a slow disk: a result handed back before its fsync shows
            real(fd)
            before = (into / "durable").read_text() if (into / "durable").exists() else None
            (into / "durable.tmp").write_text(snap.name)
            os.replace(into / "durable.tmp", into / "durable")
            if before:
                shutil.rmtree(into / before, ignore_errors=True)
    writer_module.os.fdatasync = fdatasync  # type: ignore[attr-defined]


async def main(db: Path | str, ledger: Path, runs: int) -> None:
    import os
    h = Harness(db, workflows(), make_tools(ledger), agent_runner=scripted_agent)
    if os.environ.get("POWER_CUT_DIR"):
        assert isinstance(db, Path)
        keep_what_each_fsync_makes_durable(db, Path(os.environ["POWER_CUT_DIR"]))
    engine = await h.start()
    if os.environ.get("POWER_CUT_DIR"):
        assert h.writer is not None
        h.writer.write(lambda c: c.execute("PRAGMA wal_autocheckpoint=0"))
    for i in range(runs):
        queue_run(h.writer.write, workflow="cell", input={"part": i}, workflows=h.workflows,
                  run_id=f"run-{i:03d}")
    engine.wake(None)
    while True:
        statuses = h.store.read(q.count_by_status)
        if set(statuses) <= {"completed", "failed", "cancelled", "waiting_approval"}:
            break
        await asyncio.sleep(0.02)
    await h.stop()


if __name__ == "__main__":
    target = sys.argv[1]  # a SQLite file, or a postgresql:// URL
    asyncio.run(main(target if "://" in target else Path(target), Path(sys.argv[2]),
                     int(sys.argv[3])))
