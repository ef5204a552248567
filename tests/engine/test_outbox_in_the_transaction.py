"""The transactional outbox at the engine: a transition's state change and its outbox
records commit together or not at all. A full `checkpoints` stream refuses the records, and
the step, the run's checkpoint and the call's result roll back with them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from support.engine import STAMP, Harness

from edge_agent.engine import ToolBinding
from edge_agent.engine import queries as q
from edge_agent.engine.graph import Workflow, tool_config


class HeldTool:
    """Runs when the test lets it: the test fills the outbox while the call is out."""

    name = "press"
    idempotent = False

    def __init__(self) -> None:
        self.called = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def call(self, args: Mapping[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        self.calls += 1
        if args["part"] == "B":
            self.called.set()
            assert self.release.wait(10)
        return {"pressed": args["part"]}


def test_a_full_checkpoints_stream_rolls_the_step_back(db_path: Path) -> None:
    wf = (Workflow("w").tool("first", "press", args={"part": "A"}, next="second")
          .tool("second", "press", args={"part": "B"}, next="done").end("done")
          .build(tools={"press": tool_config("press", STAMP)}))
    tool = HeldTool()
    h = Harness(db_path, {"w": wf}, {"press": ToolBinding(tool)})

    def state(rid: str) -> Any:
        def read(c: Any) -> Any:
            run = q.get_run(c, rid)
            return (run.status, run.node, [s["node"] for s in q.steps(c, rid)],
                    tuple(c.execute("SELECT last_seq, pending_bytes FROM outbox_streams WHERE"
                                    " stream = 'checkpoints'").fetchone()),
                    [tuple(r) for r in c.execute("SELECT node, status, result FROM tool_calls"
                                                 " WHERE run_id = ? ORDER BY node", (rid,))])
        return h.store.read(read)

    async def main() -> None:
        engine = await h.start()
        try:
            rid = h.queue("w", {})
            assert await asyncio.to_thread(tool.called.wait, 10)  # "second" is out
            before = state(rid)
            assert before[:3] == ("running", "second", ["first"])
            engine.outbox_limits = {"checkpoints": before[3][1]}  # full: no record fits
            tool.release.set()
            await asyncio.sleep(0.5)
            # the step, the checkpoint and the call's result rolled back with the records
            assert state(rid) == before
            # room again: the call's outcome is unknown (it ran, nothing recorded it), so a
            # person is asked; it is never silently run again
            engine.outbox_limits = None
            engine.wake(rid)
            held = await h.wait(rid, "waiting_approval")
            assert held.node == "second" and tool.calls == 2
        finally:
            tool.release.set()
            await h.stop()
    asyncio.run(main())
