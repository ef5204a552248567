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


class _Call:
    """A tool function with a close() for the resources behind it."""

    def __init__(self, fn: Callable[[Mapping[str, Any], str], dict[str, Any]],
                 close: Callable[[], None]) -> None:
        self.fn = fn
        self.close = close

    def __call__(self, args: Mapping[str, Any], key: str) -> dict[str, Any]:
        return self.fn(args, key)


def _path(base_dir: Path, value: str) -> str:
    p = Path(value)
    return str(p if p.is_absolute() or value.startswith("/dev/") else base_dir / p)


def _check_serial(options: Mapping[str, Any], base_dir: Path) -> Problems:
    import re
    from hardware.serial_line import template_fields
    problems = _unknown(options, {"port", "baudrate", "terminator", "encoding", "send", "expect",
                                  "error", "until", "request_id"})
    for key in ("port", "send", "expect"):
        if not isinstance(options.get(key), str) or not options.get(key):
            problems.append((key, "is required (a string)", options.get(key)))
    if isinstance(options.get("send"), str):
        try:
            template_fields(options["send"])
        except ValueError as exc:
            problems.append(("send", str(exc), options["send"]))
    for key in ("expect", "error"):
        if isinstance(options.get(key), str):
            try:
                re.compile(options[key])
            except re.error as exc:
                problems.append((key, f"is not a regular expression: {exc}", options[key]))
    baud = options.get("baudrate", 115200)
    if not isinstance(baud, int) or isinstance(baud, bool) or baud not in (
            1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600):
        problems.append(("baudrate", "must be a standard baud rate", baud))
    term = options.get("terminator", "\n")
    if not isinstance(term, str) or not term:
        problems.append(("terminator", "must be a non-empty string", term))
    if not isinstance(options.get("request_id", False), bool):
        problems.append(("request_id", "must be true or false", options.get("request_id")))
    return problems


def _build_serial(name: str, options: Mapping[str, Any], base_dir: Path, timeout_s: float,
                  result_schema: Mapping[str, Any] | None = None) -> _Call:
    from hardware.serial_line import SerialLine, SerialTool
    line = SerialLine(_path(base_dir, options["port"]),
                      baudrate=int(options.get("baudrate", 115200)),
                      terminator=options.get("terminator", "\n"),
                      encoding=options.get("encoding", "utf-8"), timeout_s=timeout_s)
    types = {k: v.get("type") for k, v in dict((result_schema or {}).get("properties", {}))
             .items() if isinstance(v, dict) and isinstance(v.get("type"), str)}
    tool = SerialTool(line, send=options["send"], expect=options["expect"],
                      error=options.get("error"), until=options.get("until"),
                      request_id=bool(options.get("request_id", False)), types=types)
    return _Call(lambda args, key: tool.call(args, idempotency_key=key), tool.close)


def _check_modbus(options: Mapping[str, Any], base_dir: Path) -> Problems:
    from hardware.modbus import Register
    problems = _unknown(options, {"transport", "host", "port", "baudrate", "unit",
                                  "registers"})
    transport = options.get("transport", "tcp")
    if transport not in ("tcp", "rtu"):
        problems.append(("transport", "must be \"tcp\" or \"rtu\"", transport))
    if transport == "tcp" and not isinstance(options.get("host"), str):
        problems.append(("host", "is required for tcp", options.get("host")))
    if transport == "rtu" and not isinstance(options.get("port"), str):
        problems.append(("port", "is required for rtu (a serial device path)",
                         options.get("port")))
    unit = options.get("unit", 1)
    if not isinstance(unit, int) or not 0 <= unit <= 247:
        problems.append(("unit", "must be 0..247", unit))
    regs = options.get("registers")
    if not isinstance(regs, dict) or not regs:
        problems.append(("registers", "must declare at least one register", regs))
        return problems
    for rname, spec in regs.items():
        if not isinstance(spec, dict):
            problems.append((f"registers.{rname}", "must be a table", spec))
            continue
        extra = set(spec) - {"table", "address", "type", "scale", "writable"}
        if extra:
            problems.append((f"registers.{rname}.{sorted(extra)[0]}", "unknown key",
                             spec[sorted(extra)[0]]))
            continue
        try:
            Register(rname, **spec)
        except (TypeError, ValueError) as exc:
            problems.append((f"registers.{rname}", str(exc), spec))
    return problems


def _build_modbus(name: str, options: Mapping[str, Any], base_dir: Path, timeout_s: float,
                  result_schema: Mapping[str, Any] | None = None) -> _Call:
    from hardware.modbus import ModbusDevice, Register
    regs = {n: Register(n, **spec) for n, spec in options["registers"].items()}
    transport = options.get("transport", "tcp")
    port = options.get("port", 502)
    dev = ModbusDevice(regs, transport=transport, host=options.get("host", ""),
                       port=_path(base_dir, port) if transport == "rtu" else port,
                       baudrate=int(options.get("baudrate", 19200)),
                       unit=int(options.get("unit", 1)), timeout_s=timeout_s)

    def call(args: Mapping[str, Any], key: str) -> dict[str, Any]:
        register = str(args.get("register"))
        if "value" in args:
            return {"register": register, "value": dev.write(register, args["value"]),
                    "written": True}
        return {"register": register, "value": dev.read(register)}
    return _Call(call, dev.close)


def _check_gpio(options: Mapping[str, Any], base_dir: Path) -> Problems:
    problems = _unknown(options, {"chip", "lines"})
    if not isinstance(options.get("chip"), str):
        problems.append(("chip", "is required (a /dev/gpiochipN path, or sim:NAME)",
                         options.get("chip")))
    lines = options.get("lines")
    if not isinstance(lines, dict) or not lines:
        problems.append(("lines", "must declare at least one line", lines))
        return problems
    for lname, spec in lines.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("offset"), int):
            problems.append((f"lines.{lname}", "needs an integer offset", spec))
            continue
        extra = set(spec) - {"offset", "direction", "active_low", "bias", "debounce_ms"}
        if extra:
            problems.append((f"lines.{lname}.{sorted(extra)[0]}", "unknown key", spec))
        if spec.get("direction", "input") not in ("input", "output"):
            problems.append((f"lines.{lname}.direction", "must be input or output",
                             spec.get("direction")))
        if spec.get("bias", "as_is") not in ("as_is", "disabled", "pull_up", "pull_down"):
            problems.append((f"lines.{lname}.bias", "must be as_is, disabled, pull_up or "
                             "pull_down", spec.get("bias")))
    return problems


def _build_gpio(name: str, options: Mapping[str, Any], base_dir: Path, timeout_s: float,
                result_schema: Mapping[str, Any] | None = None) -> _Call:
    from hardware.gpio import LineSpec, call, open_lines
    specs = {n: LineSpec(n, **spec) for n, spec in options["lines"].items()}
    lines = open_lines(options["chip"], specs)
    return _Call(lambda args, key: call(lines, args), lines.close)


def _check_remote(options: Mapping[str, Any], base_dir: Path) -> Problems:
    problems = _unknown(options, {"fallback"})
    fb = options.get("fallback")
    if fb is not None and not isinstance(fb, str):
        problems.append(("fallback", "must name a local tool", fb))
    return problems


def _not_here(kind: str) -> Callable[[Mapping[str, Any], Path], Problems]:
    def check(options: Mapping[str, Any], base_dir: Path) -> Problems:
        return [("kind", f"tool kind {kind!r} is not available in this build", kind)]
    return check


CHECKS: dict[str, Callable[[Mapping[str, Any], Path], Problems]] = {
    "command": _check_command, "python": _check_python, "serial": _check_serial,
    "modbus": _check_modbus, "gpio": _check_gpio, "remote": _check_remote,
}
BUILDERS: dict[str, Callable[..., Callable[[Mapping[str, Any], str], dict[str, Any]]]] = {
    "command": _build_command, "python": _build_python, "serial": _build_serial,
    "modbus": _build_modbus, "gpio": _build_gpio,
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
    builder = BUILDERS[kind]
    if kind in ("serial", "modbus", "gpio"):
        fn = builder(name, options, base_dir, timeout_s, result_schema)
    else:
        fn = builder(name, options, base_dir, timeout_s)
    close = getattr(fn, "close", None)
    return SchemaTool(name, fn, description=description, params=params,
                      result_schema=result_schema, idempotent=idempotent, timeout_s=timeout_s,
                      close=close)


def describe_tools(tools: Mapping[str, Tool]) -> list[dict[str, Any]]:
    return [{"name": t.name, "description": t.description, "params": dict(t.params),
             "idempotent": t.idempotent} for t in tools.values()]
