"""A process that runs workflows until killed; tools append to a device-side ledger.

Used by the crash tests: the parent kills it with SIGKILL at random moments and starts it
again. Run: python -m support.crash_child DB LEDGER RUNS
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from support.engine import Harness, LedgerError, LedgerTool

from edge_agent.config.model import RetryPolicy
from edge_agent.engine import ToolBinding, queue_run
from edge_agent.engine import queries as q
from edge_agent.engine.graph import Workflow, tool_config

TOOLS = ("press", "weigh", "label", "light")  # press and label are not idempotent
IDEMPOTENT = {"weigh", "light"}


def workflows() -> dict:
    tools = {n: tool_config(n) for n in TOOLS}
    retry = RetryPolicy(max_attempts=4, initial_delay_s=0.01, multiplier=2, jitter=0.5)
    wf = (Workflow("cell")
          .tool("press", "press", args_from={"part": "input.part"}, next="weigh", retry=retry)
          .tool("weigh", "weigh", args_from={"part": "input.part"}, next="route", retry=retry)
          .branch("route", [("input.part % 2 == 0", "finish")], default="fan")
          .parallel("fan", ["label", "light"], join="all", next="finish")
          .tool("label", "label", args_from={"part": "input.part"})
          .tool("light", "light", args={"on": True})
          .end("finish")
          .build(tools=tools))
    return {"cell": wf}


def make_tools(ledger: Path) -> dict[str, ToolBinding]:
    rng = random.Random()

    def flaky(n: int) -> LedgerError | None:
        return LedgerError("transient", kind="timeout", retryable=True) \
            if rng.random() < 0.1 else None
    return {n: ToolBinding(LedgerTool(n, ledger, idempotent=n in IDEMPOTENT, fail=flaky,
                                      delay_s=rng.uniform(0.0, 0.02)))
            for n in TOOLS}


async def main(db: Path, ledger: Path, runs: int) -> None:
    h = Harness(db, workflows(), make_tools(ledger))
    engine = await h.start()
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
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])))
