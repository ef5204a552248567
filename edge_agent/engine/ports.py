"""What the node handlers need from the engine that drives them, as a Protocol.

The handlers (`nodes`, `outcomes`, `parallel`) work a node out and hand the writes to the
driver; they never import the engine, so the engine imports them and no module imports
back (a test finds no import circle).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, Protocol

from edge_agent.config.model import NodeConfig, WorkflowConfig
from edge_agent.engine.bindings import AgentRunner, ToolBinding
from edge_agent.engine.journal import ToolJournal
from edge_agent.engine.records import Run
from edge_agent.engine.transitions import Intent, StepCall, Transition
from sync.dbapi import Connection

Tx = Callable[[Connection], Any]
Statement = tuple[str, tuple[Any, ...]]


class Driver(Protocol):
    """The engine as its node handlers see it."""

    tools: Mapping[str, ToolBinding]
    agent_runner: AgentRunner | None
    journal: ToolJournal
    stopping: threading.Event
    branch_pool: ThreadPoolExecutor
    clock: Callable[[], float]
    rand: Callable[[], float]

    # reading and writing (worker threads)
    def read(self, fn: Tx) -> Any: ...

    def write(self, fn: Tx, run_id: str | None = None) -> Any: ...

    def blocking(self, blocks: bool = True) -> AbstractContextManager[Any]: ...

    def emit(self, conn: Connection, stream: str, kind: str,
             payload: Mapping[str, Any]) -> None: ...

    def remember(self, conn: Connection, run_id: str) -> None: ...

    def changed(self, run_id: str) -> None: ...

    # a run's definition and its calls
    def definition(self, run: Run) -> WorkflowConfig | None: ...

    def fenced(self, node: NodeConfig) -> bool: ...

    def take_armed(self, run_id: str) -> Intent | None: ...

    def backoff(self, policy: Any, attempt: int) -> float: ...

    # transitions
    def advance(self, run: Run, node: NodeConfig, *, output: Any, next_node: str | None,
                attempt: int = 1, started_at: float | None = None, extra: Tx | None = None,
                patch: Mapping[str, Any] | None = None, step_status: str = "completed",
                store_output: bool = True, call: StepCall | None = None,
                error: tuple[str, str] | None = None,
                result: Statement | None = None,
                wf: WorkflowConfig | None = None) -> bool: ...

    def commit(self, rid: str, t: Transition, extra: Tx | None = None,
               result: Statement | None = None) -> bool: ...

    def set_state(self, run: Run, state: Mapping[str, Any], extra: Tx | None = None,
                  status: str | None = None) -> None: ...

    def finish(self, run_id: str, status: str, *, error: str | None = None,
               output: Any = None, extra: Tx | None = None) -> None: ...

    # approval timeouts (thread-safe)
    def schedule_timeout(self, at: float, approval_id: int, run_id: str) -> None: ...


def both(*fns: Tx | None) -> Tx:
    """One transaction function that runs each of `fns` (None skipped) in order."""
    def run(conn: Connection) -> None:
        for fn in fns:
            if fn is not None:
                fn(conn)
    return run
