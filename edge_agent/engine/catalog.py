"""What the engine knows of the workflows and tools it has loaded: the definition each run
is pinned to, which calls are fenced by an intent, which nodes are pure computation, and
whether a run's start can ride on its first node's commit. A reload replaces `workflows`
and `tools`, and with them every remembered answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge_agent.config.model import NodeConfig, WorkflowConfig
from edge_agent.engine import versions
from edge_agent.engine.bindings import RemoteTool, ToolBinding
from edge_agent.engine.records import Run
from edge_agent.store.backend import Database


class Catalog:
    def __init__(self, store: Database, workflows: Mapping[str, WorkflowConfig],
                 tools: Mapping[str, ToolBinding]) -> None:
        self.store = store
        self.workflows = workflows
        self.tools = tools
        self._pinned: dict[tuple[str, str], WorkflowConfig] = {}  # definitions read back
        # (for which workflows, name -> (definition, version)): the loaded versions
        self._live: tuple[Any, dict[str, tuple[WorkflowConfig, str]]] = (None, {})
        self._pure_known: tuple[Any, Any, dict[tuple[str, str | None, str | None], bool]] = (
            None, None, {})
        self._fenced_known: tuple[Any, dict[str, bool]] = (None, {})

    def definition(self, run: Run) -> WorkflowConfig | None:
        """The workflow definition the run is pinned to: the loaded one while it is the same
        version, else the one stored when the run was queued (a reload or an upgrade never
        changes the graph of a run in flight)."""
        live = self._live
        if live[0] is not self.workflows:  # loaded anew (a reload): their versions, once
            live = self._live = (self.workflows, {name: (wf, versions.version_of(wf))
                                                  for name, wf in self.workflows.items()})
        found = live[1].get(run.workflow)
        version = run.version
        if version is None or (found is not None and found[1] == version):
            return found[0] if found is not None else None
        key = (run.workflow, version)
        wf = self._pinned.get(key)
        if wf is None:
            wf = self.store.read(lambda c: versions.load(c, run.workflow, version))
            if wf is not None:
                self._pinned[key] = wf
        return wf

    def fenced(self, node: NodeConfig) -> bool:
        """Whether a tool node's call is fenced by an intent: a local, non-idempotent tool.
        Remembered per tool for the tools now loaded."""
        known = self._fenced_known
        if known[0] is not self.tools:
            known = self._fenced_known = (self.tools, {})
        name = node.tool or ""
        fenced = known[1].get(name)
        if fenced is None:
            binding = self.tools.get(name)
            fenced = known[1][name] = (binding is not None and not binding.idempotent
                                       and not isinstance(binding.tool, RemoteTool))
        return fenced

    def folds_begin(self, wf: WorkflowConfig) -> bool:
        """Whether a run's start can ride on its first node's commit: a start node with no
        side effect to fence (a crash before that commit leaves the run queued)."""
        start = wf.nodes[wf.start]
        if start.kind in ("branch", "end"):
            return True
        binding = self.tools.get(start.tool or "") if start.kind == "tool" else None
        return (binding is not None and binding.idempotent
                and not isinstance(binding.tool, RemoteTool))

    def pure(self, run: Run) -> bool:
        """Whether the run's next node has no effect outside the database: a branch, an end,
        or a tool declared pure computation (idempotent, `blocks = false`). Such a node may
        run before the commit of the step before it is on disk: after a power cut it simply
        runs again. Remembered per node for the workflows and tools now loaded."""
        known = self._pure_known
        if known[0] is not self.workflows or known[1] is not self.tools:
            known = self._pure_known = (self.workflows, self.tools, {})
        key = (run.workflow, run.version, run.node)
        pure = known[2].get(key)
        if pure is None:
            pure = known[2][key] = self._pure_node(self.definition(run), run.node)
        return pure

    def _pure_node(self, wf: WorkflowConfig | None, name: str | None) -> bool:
        node = wf.nodes.get(name) if wf is not None and name else None
        if node is None:
            return False
        if node.kind in ("branch", "end"):
            return True
        binding = self.tools.get(node.tool or "") if node.kind == "tool" else None
        return (binding is not None and binding.idempotent and not binding.blocks
                and not isinstance(binding.tool, RemoteTool))
