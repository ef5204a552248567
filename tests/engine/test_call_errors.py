"""A tool call's exception is classified in one place: an error that says the effect may
have happened is, for a fenced tool, an unknown outcome handled by `on_unknown`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from support.engine import STAMP, Harness, fast_retry

from edge_agent.engine import ToolBinding, decide_approval
from edge_agent.engine import queries as q
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.engine.transitions import call_error


class SentThenTimedOut(Exception):
    """The request reached the device; no reply came in time."""

    effect_may_have_happened = True
    kind = "timeout"
    retryable = True


class Relay:
    """A tiny python tool: the first call times out after sending, later ones answer."""

    name = "relay"

    def __init__(self, idempotent: bool) -> None:
        self.idempotent = idempotent
        self.calls = 0

    def call(self, args: Any, *, idempotency_key: str) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            raise SentThenTimedOut("no reply within 2s (request sent)")
        return {"switched": args["part"]}


def test_call_error_classifies() -> None:
    sent = call_error(SentThenTimedOut("x"), fenced=True)
    assert sent.unknown and sent.kind == "timeout" and sent.retryable
    assert not call_error(SentThenTimedOut("x"), fenced=False).unknown  # retry is recovery
    plain = call_error(ValueError("bad"), fenced=True)
    assert not plain.unknown and plain.kind == "ValueError" and not plain.retryable


def _workflow(on_unknown: str | None = None) -> Any:
    return (Workflow("w").tool("a", "relay", args={"part": "A"}, next="done",
                               on_unknown=on_unknown)
            .end("done").build(tools={"relay": tool_config("relay", STAMP)}))


def test_a_timeout_after_sending_escalates_like_a_crash(db_path: Path) -> None:
    relay = Relay(idempotent=False)
    h = Harness(db_path, {"w": _workflow()}, {"relay": ToolBinding(relay)})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {})
            await h.wait(rid, "waiting_approval")
            appr = h.store.read(lambda c: q.pending_approval(c, rid))
            assert appr["kind"] == "unknown_outcome" and appr["context"]["tool"] == "relay"
            calls = h.store.read(lambda c: q.tool_calls(c, rid))
            assert [c["status"] for c in calls] == ["unknown"]
            assert [s["status"] for s in h.steps(rid)] == ["interrupted"]
            assert "no reply within 2s (request sent)" in h.steps(rid)[0]["error"]
            assert "may have reached the device" in appr["prompt"]
            decide_approval(h.writer.write, rid, approve=False, by="op")  # it did not happen
            h.engine.wake(rid)
            done = await h.wait(rid, "completed")
            assert done.context["a"] == {"switched": "A"} and relay.calls == 2
        finally:
            await h.stop()
    asyncio.run(main())


def test_on_unknown_fail_and_idempotent_tools(db_path: Path) -> None:
    fenced = Relay(idempotent=False)
    again = Relay(idempotent=True)
    h = Harness(db_path, {"w": _workflow("fail")}, {"relay": ToolBinding(fenced)})
    h2 = Harness(db_path.with_name("b.db"), {"w": _workflow()},
                 {"relay": ToolBinding(again, retry=fast_retry(2))})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {})
            failed = await h.wait(rid, "failed")
            assert "outcome of relay is unknown" in failed.error and fenced.calls == 1
        finally:
            await h.stop()
        await h2.start()
        try:
            rid = h2.queue("w", {})
            await h2.wait(rid, "completed")  # a plain, retryable failure: retried
            assert again.calls == 2
        finally:
            await h2.stop()
    asyncio.run(main())
