"""The tool journal: an intent is committed before a side effect, its result after.

Keys are derived from (run, node and visit, turn, call index, attempt), so a replay finds the
same row. An idempotent tool writes no separate intent (re-running it is harmless), which
saves a commit; a non-idempotent tool is never run twice for one intent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from edge_agent.engine import queries as q
from edge_agent.engine.bindings import ToolBinding, UnknownOutcome
from edge_agent.engine.transitions import call_error, call_key
from edge_agent.store.backend import Database, Writer

log = logging.getLogger(__name__)




def scope_matches(scope: str, step: dict[str, Any], attempt: int | None = None) -> bool:
    """A journal scope is `node#visit` (tools) or `node#visit.attempt.segment` (agents),
    after `parallel/` for branches."""
    name, _, rest = scope.split("/")[-1].partition("#")
    if name != step["node"]:
        return False
    parts = rest.split(".")
    if not parts[0].isdigit() or int(parts[0]) != step["visit"]:
        return False
    if len(parts) >= 2:
        return int(parts[1]) == int(step["attempt"])
    return attempt is None or attempt == step["attempt"]


class CallResult(NamedTuple):
    """A tool call's outcome (a NamedTuple: built once per step on the hot path)."""

    ok: bool
    result: dict[str, Any] | None
    error: str | None
    kind: str | None
    retryable: bool
    started_at: float
    unknown: bool = False  # a fenced call whose effect may have happened (see call_error)


def tool_error(message: str, kind: str, retryable: bool, fields: Mapping[str, Any] | None = None
               ) -> Exception:
    """Build the tool layer's error, as the agent loop expects it."""
    from edge_agent.tools.base import ToolError
    return ToolError(message, kind=kind, retryable=retryable, fields=dict(fields or {}))


class ToolJournal:
    """Runs tool calls durably from worker threads."""

    def __init__(self, store: Database, writer: Writer, tools: Mapping[str, ToolBinding],
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.writer = writer
        self.tools = tools
        self.clock = clock
        # a run's write with its lease's fence (set by the engine when runners share a database)
        self.scoped: Callable[[str, Callable[[Any], Any]], Callable[[Any], Any]] = \
            lambda run_id, fn: fn

    def execute(self, *, run_id: str, node: str, key: str, attempt: int, name: str,
                args: dict[str, Any], write_result: bool,
                intent_committed: bool = False) -> CallResult:
        """Intent (non-idempotent only, unless it is committed already), call, and, if
        asked, the result."""
        binding = self.tools[name]
        started = self.clock()
        if not binding.idempotent and not intent_committed:
            self.writer.write(self.scoped(run_id, lambda c: q.journal_intent(
                c, key=key, attempt=attempt, run_id=run_id, node=node, tool=name, args=args,
                now=started)))
        try:
            value = binding.tool.call(args, idempotency_key=key)
            res = CallResult(True, dict(value), None, None, False, started)
        except Exception as exc:  # noqa: BLE001 - every tool failure becomes a journal row
            err = call_error(exc, fenced=not binding.idempotent)
            res = CallResult(False, None, err.error, err.kind, err.retryable, started,
                             err.unknown)
        if res.ok:
            log.info("tool %s ok in %.0f ms", name, (self.clock() - started) * 1000,
                     extra={"tool": name})
        else:
            log.warning("tool %s %s (%s%s): %s", name,
                        "outcome unknown" if res.unknown else "failed", res.kind,
                        ", retryable" if res.retryable else "", res.error, extra={"tool": name})
        if write_result and not res.unknown:  # an unknown outcome leaves its intent standing
            self.writer.write(self.scoped(run_id, lambda c: self.record(
                c, run_id=run_id, node=node, key=key, attempt=attempt, name=name, args=args,
                res=res)))
        return res

    def record(self, conn: Any, *, run_id: str, node: str, key: str, attempt: int, name: str,
               args: dict[str, Any], res: CallResult) -> None:
        conn.execute(*self.result(run_id=run_id, node=node, key=key, attempt=attempt,
                                  name=name, args=args, res=res))

    def result(self, *, run_id: str, node: str, key: str, attempt: int, name: str,
               args: dict[str, Any], res: CallResult) -> tuple[str, tuple[Any, ...]]:
        """The call's outcome as a statement, for the transition that commits it."""
        return q.result_upsert(key=key, attempt=attempt, run_id=run_id, node=node, tool=name,
                               args=args, status="ok" if res.ok else "error",
                               result=res.result if res.ok else {"retryable": res.retryable},
                               error=res.error, error_kind=res.kind,
                               started_at=res.started_at, now=self.clock())

    def replay(self, key: str, attempt: int) -> dict[str, Any] | None:
        return self.store.read(lambda c: q.journal_get(c, key, attempt))


class DurableAgentContext:
    """The engine's implementation of the agent loop's journal protocol."""

    def __init__(self, journal: ToolJournal, *, run_id: str, scope: str, allowed: set[str] | None
                 = None) -> None:
        self.journal = journal
        self.run_id = run_id
        self.node = scope
        self.allowed = allowed

    def remembered(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        store = self.journal.store
        found = store.read(lambda c: q.memo_get(c, self.run_id, self.node, key))
        if found is not None:
            return dict(found)
        value = compute()
        now = self.journal.clock()
        self.journal.writer.write(self.journal.scoped(
            self.run_id, lambda c: q.memo_put(c, self.run_id, self.node, key, value, now)))
        return value

    def call_tool(self, name: str, args: dict[str, Any], *, turn: int,
                  index: int) -> dict[str, Any]:
        if name not in self.journal.tools or (self.allowed is not None and
                                               name not in self.allowed):
            raise tool_error(f"tool {name!r} is not available to this agent", "not_declared",
                             False)
        key = call_key(self.run_id, self.node, turn, index, 1)
        row = self.journal.replay(key, 1)
        if row is not None:
            status = row["status"]
            if status in ("ok", "confirmed"):
                return dict(row["result"] or {})
            if status == "error":  # as it failed the first time, retryability included
                raise tool_error(row["error"] or "failed", row["error_kind"] or "failed",
                                 bool((row["result"] or {}).get("retryable")))
            if status == "assumed_failed":
                raise tool_error("an operator said this call did not take effect",
                                 "unknown_outcome", True)
            raise UnknownOutcome(key, 1, name, row["args"])  # intent or unknown
        res = self.journal.execute(run_id=self.run_id, node=self.node, key=key, attempt=1,
                                   name=name, args=args, write_result=True)
        if res.unknown:
            raise UnknownOutcome(key, 1, name, args)
        if res.ok:
            return dict(res.result or {})
        raise tool_error(res.error or "failed", res.kind or "failed", res.retryable)
