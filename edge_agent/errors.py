"""The runtime's root exception and its few subclasses.

Every error carries its own retryability so callers never guess from the type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class EdgeAgentError(Exception):
    """Root of every error raised by edge_agent."""

    retryable: bool = False


class ConfigProblem(Protocol):
    """What a ConfigError needs of one issue: `sync.config_reader.ConfigIssue`, the reader
    shared with the cloud (named only structurally, so that importing errors loads no sync)."""

    @property
    def path(self) -> str: ...

    def render(self, file: str) -> str: ...


class ConfigError(EdgeAgentError):
    """The configuration cannot be used; lists every problem found, not just the first."""

    exit_code = 78  # EX_CONFIG: systemd must not restart-loop on it

    def __init__(self, file: str, issues: Sequence[ConfigProblem]) -> None:
        self.file = file
        self.issues = issues
        super().__init__("\n".join(i.render(file) for i in issues))


class StoreError(EdgeAgentError):
    """The device database failed."""

    exit_code = 74  # EX_IOERR


class StoreFull(StoreError):
    """The disk or the database's page limit is full; committed data is intact."""

    retryable = True

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path}: database or disk is full; committed data is intact, "
                         "writes resume once space is freed")


class SchemaTooNew(StoreError):
    """The database was written by a newer edge-agent."""

    def __init__(self, path: str, found: int, known: int) -> None:
        self.path, self.found, self.known = path, found, known
        super().__init__(f"{path}: schema version {found} is newer than this edge-agent "
                         f"understands ({known}); upgrade edge-agent or restore a backup")


class WorkflowError(EdgeAgentError):
    """A run cannot continue as declared (bad expression result, unknown node, ...)."""

    def __init__(self, message: str, *, run_id: str | None = None, node: str | None = None) -> None:
        self.run_id, self.node = run_id, node
        where = "".join(f"{k}={v} " for k, v in (("run", run_id), ("node", node)) if v)
        super().__init__(f"{where}{message}".strip())


class RunNotFound(EdgeAgentError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run {run_id!r}")


class NoPendingApproval(EdgeAgentError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} has no pending approval")


class StaleCommand(EdgeAgentError):
    """A command names a gate the run no longer waits at. `answer` goes back to the cloud
    in the command's result: the reason and what is pending now (None: nothing)."""

    def __init__(self, run_id: str, named: dict[str, Any], pending: dict[str, Any] | None
                 ) -> None:
        self.run_id = run_id
        self.answer = {"reason": "stale", "named": named, "pending": pending}
        now = ("nothing is pending" if pending is None else
               f"it waits at approval {pending['approval_id']} ({pending['node']} visit "
               f"{pending['visit']})")
        super().__init__(f"stale: the command names approval {named.get('approval_id')} "
                         f"({named.get('node')} visit {named.get('visit')}) of run {run_id!r};"
                         f" {now}")
