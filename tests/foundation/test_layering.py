"""The tree is the architecture: who may import whom, checked on the source and in a
fresh interpreter. Imports inside functions count; `if TYPE_CHECKING:` blocks do not
(they never run)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("edge_agent", "sync", "hardware")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_pkg: bool, files: set[str],
             type_checking: bool = False) -> set[str]:
    """What `module` imports. `from pkg import submodule` counts the submodule, not pkg's
    __init__; a module's own ancestor packages are never counted (they are already running
    when it is imported)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = {f"{mod}.{a.name}" for a in node.names} & files
            found.update(subs)
            if len(subs) < len(node.names) and not module.startswith(mod + "."):
                found.add(mod)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph(type_checking: bool = False) -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        raw = _imports(ast.parse(path.read_text()), name, path.name == "__init__.py",
                       set(files), type_checking)
        graph[name] = {m for m in raw if m in files and m != name}
    return graph


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _package_of(module: str) -> str:
    return module.split(".")[0]


def test_hardware_and_sync_import_nothing_of_edge_agent() -> None:
    for module, deps in _graph().items():
        if _package_of(module) == "hardware":
            assert {d for d in deps if _package_of(d) != "hardware"} == set(), module
        if _package_of(module) == "sync":
            assert {d for d in deps if _package_of(d) == "edge_agent"} == set(), module


def test_engine_imports_nothing_of_daemon_or_cli() -> None:
    graph = _graph()
    for module in graph:
        if module.startswith("edge_agent.engine"):
            bad = {d for d in _reaches(graph, module)
                   if d.startswith(("edge_agent.daemon", "edge_agent.cli"))}
            assert bad == set(), module


def test_store_imports_nothing_of_the_engine() -> None:
    """The store knows tables, never runs: what acts on a run lives on the engine's side."""
    graph = _graph()
    for module in graph:
        if module.startswith("edge_agent.store"):
            bad = {d for d in _reaches(graph, module)
                   if d.startswith(("edge_agent.engine", "edge_agent.daemon", "edge_agent.cli",
                                    "edge_agent.agents", "edge_agent.inference"))}
            assert bad == set(), module


def test_config_builds_no_tool_and_opens_nothing() -> None:
    """config reaches the tool kinds' option checks, never the builders or the store."""
    graph = _graph()
    reached = set().union(*(_reaches(graph, m) | {m} for m in graph
                            if m.startswith("edge_agent.config")))
    forbidden = ("edge_agent.tools.registry", "edge_agent.tools.base", "edge_agent.store",
                 "edge_agent.engine", "edge_agent.daemon", "edge_agent.agents")
    assert {m for m in reached if m.startswith(forbidden)} == set()


def test_no_import_circles() -> None:
    graph = _graph()
    circles = sorted(f"{module} -> {dep}" for module in graph for dep in graph[module]
                     if module in _reaches(graph, dep))
    assert circles == []


def test_the_engine_has_no_circle_even_for_type_checking() -> None:
    """The node handlers see the engine through `engine.ports.Driver`, a Protocol: no
    engine module refers back to the one that drives it, not even for the type checker."""
    graph = _graph(type_checking=True)
    engine = {m: {d for d in deps if d.startswith("edge_agent.engine")}
              for m, deps in graph.items() if m.startswith("edge_agent.engine")}
    circles = sorted(f"{module} -> {dep}" for module in engine for dep in engine[module]
                     if module in _reaches(engine, dep))
    assert circles == []
    # the pure core reads no store and drives nothing
    core = _reaches(graph, "edge_agent.engine.transitions")
    assert not {m for m in core if m.startswith(("edge_agent.store", "edge_agent.engine.engine",
                                                 "edge_agent.engine.nodes", "sync"))}


def test_loading_a_config_loads_no_tool_builder(tmp_path: Path) -> None:
    code = ("import json, sys; from edge_agent.config import load_config; "
            f"load_config({str(ROOT / 'systemd/edge-agent.example.toml')!r}); "
            "print(json.dumps(sorted(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stdout))
    assert not {m for m in loaded if m.startswith(
        ("edge_agent.tools.registry", "edge_agent.store", "edge_agent.engine",
         "edge_agent.daemon", "llama_cpp", "serial", "pymodbus", "paho"))}
