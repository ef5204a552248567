"""Run and step rows as plain data, and the JSON encoding the store uses for them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

QUEUED, RUNNING, WAITING, COMPLETED, FAILED, CANCELLED = (
    "queued", "running", "waiting_approval", "completed", "failed", "cancelled")
STATUSES = (QUEUED, RUNNING, WAITING, COMPLETED, FAILED, CANCELLED)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})


_ENCODE = json.JSONEncoder(separators=(",", ":"), sort_keys=True, default=str).encode
_ORJSON = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> str:
    """Compact JSON with sorted keys; anything else becomes its str(). orjson is the engine's
    encoder (every transition encodes the run's context); what it refuses (integers beyond
    64 bits, strings that are not UTF-8) goes through the standard library's."""
    try:
        return orjson.dumps(value, default=str, option=_ORJSON).decode()
    except orjson.JSONEncodeError:
        return _ENCODE(value)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _version(row: Any) -> str | None:
    try:
        return row["version"]  # type: ignore[no-any-return]
    except IndexError:  # a database from before runs.version (read by a read-only CLI)
        return None


@dataclass(frozen=True)
class Run:
    run_id: str
    workflow: str
    status: str
    node: str | None
    node_state: dict[str, Any]
    visits: dict[str, int]
    input: Any
    context: dict[str, Any]
    output: Any
    error: str | None
    origin: str
    trace_id: str | None
    span_id: str | None
    cancel_requested: bool
    created_at: float
    updated_at: float
    finished_at: float | None
    version: str | None = None  # the workflow definition the run is pinned to

    @classmethod
    def from_row(cls, row: Any) -> Run:
        return cls(run_id=row["run_id"], workflow=row["workflow"], status=row["status"],
                   node=row["node"], node_state=loads(row["node_state"]) or {},
                   visits=loads(row["visits"]) or {}, input=loads(row["input"]),
                   context=loads(row["context"]) or {}, output=loads(row["output"]),
                   error=row["error"], origin=row["origin"], trace_id=row["trace_id"],
                   span_id=row["span_id"], cancel_requested=bool(row["cancel_requested"]),
                   created_at=row["created_at"], updated_at=row["updated_at"],
                   finished_at=row["finished_at"], version=_version(row))

    def moved(self, **changes: Any) -> Run:
        """A copy with some fields changed: `dataclasses.replace` without its per-field
        checks, for the engine's hot path (the fields are this class's own)."""
        new = object.__new__(Run)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def visit(self, node: str) -> int:
        return int(self.visits.get(node, 1))

    def summary(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "workflow": self.workflow,
                "version": None if self.version is None else self.version[:12],
                "status": self.status, "node": self.node, "created_at": self.created_at,
                "updated_at": self.updated_at, "finished_at": self.finished_at,
                "error": self.error}
