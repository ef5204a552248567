"""A process that starts run r1 of a one-tool workflow whose non-idempotent call takes an
hour, and marks (LEDGER.started) when the call is under way; the parent SIGKILLs it there.
Run: python -m support.slow_call_child TARGET LEDGER (TARGET: a SQLite path or a URL)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent.engine import ToolBinding, queue_run
from edge_agent.engine.graph import Workflow, tool_config
from support.engine import STAMP, Harness, LedgerTool


class SlowTool(LedgerTool):
    def call(self, args: Mapping[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        self.ledger.with_suffix(".started").write_text(idempotency_key)
        time.sleep(3600)
        return super().call(args, idempotency_key=idempotency_key)


async def main(target: str, ledger: Path) -> None:
    wf = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="done").end("done")
          .build(tools={"stamp": tool_config("stamp", STAMP)}))
    h = Harness(target, {"w": wf}, {"stamp": ToolBinding(SlowTool("stamp", ledger))})
    engine = await h.start()
    queue_run(h.writer.write, workflow="w", input={}, workflows=h.workflows, run_id="r1")
    engine.wake("r1")
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
