"""What the console shows and does, over the same library as the CLI.

Reads go to sync.cloud.views (the projection the CLI lists); approve and reject go to
sync.cloud.decisions.decide, the one function behind `edge-agent-cloud approve|reject`.
Each method returns the context of one template.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sync.cloud import views
from sync.cloud.store import SqlCloudStore

Decide = Callable[..., Any]  # decisions.decide with the sender bound: keyword arguments


class Fleet:
    def __init__(self, store: SqlCloudStore, decide: Decide,
                 groups: dict[str, tuple[str, ...]] | None = None) -> None:
        self.store = store
        self._decide = decide
        self.groups = dict(groups or {})

    def devices(self) -> dict[str, Any]:
        return {"devices": views.devices(self.store)}

    def runs(self, *, device: str | None, group: str | None, status: str | None,
             workflow: str | None, since: str | None, limit: int) -> dict[str, Any]:
        filters = {"device": device, "group": group, "status": status, "workflow": workflow,
                   "since": since, "limit": limit}
        return {"runs": views.runs(self.store, **filters), "filters": filters,
                "groups": sorted(self.groups)}

    def run(self, device: str, run_id: str) -> dict[str, Any]:
        return {"device": device, "run_id": run_id,
                "run": views.run(self.store, device, run_id),
                "trace": views.trace(self.store, device, run_id)}

    def approvals(self) -> dict[str, Any]:
        return {"approvals": views.approvals(self.store)}

    def conflicts(self) -> dict[str, Any]:
        return {"conflicts": views.conflicts(self.store)}

    def decide(self, *, device: str, run_id: str, approval_id: int, approve: bool,
               note: str | None, patch: dict[str, Any] | None, by: str) -> str:
        """Send the decision; a line for the page to show (what the CLI would print)."""
        outcome = self._decide(device=device, run_id=run_id, approval_id=approval_id,
                               approve=approve, note=note, patch=patch, by=by)
        verb = "approved" if approve else "rejected"
        return f"{verb} approval {approval_id} of run {run_id} on {device}: {outcome}"
