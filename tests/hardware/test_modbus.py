"""Modbus against pymodbus's own server: TCP on loopback and RTU on a pty pair."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from support.broker import free_port
from support.devices import ModbusServer, PtyBridge

from edge_agent.tools.base import ToolError
from edge_agent.tools.registry import build_tool, check_tool_options

REGISTERS = {
    "temp": {"table": "input", "address": 0, "type": "int16", "scale": 0.1},
    "offset": {"table": "input", "address": 1, "type": "int16"},
    "setpoint": {"table": "holding", "address": 10, "type": "uint16", "writable": True},
    "flow": {"table": "holding", "address": 20, "type": "float32", "writable": True},
    "pump": {"table": "coil", "address": 3, "type": "bool", "writable": True},
    "door": {"table": "discrete", "address": 0, "type": "bool"},
}


def modbus_tool(tmp: Path, **options: object):
    opts = {"registers": REGISTERS, **options}
    assert check_tool_options("modbus", opts, tmp) == []
    return build_tool("plc", "modbus", description="", params={"type": "object"},
                      result_schema=None, idempotent=True, timeout_s=2.0, options=opts,
                      base_dir=tmp)


def exercise(tool) -> None:
    assert tool.call({"register": "temp"}, idempotency_key="k")["value"] == pytest.approx(21.5)
    assert tool.call({"register": "offset"}, idempotency_key="k")["value"] == -1
    assert tool.call({"register": "door"}, idempotency_key="k")["value"] is True
    tool.call({"register": "setpoint", "value": 450}, idempotency_key="k")
    assert tool.call({"register": "setpoint"}, idempotency_key="k")["value"] == 450
    tool.call({"register": "flow", "value": 2.5}, idempotency_key="k")
    assert tool.call({"register": "flow"}, idempotency_key="k")["value"] == pytest.approx(2.5)
    tool.call({"register": "pump", "value": True}, idempotency_key="k")
    assert tool.call({"register": "pump"}, idempotency_key="k")["value"] is True
    for bad in ({"register": "secret"}, {"register": "temp", "value": 3}):
        with pytest.raises(ToolError) as info:
            tool.call(bad, idempotency_key="k")
        assert info.value.kind == "not_declared" and not info.value.retryable
    for bad in ({"register": "setpoint", "value": 70000}, {"register": "setpoint", "value": -1},
                {"register": "setpoint", "value": "high"}, {"register": 10}):
        with pytest.raises(ToolError) as info:
            tool.call(bad, idempotency_key="k")
        assert info.value.kind == "invalid_args", bad
    assert tool.call({"register": "setpoint"}, idempotency_key="k")["value"] == 450


def test_modbus_tcp(tmp_path: Path) -> None:
    port = free_port()
    server = ModbusServer("tcp", port=port)
    tool = modbus_tool(tmp_path, transport="tcp", host="127.0.0.1", port=port)
    try:
        exercise(tool)
    finally:
        tool.close()
        server.stop()
    with pytest.raises(ToolError) as info:  # the server is gone
        dead = modbus_tool(tmp_path, transport="tcp", host="127.0.0.1", port=port)
        dead.call({"register": "temp"}, idempotency_key="k")
    assert info.value.kind == "device_gone" and info.value.retryable


def test_modbus_rtu_over_a_pty_pair(tmp_path: Path) -> None:
    bridge = PtyBridge()
    server = ModbusServer("rtu", device=bridge.names[0])
    tool = modbus_tool(tmp_path, transport="rtu", port=bridge.names[1], baudrate=19200)
    try:
        exercise(tool)
    finally:
        tool.close()
        server.stop()
        bridge.close()


def test_modbus_options_are_checked(tmp_path: Path) -> None:
    problems = {k for k, _, _ in check_tool_options("modbus", {
        "transport": "udp", "registers": {"a": {"table": "input", "address": 0,
                                                "writable": True},
                                          "b": {"table": "coil", "address": 1, "type": "int16"},
                                          "c": {"table": "holding", "address": 2, "bits": 3}},
        "unit": 300}, tmp_path)}
    assert {"transport", "unit", "registers.a", "registers.b", "registers.c.bits"} <= problems
    problems = {k: v for k, _, v in check_tool_options("modbus", {
        "host": "plc", "port": 70000, "registers": {
            "x": {"table": "holding", "address": -1}, "y": {"table": "holding", "address": 1,
                                                            "scale": 0}}}, tmp_path)}
    assert problems == {"port": 70000, "registers.x.address": -1, "registers.y.scale": 0}
    problems = {k: v for k, _, v in check_tool_options("modbus", {
        "transport": "rtu", "registers": {}}, tmp_path)}
    assert problems == {"port": None, "registers": {}}


def test_modbus_silent_device_is_a_retryable_timeout(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        tool = modbus_tool(tmp_path, transport="tcp", host="127.0.0.1",
                           port=listener.getsockname()[1])
        with pytest.raises(ToolError) as info:
            tool.call({"register": "temp"}, idempotency_key="k")
        assert info.value.kind == "timeout" and info.value.retryable
        tool.close()
    finally:
        listener.close()


def test_modbus_exception_reply_is_a_device_error(tmp_path: Path) -> None:
    port = free_port()
    server = ModbusServer("tcp", port=port)
    regs = {"far": {"table": "holding", "address": 5000, "type": "uint16"}}
    opts = {"registers": regs, "transport": "tcp", "host": "127.0.0.1", "port": port}
    tool = build_tool("plc", "modbus", description="", params={"type": "object"},
                      result_schema=None, idempotent=True, timeout_s=2.0, options=opts,
                      base_dir=tmp_path)
    try:
        with pytest.raises(ToolError) as info:  # the server has no register 5000
            tool.call({"register": "far"}, idempotency_key="k")
        assert info.value.kind == "device_error" and not info.value.retryable
        assert info.value.fields["exception_code"] == 2  # illegal data address
    finally:
        tool.close()
        server.stop()
