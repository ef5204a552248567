"""Pure steps go on at COMMIT; a step with an effect outside waits until everything before
it is on disk (the writer commits, then syncs: edge_agent/store/writer.py)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from support.engine import Harness

from edge_agent.engine import ToolBinding, queue_run
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.store import writer as writer_module


class Pure:
    blocks = False  # pure computation (the python tool kind's `blocks = false`)

    def __init__(self, name: str, seen: list[str]) -> None:
        self.name, self.idempotent, self.seen = name, True, seen

    def call(self, args: Mapping[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        self.seen.append(self.name)
        return {"n": len(self.seen)}


class Effect:
    """A tool with an effect outside (it blocks, like every device tool). Idempotent: no
    intent is written before it (a fenced tool's intent is a write that waits for the disk
    anyway), so only the engine's choice of when to go on keeps it behind the disk."""

    def __init__(self, writer: Any, seen: list[str]) -> None:
        self.name, self.idempotent, self.writer, self.seen = "effect", True, writer, seen
        self.on_disk_at_call: list[bool] = []

    def call(self, args: Mapping[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        w = self.writer()
        self.on_disk_at_call.append(w._synced >= w._begun)
        self.seen.append("effect")
        return {"ok": True}


def test_a_pure_step_runs_before_the_fsync_and_an_effect_only_after(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    gate, waiting = threading.Event(), threading.Event()
    real = os.fdatasync

    def held(fd: int) -> None:
        waiting.set()
        assert gate.wait(10)
        real(fd)
    wf = Workflow("w")
    wf.tool("p1", "p1", next="p2")
    wf.tool("p2", "p2", next="fx")
    wf.tool("fx", "effect", next="done")
    wf.end("done")
    tools = {n: tool_config(n) for n in ("p1", "p2", "effect")}
    workflows = {"w": wf.build(tools=tools)}
    h: Harness
    effect = Effect(lambda: h.writer, seen)
    bindings = {"p1": ToolBinding(Pure("p1", seen)), "p2": ToolBinding(Pure("p2", seen)),
                "effect": ToolBinding(effect)}
    h = Harness(db_path, workflows, bindings)

    async def main() -> None:
        await h.start()
        try:
            rid = queue_run(h.writer.write, workflow="w", input={}, workflows=workflows)
            assert h.writer._defer  # FULL in WAL mode: the writer syncs after it commits
            monkeypatch.setattr(writer_module.os, "fdatasync", held)
            h.engine.wake(rid)
            assert await asyncio.to_thread(waiting.wait, 10)  # p1's commit waits for the disk
            for _ in range(200):  # ... and p2 runs meanwhile: it has no effect outside
                if "p2" in seen:
                    break
                await asyncio.sleep(0.01)
            assert seen == ["p1", "p2"]
            await asyncio.sleep(0.3)
            assert seen == ["p1", "p2"], "a step with an effect ran before the disk had p1, p2"
            gate.set()
            await h.wait(rid, "completed")
            assert seen == ["p1", "p2", "effect"] and effect.on_disk_at_call == [True]
        finally:
            gate.set()
            await h.stop()
    asyncio.run(main())


def test_what_counts_as_pure_follows_a_reload(db_path: Path) -> None:
    """Which nodes may run before the disk has the step before them is remembered per node,
    for the tools loaded now: a reload that makes a tool blocking changes the answer."""
    from edge_agent.engine.records import Run

    seen: list[str] = []
    wf = Workflow("w")
    wf.tool("t", "calc", next="b")
    wf.branch("b", [("true", "done")], default="done")
    wf.end("done")
    workflows = {"w": wf.build(tools={"calc": tool_config("calc")})}
    h = Harness(db_path, workflows, {"calc": ToolBinding(Pure("calc", seen))})

    def at(node: str) -> Run:
        return Run(run_id="r", workflow="w", status="running", node=node, node_state={},
                   visits={}, input={}, context={}, output=None, error=None, origin="local",
                   trace_id=None, span_id=None, cancel_requested=False, created_at=0.0,
                   updated_at=0.0, finished_at=None)

    async def main() -> None:
        engine = await h.start()
        try:
            pure = engine.catalog.pure
            assert pure(at("t")) and pure(at("b")) and pure(at("done"))
            blocking = Pure("calc", seen)
            blocking.blocks = True  # type: ignore[misc]
            engine.tools = {"calc": ToolBinding(blocking)}  # what a reload does
            assert not pure(at("t")) and pure(at("b"))
            engine.tools = {"calc": ToolBinding(Effect(lambda: h.writer, seen))}
            assert not pure(at("t"))  # neither idempotent nor free of waits
        finally:
            await h.stop()
    asyncio.run(main())
