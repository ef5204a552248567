"""The `modbus` kind: declared registers over Modbus TCP or RTU (see hardware.modbus).

Arguments: `{"register": NAME}` reads it; `{"register": NAME, "value": V}` writes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent.tools.options import BoundCall, Problems, is_int, resolve_path, unknown_keys

REGISTER_KEYS = {"table", "address", "type", "scale", "writable"}


def check_modbus(options: Mapping[str, Any], base_dir: Path) -> Problems:
    from hardware.modbus import Register
    problems = unknown_keys(options, {"transport", "host", "port", "baudrate", "unit",
                                      "registers"})
    transport = options.get("transport", "tcp")
    if transport not in ("tcp", "rtu"):
        problems.append(("transport", "must be \"tcp\" or \"rtu\"", transport))
    port = options.get("port")
    if transport == "tcp":
        if not isinstance(options.get("host"), str) or not options.get("host"):
            problems.append(("host", "is required for tcp", options.get("host")))
        if port is not None and (not is_int(port) or not 1 <= port <= 65535):
            problems.append(("port", "must be a TCP port 1..65535", port))
    if transport == "rtu" and (not isinstance(port, str) or not port):
        problems.append(("port", "is required for rtu (a serial device path)", port))
    baud = options.get("baudrate", 19200)
    if not is_int(baud) or baud <= 0:
        problems.append(("baudrate", "must be a positive integer", baud))
    unit = options.get("unit", 1)
    if not is_int(unit) or not 0 <= unit <= 247:
        problems.append(("unit", "must be 0..247", unit))
    regs = options.get("registers")
    if not isinstance(regs, dict) or not regs:
        problems.append(("registers", "must declare at least one register", regs))
        return problems
    for rname, spec in regs.items():
        where = f"registers.{rname}"
        if not isinstance(spec, dict):
            problems.append((where, "must be a table", spec))
            continue
        extra = sorted(set(spec) - REGISTER_KEYS)
        for key in extra:
            problems.append((f"{where}.{key}", "unknown key", spec[key]))
        if extra:
            continue
        address = spec.get("address")
        if not isinstance(address, int) or isinstance(address, bool) \
                or not 0 <= address <= 65535:
            problems.append((f"{where}.address", "must be an integer 0..65535", address))
            continue
        scale = spec.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale == 0:
            problems.append((f"{where}.scale", "must be a non-zero number", scale))
            continue
        try:
            Register(rname, **spec)
        except (TypeError, ValueError) as exc:
            problems.append((where, str(exc), spec))
    return problems


def build_modbus(name: str, options: Mapping[str, Any], base_dir: Path, timeout_s: float,
                 result_schema: Mapping[str, Any] | None = None) -> BoundCall:
    from hardware.errors import HardwareError
    from hardware.modbus import ModbusDevice, Register
    regs = {n: Register(n, **spec) for n, spec in options["registers"].items()}
    transport = options.get("transport", "tcp")
    port = options.get("port", 502)
    dev = ModbusDevice(regs, transport=transport, host=options.get("host", ""),
                       port=resolve_path(base_dir, port) if transport == "rtu" else port,
                       baudrate=int(options.get("baudrate", 19200)),
                       unit=int(options.get("unit", 1)), timeout_s=timeout_s)

    def call(args: Mapping[str, Any], key: str) -> dict[str, Any]:
        register = args.get("register")
        if not isinstance(register, str):
            raise HardwareError("register must be a register name", kind="invalid_args")
        if "value" in args:
            return {"register": register, "value": dev.write(register, args["value"]),
                    "written": True}
        return {"register": register, "value": dev.read(register)}
    return BoundCall(call, dev.close)
