"""The durable workflow engine."""

from edge_agent.engine.bindings import AgentRunner, ToolBinding, UnknownOutcome
from edge_agent.engine.control import decide_approval, queue_run, request_cancel
from edge_agent.engine.engine import Engine
from edge_agent.engine.records import STATUSES, TERMINAL, Run

__all__ = ["STATUSES", "TERMINAL", "AgentRunner", "Engine", "Run", "ToolBinding",
           "UnknownOutcome", "decide_approval", "queue_run", "request_cancel"]
