"""Workflow versions: a run is pinned to the definition it started with.

A version is the SHA-256 of the workflow's canonical definition: its start node and its
nodes, as sorted JSON with every field left at its default omitted (so a field the code
gains later does not change the version of a workflow that does not use it). The
definition is stored beside the runs (table `workflow_versions`) when a run is queued, and
kept while an unfinished run is pinned to it, so a reload or a restart with a changed
config never changes the graph of a run in flight; new runs take the new version. Moving a
run to another version is explicit and checked (`engine.control.migrate_run`).

Runs queued before versions existed (version NULL) are pinned, when the engine starts, to
the definition it has loaded then.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from edge_agent.config.model import (
    ApprovalSpec,
    BranchRule,
    NodeConfig,
    RetryPolicy,
    WorkflowConfig,
)
from edge_agent.engine.records import TERMINAL
from sync.dbapi import Connection

SHORT = 12  # hex digits a person sees; any unique prefix names a version


def short(version: str | None) -> str | None:
    return None if version is None else version[:SHORT]


# canonical form ------------------------------------------------------------------------------
def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            v = _encode(getattr(value, f.name))
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING
                else dataclasses.MISSING)
            if default is dataclasses.MISSING or v != _encode(default):
                out[f.name] = v
        return out
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, frozenset):
        return sorted(_encode(v) for v in value)
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    return value


def canonical(wf: WorkflowConfig) -> dict[str, Any]:
    """What a run's course depends on: the start node and the nodes (not the description
    or the trigger, which only decide how runs begin)."""
    return {"start": wf.start, "nodes": {n: _encode(node) for n, node in wf.nodes.items()}}


def _text(wf: WorkflowConfig) -> str:
    return json.dumps(canonical(wf), sort_keys=True, separators=(",", ":"), default=str)


_known: dict[int, tuple[WorkflowConfig, str, str]] = {}  # id -> (workflow, version, text)


def _entry(wf: WorkflowConfig) -> tuple[WorkflowConfig, str, str]:
    entry = _known.get(id(wf))
    if entry is None or entry[0] is not wf:
        text = _text(wf)
        entry = (wf, hashlib.sha256(text.encode()).hexdigest(), text)
        if len(_known) > 1024:  # reloads make new objects; the old ones need no entry
            _known.clear()
        _known[id(wf)] = entry
    return entry


def version_of(wf: WorkflowConfig) -> str:
    """The workflow's version (remembered per object: a loaded config does not change)."""
    return _entry(wf)[1]


def _only(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}  # a later field we do not know: ignored


def _node(data: Mapping[str, Any]) -> NodeConfig:
    d = _only(NodeConfig, data)
    for key in ("args", "args_from"):
        if key in d:
            d[key] = MappingProxyType(dict(d[key]))
    if "branch" in d:
        d["branch"] = tuple(BranchRule(**_only(BranchRule, r)) for r in d["branch"])
    if d.get("approval") is not None:
        a = _only(ApprovalSpec, d["approval"])
        a["show"] = tuple(a.get("show", ()))
        d["approval"] = ApprovalSpec(**a)
    if "branches" in d:
        d["branches"] = tuple(d["branches"])
    if d.get("retry") is not None:
        r = _only(RetryPolicy, d["retry"])
        if r.get("retry_on") is not None:
            r["retry_on"] = frozenset(r["retry_on"])
        d["retry"] = RetryPolicy(**r)
    return NodeConfig(**d)


def from_definition(workflow: str, text: str) -> WorkflowConfig:
    data = json.loads(text)
    return WorkflowConfig(name=workflow, start=data["start"], nodes=MappingProxyType(
        {name: _node(node) for name, node in data["nodes"].items()}))


# stored definitions ---------------------------------------------------------------------------
def register(conn: Connection, wf: WorkflowConfig, now: float | None = None) -> str:
    """Store the workflow's definition (once per version); returns the version."""
    _, version, text = _entry(wf)
    conn.execute("INSERT INTO workflow_versions (workflow, version, definition, created_at)"
                 " VALUES (?, ?, ?, ?) ON CONFLICT (workflow, version) DO NOTHING",
                 (wf.name, version, text, time.time() if now is None else now))
    return version


def load(conn: Connection, workflow: str, version: str) -> WorkflowConfig | None:
    row = conn.execute("SELECT definition FROM workflow_versions WHERE workflow = ? AND"
                       " version = ?", (workflow, version)).fetchone()
    return None if row is None else from_definition(workflow, row[0])


def stored(conn: Connection, workflow: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT version FROM workflow_versions WHERE workflow = ? ORDER BY created_at",
        (workflow,))]


def pin_unpinned(conn: Connection, workflows: Mapping[str, WorkflowConfig]) -> int:
    """Pin runs queued before versions existed to the definitions loaded now."""
    marks = ",".join("?" * len(TERMINAL))
    names = [r[0] for r in conn.execute(
        f"SELECT DISTINCT workflow FROM runs WHERE version IS NULL AND status NOT IN ({marks})",
        tuple(TERMINAL))]
    pinned = 0
    for name in names:
        wf = workflows.get(name)
        if wf is None:
            continue
        version = register(conn, wf)
        pinned += conn.execute(
            f"UPDATE runs SET version = ? WHERE workflow = ? AND version IS NULL AND status"
            f" NOT IN ({marks})", (version, name, *TERMINAL)).rowcount
    return pinned


def prune(conn: Connection) -> int:
    """Drop the definitions no unfinished run is pinned to (a finished run keeps its version
    string; its trace needs no graph)."""
    marks = ",".join("?" * len(TERMINAL))
    return conn.execute(
        "DELETE FROM workflow_versions WHERE NOT EXISTS (SELECT 1 FROM runs WHERE"
        " runs.workflow = workflow_versions.workflow AND runs.version ="
        f" workflow_versions.version AND runs.status NOT IN ({marks}))",
        tuple(TERMINAL)).rowcount


def in_flight_on_changed(conn: Connection, workflows: Mapping[str, WorkflowConfig]
                         ) -> list[dict[str, Any]]:
    """Unfinished runs pinned to a version other than the one `workflows` declares: where
    each stands, and whether its current node exists in the new version."""
    marks = ",".join("?" * len(TERMINAL))
    out = []
    for row in conn.execute(
            f"SELECT run_id, workflow, version, status, node FROM runs WHERE status NOT IN"
            f" ({marks}) ORDER BY created_at", tuple(TERMINAL)):
        wf = workflows.get(row["workflow"])
        new = version_of(wf) if wf is not None else None
        if row["version"] is not None and row["version"] == new:
            continue
        out.append({"run_id": row["run_id"], "workflow": row["workflow"],
                    "status": row["status"], "node": row["node"],
                    "version": short(row["version"]), "new_version": short(new),
                    "node_exists": wf is not None and (row["node"] is None
                                                        or row["node"] in wf.nodes)})
    return out
