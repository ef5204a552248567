"""Tool kinds: validate each `[tools.<name>]` table's own keys, and build the tool."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_agent.tools.base import SchemaTool, Tool

Problems = list[tuple[str, str, Any]]
KINDS = frozenset({"serial", "modbus", "gpio", "command", "python", "remote"})


def _unknown(options: Mapping[str, Any], allowed: set[str]) -> Problems:
    return [(k, "unknown key", v) for k, v in options.items() if k not in allowed]


def _check_command(options: Mapping[str, Any], base_dir: Path) -> Problems:
    from hardware.command import placeholders
    problems = _unknown(options, {"argv", "max_output_bytes", "env", "cwd"})
    argv = options.get("argv")
    if argv is None:
        problems.append(("argv", "is required", None))
    elif not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        problems.append(("argv", "must be a non-empty list of strings", argv))
    else:
        try:
            placeholders(argv)
        except ValueError as exc:
            problems.append(("argv", str(exc), argv))
    limit = options.get("max_output_bytes", 65536)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        problems.append(("max_output_bytes", "must be a positive integer", limit))
    env = options.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        problems.append(("env", "must be a table of strings", env))
    return problems


def _build_command(name: str, options: Mapping[str, Any], base_dir: Path, timeout_s: float
                   ) -> Callable[[Mapping[str, Any], str], dict[str, Any]]:
    from hardware.command import CommandRunner
    cwd = Path(options.get("cwd", ".")) if options.get("cwd") else Path(".")
    runner = CommandRunner(options["argv"], cwd=cwd if cwd.is_absolute() else base_dir / cwd,
                           timeout_s=timeout_s,
                           max_output_bytes=int(options.get("max_output_bytes", 65536)),
                           env=options.get("env"))
    return lambda args, key: runner.run(args, idempotency_key=key)


def _check_python(options: Mapping[str, Any], base_dir: Path) -> Problems:
    problems = _unknown(options, {"entry"})
    entry = options.get("entry")
    if not isinstance(entry, str) or ":" not in entry:
        problems.append(("entry", "must be \"package.module:function\"", entry))
    return problems


def _build_python(name: str, options: Mapping[str, Any], base_dir: Path, timeout_s: float
                  ) -> Callable[[Mapping[str, Any], str], dict[str, Any]]:
    module, _, attr = str(options["entry"]).partition(":")
    fn = getattr(importlib.import_module(module), attr)
    takes_key = "idempotency_key" in inspect.signature(fn).parameters

    def call(args: Mapping[str, Any], key: str) -> dict[str, Any]:
        result: dict[str, Any] = fn(**args, idempotency_key=key) if takes_key else fn(**args)
        return result
    return call


def _not_here(kind: str) -> Callable[[Mapping[str, Any], Path], Problems]:
    def check(options: Mapping[str, Any], base_dir: Path) -> Problems:
        return [("kind", f"tool kind {kind!r} is not available in this build", kind)]
    return check


CHECKS: dict[str, Callable[[Mapping[str, Any], Path], Problems]] = {
    "command": _check_command, "python": _check_python,
}
BUILDERS: dict[str, Callable[..., Callable[[Mapping[str, Any], str], dict[str, Any]]]] = {
    "command": _build_command, "python": _build_python,
}


def check_tool_options(kind: str, options: Mapping[str, Any], base_dir: Path) -> Problems:
    """Validate the kind-specific keys of one [tools.<name>] table; never raises."""
    check = CHECKS.get(kind, _not_here(kind))
    try:
        return check(options, base_dir)
    except Exception as exc:  # noqa: BLE001 - a checker bug is still reported as a problem
        return [("kind", f"cannot check options: {exc}", kind)]


def build_tool(name: str, kind: str, *, description: str, params: Mapping[str, Any],
               result_schema: Mapping[str, Any] | None, idempotent: bool, timeout_s: float,
               options: Mapping[str, Any], base_dir: Path) -> Tool:
    fn = BUILDERS[kind](name, options, base_dir, timeout_s)
    close = getattr(fn, "close", None)
    return SchemaTool(name, fn, description=description, params=params,
                      result_schema=result_schema, idempotent=idempotent, timeout_s=timeout_s,
                      close=close)


def describe_tools(tools: Mapping[str, Tool]) -> list[dict[str, Any]]:
    return [{"name": t.name, "description": t.description, "params": dict(t.params),
             "idempotent": t.idempotent} for t in tools.values()]
