"""Versioned workflows: a run keeps the definition it started with; moving it is explicit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support.engine import STAMP, Harness, LedgerTool, ledger_lines

from edge_agent.engine import ToolBinding, VersionError, decide_approval, migrate_run, versions
from edge_agent.engine import queries as q
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.store import Store


def stamp_parts(gate: str = "gate") -> Any:
    return (Workflow("stamp_parts")
            .tool("first", "stamp", args={"part": "A"}, next="second")
            .tool("second", "stamp", args={"part": "B"}, next=gate)
            .approval(gate, prompt="Ship it?", next="done")
            .end("done")
            .build(tools={"stamp": tool_config("stamp", STAMP)}))


def test_the_version_is_a_digest_of_the_graph_and_round_trips() -> None:
    wf = stamp_parts()
    assert versions.version_of(wf) == versions.version_of(stamp_parts())
    assert versions.version_of(wf) != versions.version_of(stamp_parts("review"))
    back = versions.from_definition("stamp_parts", versions._text(wf))
    assert back.start == wf.start and set(back.nodes) == set(wf.nodes)
    assert back.nodes == wf.nodes
    assert versions.version_of(back) == versions.version_of(wf)


def test_a_waiting_run_finishes_on_its_pinned_version_after_a_renamed_gate(
        db_path: Path, ledger: Path) -> None:
    """Issue 18, observation 3: A and B stamped, the run waits at `gate`; the gate is renamed
    to `review` and the daemon restarted; after approval the run completes on the graph it
    started with, and new runs take the new one."""
    stamp = ToolBinding(LedgerTool("stamp", ledger))
    old = Harness(db_path, {"stamp_parts": stamp_parts()}, {"stamp": stamp})

    async def first() -> str:
        await old.start()
        try:
            rid = old.queue("stamp_parts", {})
            await old.wait(rid, "waiting_approval")
            return rid
        finally:
            await old.stop()
    rid = asyncio.run(first())
    new = Harness(db_path, {"stamp_parts": stamp_parts("review")}, {"stamp": stamp})

    async def second() -> None:
        await new.start()
        try:
            decide_approval(new.writer.write, rid, approve=True, by="alice")
            new.engine.wake(rid)
            done = await new.wait(rid, "completed")
            assert done.version == versions.version_of(stamp_parts())
            assert [s["node"] for s in new.steps(rid)] == ["first", "second", "gate", "done"]
            other = new.queue("stamp_parts", {})
            waiting = await new.wait(other, "waiting_approval")
            assert waiting.node == "review"
            assert waiting.version == versions.version_of(stamp_parts("review"))
        finally:
            await new.stop()
    asyncio.run(second())
    assert [e["args"]["part"] for e in ledger_lines(ledger)] == ["A", "B", "A", "B"]
    store = Store(db_path)
    try:  # the finished run's definition is dropped at the next start, the waiting one's kept
        kept = store.read(lambda c: versions.stored(c, "stamp_parts"))
        assert versions.version_of(stamp_parts("review")) in kept
    finally:
        store.close()


def test_runs_queued_before_versions_are_pinned_at_the_next_start(db_path: Path,
                                                                  ledger: Path) -> None:
    stamp = ToolBinding(LedgerTool("stamp", ledger))
    h = Harness(db_path, {"stamp_parts": stamp_parts()}, {"stamp": stamp})

    async def main() -> None:
        from edge_agent.engine import queue_run
        store = Store(db_path)
        rid = queue_run(store.write, workflow="stamp_parts", input={},
                        workflows={"stamp_parts": stamp_parts()})
        store.write(lambda c: c.execute("UPDATE runs SET version = NULL"))
        store.close()
        await h.start()
        try:
            run = await h.wait(rid, "waiting_approval")
            assert run.version == versions.version_of(stamp_parts())
        finally:
            await h.stop()
    asyncio.run(main())


def _waiting_run(db_path: Path, ledger: Path) -> str:
    h = Harness(db_path, {"stamp_parts": stamp_parts()},
                {"stamp": ToolBinding(LedgerTool("stamp", ledger))})

    async def main() -> str:
        await h.start()
        try:
            rid = h.queue("stamp_parts", {})
            await h.wait(rid, "waiting_approval")
            return rid
        finally:
            await h.stop()
    return asyncio.run(main())


def test_migrate_moves_a_waiting_run_only_when_its_node_exists(db_path: Path,
                                                               ledger: Path) -> None:
    rid = _waiting_run(db_path, ledger)
    renamed = stamp_parts("review")
    new = versions.version_of(renamed)
    store = Store(db_path)
    try:
        with pytest.raises(VersionError, match=r"node 'gate'.*--map gate=NODE"):
            store.write(lambda c: migrate_run(c, rid, to_version=new[:8], mapping={},
                                              current=renamed))
        with pytest.raises(VersionError, match="names no version"):
            store.write(lambda c: migrate_run(c, rid, to_version="ffffffff", mapping={},
                                              current=renamed))
        with pytest.raises(VersionError, match="has no node 'nope'"):
            store.write(lambda c: migrate_run(c, rid, to_version=new[:8],
                                              mapping={"gate": "nope"}, current=renamed))
        moved = store.write(lambda c: migrate_run(c, rid, to_version=new[:8],
                                                  mapping={"gate": "review"}, current=renamed))
        assert moved["node"] == "review" and moved["to"] == new[:12]
        run = store.read(lambda c: q.get_run(c, rid))
        assert run.version == new and run.node == "review" and "review" in run.visits
    finally:
        store.close()
    h = Harness(db_path, {"stamp_parts": renamed},
                {"stamp": ToolBinding(LedgerTool("stamp", ledger))})

    async def finish() -> None:
        await h.start()
        try:
            decide_approval(h.writer.write, rid, approve=True, by="bob")
            h.engine.wake(rid)
            await h.wait(rid, "completed")
            assert [s["node"] for s in h.steps(rid)] == ["first", "second", "review", "done"]
        finally:
            await h.stop()
    asyncio.run(finish())


def test_a_reload_changes_only_new_runs(db_path: Path, ledger: Path) -> None:
    """What SIGHUP does (the engine's workflows replaced) leaves a waiting run's graph as it
    was; a run queued after it takes the new one."""
    stamp = ToolBinding(LedgerTool("stamp", ledger))
    h = Harness(db_path, {"stamp_parts": stamp_parts()}, {"stamp": stamp})

    async def main() -> None:
        await h.start()
        try:
            old = h.queue("stamp_parts", {})
            await h.wait(old, "waiting_approval")
            h.workflows = {"stamp_parts": stamp_parts("review")}
            h.engine.workflows = h.workflows  # the reload
            new = h.queue("stamp_parts", {})
            assert (await h.wait(new, "waiting_approval")).node == "review"
            for rid in (old, new):
                decide_approval(h.writer.write, rid, approve=True, by="alice")
                h.engine.wake(rid)
            await h.wait(old, "completed")
            await h.wait(new, "completed")
            assert [s["node"] for s in h.steps(old)][-2:] == ["gate", "done"]
            assert [s["node"] for s in h.steps(new)][-2:] == ["review", "done"]
        finally:
            await h.stop()
    asyncio.run(main())
