"""The durable workflow engine."""

from edge_agent.engine.bindings import AgentRunner, ToolBinding, UnknownOutcome
from edge_agent.engine.control import (
    VersionError,
    decide_approval,
    migrate_run,
    queue_run,
    request_cancel,
)
from edge_agent.engine.engine import Engine
from edge_agent.engine.records import STATUSES, TERMINAL, Run

__all__ = ["STATUSES", "TERMINAL", "AgentRunner", "Engine", "Run", "ToolBinding",
           "UnknownOutcome", "VersionError", "decide_approval", "migrate_run", "queue_run",
           "request_cancel"]
