"""What the console shows and does, over the same library as the CLI.

Reads go to sync.cloud.views (the projection the CLI lists) and sync.cloud.deployments;
approve and reject go to sync.cloud.decisions.decide, the one function behind
`edge-agent-cloud approve|reject`, and abort to sync.cloud.deployments.abort, the one behind
`edge-agent-cloud deployment abort`. Each read returns the context of one template.
"""

from __future__ import annotations

import logging
from argparse import ArgumentTypeError
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sync.cloud import deployments as deps
from sync.cloud import views
from sync.cloud.console.rollouts import waves
from sync.cloud.views import ViewError
from sync.cloud.views_cli import parse_since

log = logging.getLogger(__name__)
SHOWN = 200  # approvals on one page, oldest first
Decide = Callable[..., dict[str, Any]]  # decisions.decide with cfg and store bound


class Fleet:
    def __init__(self, store: Any, decide: Decide,
                 groups: Mapping[str, Sequence[str]] | None = None) -> None:
        self.store = store
        self._decide = decide
        self.groups = {name: list(devs) for name, devs in (groups or {}).items()}

    def devices(self) -> dict[str, Any]:
        return {"devices": views.devices(self.store, groups=self.groups)}

    def runs(self, *, device: str | None, group: str | None, status: str | None,
             workflow: str | None, since: str | None, limit: int) -> dict[str, Any]:
        filters = {"device": device, "group": group, "status": status, "workflow": workflow,
                   "since": since, "limit": limit}
        out: dict[str, Any] = {"filters": filters, "groups": sorted(self.groups), "runs": [],
                               "statuses": views.STATUSES, "error": None}
        try:
            after = None if since is None else parse_since(since)
            out["runs"] = views.runs(self.store, device=device, group=group, status=status,
                                     workflow=workflow, since=after, limit=limit,
                                     groups=self.groups)
        except ArgumentTypeError as exc:
            out["error"] = f"since: {exc}"
        except ViewError as exc:
            out["error"] = str(exc).removeprefix("--")
        return out

    def run(self, device: str, run_id: str) -> dict[str, Any]:
        try:
            trace = views.trace(self.store, device, run_id)
        except ViewError:
            trace = None
        return {"device": device, "run_id": run_id, "trace": trace,
                "run": views.run(self.store, device, run_id)}

    def approvals(self) -> dict[str, Any]:
        """The oldest SHOWN pending approvals (a page of 50,000 rows helps nobody)."""
        pending = views.approvals(self.store)
        return {"approvals": pending[:SHOWN], "more": max(0, len(pending) - SHOWN)}

    def conflicts(self) -> dict[str, Any]:
        return {"conflicts": views.conflicts(self.store)}

    def deployments(self) -> dict[str, Any]:
        return {"deployments": deps.deployments(self.store)}

    def deployment(self, dep_id: str) -> dict[str, Any]:
        d = deps.deployment(self.store, dep_id)
        return {"dep_id": dep_id, "deployment": d, "waves": [] if d is None else waves(d)}

    def abort(self, dep_id: str, by: str) -> bool:
        """Stop a running deployment, as `deployment abort ID` does; False if not running."""
        stopped = deps.abort(self.store, dep_id)
        if stopped:
            log.info("deployment %s aborted by %s from the console", dep_id, by)
        return stopped

    def decide(self, *, device: str, run_id: str, approval_id: int, approve: bool,
               note: str | None, patch: dict[str, Any] | None, by: str) -> str:
        """Send the decision (DecisionError when the cloud will not); a line for the page."""
        out = self._decide(device=device, run_id=run_id, approval_id=approval_id,
                           approve=approve, note=note, patch=patch, by=by)
        verb = "approved" if approve else "rejected"
        return (f"{verb} approval {approval_id} of run {run_id} on {device}: command "
                f"{out.get('command_id')} {out.get('state', 'sent')}")
