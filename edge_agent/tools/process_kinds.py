"""The `command` kind (a fixed argv, no shell) and the `python` kind (`module:function`)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent.tools.options import BoundCall, Problems, is_int, unknown_keys

DEFAULT_MAX_OUTPUT = 64 * 1024
MAX_OUTPUT_CEILING = 16 * 1024 * 1024  # output is held in memory and journaled: bounded
PINNING_KEYWORDS = ("enum", "const", "pattern")


def check_command(options: Mapping[str, Any], base_dir: Path) -> Problems:
    from hardware.command import placeholders
    problems = unknown_keys(options, {"argv", "max_output_bytes", "env", "cwd"})
    argv = options.get("argv")
    if argv is None:
        problems.append(("argv", "is required", None))
    elif not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        problems.append(("argv", "must be a non-empty list of strings", argv))
    elif not argv[0]:
        problems.append(("argv", "argv[0] must name a program", argv))
    else:
        try:
            placeholders(argv)
        except ValueError as exc:
            problems.append(("argv", str(exc), argv))
    limit = options.get("max_output_bytes", DEFAULT_MAX_OUTPUT)
    if not is_int(limit) or limit < 1:
        problems.append(("max_output_bytes", "must be a positive integer", limit))
    elif limit > MAX_OUTPUT_CEILING:
        problems.append(("max_output_bytes", f"must be <= {MAX_OUTPUT_CEILING} (16 MiB)", limit))
    env = options.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in env.items()):
        problems.append(("env", "must be a table of strings", env))
    cwd = options.get("cwd", ".")
    if not isinstance(cwd, str) or not cwd:
        problems.append(("cwd", "must be a folder path", cwd))
    elif not (base_dir / cwd).is_dir():
        problems.append(("cwd", "is not a folder", cwd))
    return problems


def free_values(params: Mapping[str, Any] | None) -> frozenset[str]:
    """Parameters whose schema pins their values down (`enum`, `const`, `pattern`): values
    the operator admitted explicitly, so a leading `-` or a `..` in them is intended."""
    props = (params or {}).get("properties", {})
    return frozenset(k for k, v in dict(props).items()
                     if isinstance(v, Mapping) and any(p in v for p in PINNING_KEYWORDS))


def build_command(name: str, options: Mapping[str, Any], base_dir: Path, timeout_s: float,
                  params: Mapping[str, Any] | None = None) -> BoundCall:
    from hardware.command import CommandRunner
    cwd = base_dir / str(options.get("cwd") or ".")
    runner = CommandRunner(options["argv"], cwd=cwd, timeout_s=timeout_s,
                           max_output_bytes=int(options.get("max_output_bytes",
                                                            DEFAULT_MAX_OUTPUT)),
                           env=options.get("env"), free_values=free_values(params))
    return BoundCall(lambda args, key: runner.run(args, idempotency_key=key))


def check_python(options: Mapping[str, Any], base_dir: Path) -> Problems:
    problems = unknown_keys(options, {"entry", "blocks"})
    if not isinstance(options.get("blocks", True), bool):
        problems.append(("blocks", "must be true or false", options["blocks"]))
    entry = options.get("entry")
    module, _, attr = entry.partition(":") if isinstance(entry, str) else ("", "", "")
    if not module or not attr.isidentifier():
        problems.append(("entry", "must be \"package.module:function\"", entry))
        return problems
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        problems.append(("entry", f"module {module!r} cannot be found", entry))
    return problems


def build_python(name: str, options: Mapping[str, Any], base_dir: Path, timeout_s: float
                 ) -> BoundCall:
    module, _, attr = str(options["entry"]).partition(":")
    fn = getattr(importlib.import_module(module), attr)
    if not callable(fn):
        raise TypeError(f"{options['entry']} is not callable")
    takes_key = "idempotency_key" in inspect.signature(fn).parameters

    def call(args: Mapping[str, Any], key: str) -> dict[str, Any]:
        result: dict[str, Any] = fn(**args, idempotency_key=key) if takes_key else fn(**args)
        return result
    # `blocks = false`: pure computation, called on the engine's worker without a hand-over
    return BoundCall(call, blocks=bool(options.get("blocks", True)))
