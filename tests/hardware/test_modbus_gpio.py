"""Modbus against pymodbus's own server (TCP on loopback, RTU on a pty pair); GPIO contract."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from support.broker import free_port
from support.devices import ModbusServer, PtyBridge

from edge_agent.tools.base import ToolError
from edge_agent.tools.registry import build_tool, check_tool_options
from hardware.gpio import GpioLines, LineSpec, SimulatedChip

REGISTERS = {
    "temp": {"table": "input", "address": 0, "type": "int16", "scale": 0.1},
    "offset": {"table": "input", "address": 1, "type": "int16"},
    "setpoint": {"table": "holding", "address": 10, "type": "uint16", "writable": True},
    "flow": {"table": "holding", "address": 20, "type": "float32", "writable": True},
    "pump": {"table": "coil", "address": 3, "type": "bool", "writable": True},
    "door": {"table": "discrete", "address": 0, "type": "bool"},
}


def modbus_tool(tmp: Path, **options: object):  # noqa: ANN201
    opts = {"registers": REGISTERS, **options}
    assert check_tool_options("modbus", opts, tmp) == []
    return build_tool("plc", "modbus", description="", params={"type": "object"},
                      result_schema=None, idempotent=True, timeout_s=2.0, options=opts,
                      base_dir=tmp)


def exercise(tool) -> None:  # noqa: ANN001
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


LINES = {"relay": LineSpec("relay", 4, "output"),
         "lamp": LineSpec("lamp", 5, "output", active_low=True),
         "button": LineSpec("button", 6, "input", bias="pull_up", active_low=True,
                            debounce_ms=50),
         "sensor": LineSpec("sensor", 7, "input")}


def test_gpio_contract_on_the_simulated_chip() -> None:
    chip = SimulatedChip(LINES)
    gpio = GpioLines(chip, LINES)
    assert gpio.write("relay", True) and chip.get(4) == 1
    gpio.write("lamp", True)
    assert chip.get(5) == 0  # active-low: on means a low level
    assert gpio.read("button") is False  # pulled up, active low: not pressed
    chip.inject(6, 0)
    assert gpio.read("button") is True
    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(gpio.wait_edge("sensor", "rising", 2)))
    t.start()
    time.sleep(0.1)
    chip.inject(7, 1)
    t.join()
    assert got == ["rising"]
    with pytest.raises(Exception) as info:
        gpio.wait_edge("sensor", "falling", 0.2)
    assert getattr(info.value, "kind", "") == "timeout"
    chip.inject(6, 1)
    chip.inject(6, 0)  # a bounce inside 50 ms: one edge only
    chip.inject(6, 1)
    with pytest.raises(Exception) as info:
        gpio.write("button", True)
    assert getattr(info.value, "kind", "") == "not_declared"
    with pytest.raises(Exception) as info:
        gpio.read("gpio17")
    assert getattr(info.value, "kind", "") == "not_declared"
    start = time.monotonic()
    gpio.pulse("relay", 0.05)
    assert time.monotonic() - start >= 0.05 and chip.get(4) == 0


def test_gpio_tool_kind(tmp_path: Path) -> None:
    opts = {"chip": "sim:test-chip", "lines": {"relay": {"offset": 1, "direction": "output"},
                                               "door": {"offset": 2}}}
    assert check_tool_options("gpio", opts, tmp_path) == []
    tool = build_tool("io", "gpio", description="", params={"type": "object"},
                      result_schema=None, idempotent=True, timeout_s=2.0, options=opts,
                      base_dir=tmp_path)
    assert tool.call({"line": "relay", "op": "write", "value": True},
                     idempotency_key="k") == {"line": "relay", "value": True}
    assert tool.call({"line": "relay", "op": "read"}, idempotency_key="k")["value"] is True
    with pytest.raises(ToolError) as info:
        tool.call({"line": "nope", "op": "read"}, idempotency_key="k")
    assert info.value.kind == "not_declared"
    bad = {k for k, _, _ in check_tool_options("gpio", {"chip": 3, "lines": {
        "x": {"offset": 1, "direction": "sideways"}}}, tmp_path)}
    assert {"chip", "lines.x.direction"} <= bad


@pytest.mark.skipif(not list(Path("/dev").glob("gpiochip*")),
                    reason="no GPIO chip on this machine; the simulated chip stands in")
def test_gpio_contract_on_a_real_chip() -> None:
    from hardware.gpio import open_lines
    chip = sorted(Path("/dev").glob("gpiochip*"))[0]
    lines = open_lines(str(chip), {"probe": LineSpec("probe", 0, "input")})
    assert lines.read("probe") in (True, False)
    lines.close()
