"""GPIO: one contract over every backend (the simulated chip here; libgpiod where a chip
exists), the simulated chip's edges and debounce, and the gpio tool kind."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent.tools.base import ToolError
from edge_agent.tools.registry import build_tool, check_tool_options
from hardware.errors import HardwareError
from hardware.gpio import GpioLines, LineSpec, SimulatedChip, open_lines

LINES = {"relay": LineSpec("relay", 4, "output"),
         "lamp": LineSpec("lamp", 5, "output", active_low=True),
         "button": LineSpec("button", 6, "input", bias="pull_up", active_low=True,
                            debounce_ms=50),
         "sensor": LineSpec("sensor", 7, "input", bias="pull_down")}
CHIPS = sorted(Path("/dev").glob("gpiochip*"))


def _gpiod_present() -> bool:
    try:
        import gpiod  # noqa: F401
    except ImportError:
        return False
    return bool(CHIPS)


@pytest.fixture(params=["simulated", "gpiod"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[GpioLines, Callable | None]]:
    """(lines, inject) where inject(offset, level) drives an input, or None on real chips."""
    if request.param == "simulated":
        chip = SimulatedChip(LINES)
        lines = GpioLines(chip, LINES)
        inject: Callable | None = chip.inject
    else:
        if not _gpiod_present():
            pytest.skip("no GPIO chip or gpiod bindings on this machine; the simulated chip "
                        "stands in")
        lines, inject = open_lines(str(CHIPS[0]), LINES), None
    try:
        yield lines, inject
    finally:
        lines.close()


def test_contract_outputs_and_declared_lines_only(backend) -> None:
    lines, _ = backend
    assert lines.write("relay", True) is True and lines.read("relay") is True
    assert lines.write("relay", False) is False and lines.read("relay") is False
    lines.write("lamp", True)
    assert lines.read("lamp") is True  # logical value, whatever the polarity
    assert lines.pulse("relay", 0.02) and lines.read("relay") is False
    for action in (lambda: lines.read("gpio17"), lambda: lines.write("button", True),
                   lambda: lines.pulse("sensor", 0.01), lambda: lines.wait_edge("relay")):
        with pytest.raises(HardwareError) as info:
            action()
        assert info.value.kind == "not_declared" and not info.value.retryable
    for action in (lambda: lines.pulse("relay", 0), lambda: lines.wait_edge("sensor", "up"),
                   lambda: lines.wait_edge("sensor", "both", -1)):
        with pytest.raises(HardwareError) as info:
            action()
        assert info.value.kind == "invalid_args"


def test_contract_no_edge_is_a_timeout(backend) -> None:
    lines, _ = backend
    with pytest.raises(HardwareError) as info:
        lines.wait_edge("sensor", "rising", 0.1)
    assert info.value.kind == "timeout" and info.value.retryable


def test_contract_edges_and_active_low(backend) -> None:
    lines, inject = backend
    if inject is None:
        pytest.skip("edges need a wired loopback on a real chip")
    assert lines.read("button") is False  # pulled up + active low: released
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(lines.wait_edge("sensor", "rising", 5)))
    waiter.start()
    time.sleep(0.05)
    inject(7, 1)
    waiter.join()
    assert got == ["rising"] and lines.read("sensor") is True
    got.clear()  # pressing an active-low button pulls it low: a logical rising edge
    waiter = threading.Thread(target=lambda: got.append(lines.wait_edge("button", "rising", 5)))
    waiter.start()
    time.sleep(0.05)
    inject(6, 0)
    waiter.join()
    assert got == ["rising"] and lines.read("button") is True


def test_simulated_debounce_keeps_one_edge_per_bounce() -> None:
    chip = SimulatedChip(LINES)
    lines = GpioLines(chip, LINES)
    edges: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                edges.append(lines.wait_edge("button", "both", 0.05))
            except HardwareError:
                pass
    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.05)
    try:
        for level in (0, 1, 0, 1, 0):  # one press that bounces within 50 ms
            chip.inject(6, level)
        time.sleep(0.2)
    finally:
        stop.set()
        watcher.join()
    assert edges == ["rising"]
    undebounced = []
    for level in (1, 0, 1):
        chip.inject(7, level)
        undebounced.append(chip.wait_edge(7, "both", 0.01))
    assert len(chip._edges) == 4  # 1 debounced edge on 6, 3 on 7 without debounce


def test_gpio_tool_kind(tmp_path: Path) -> None:
    opts = {"chip": "sim:test-chip", "lines": {
        "relay": {"offset": 1, "direction": "output"}, "door": {"offset": 2}}}
    assert check_tool_options("gpio", opts, tmp_path) == []
    tool = build_tool("io", "gpio", description="", params={"type": "object"},
                      result_schema=None, idempotent=True, timeout_s=2.0, options=opts,
                      base_dir=tmp_path)
    try:
        assert tool.call({"line": "relay", "op": "write", "value": True},
                         idempotency_key="k") == {"line": "relay", "value": True}
        assert tool.call({"line": "relay", "op": "read"}, idempotency_key="k")["value"] is True
        assert tool.call({"line": "relay", "op": "pulse", "duration_ms": 10},
                         idempotency_key="k") == {"line": "relay", "pulsed_ms": 10}
        with pytest.raises(ToolError) as info:
            tool.call({"line": "nope", "op": "read"}, idempotency_key="k")
        assert info.value.kind == "not_declared"
        with pytest.raises(ToolError) as info:
            tool.call({"line": "door", "op": "explode"}, idempotency_key="k")
        assert info.value.kind == "invalid_args"
        with pytest.raises(ToolError) as info:
            tool.call({"line": "door", "op": "wait_edge", "timeout_s": 0.05},
                      idempotency_key="k")
        assert info.value.kind == "timeout" and info.value.retryable
    finally:
        tool.close()


def test_absent_chip_fails_on_call_not_on_build(tmp_path: Path) -> None:
    opts = {"chip": str(tmp_path / "gpiochip9"), "lines": {"relay": {"offset": 1,
                                                                       "direction": "output"}}}
    tool = build_tool("io", "gpio", description="", params={"type": "object"},
                      result_schema=None, idempotent=True, timeout_s=2.0, options=opts,
                      base_dir=tmp_path)
    with pytest.raises(ToolError) as info:
        tool.call({"line": "relay", "op": "read"}, idempotency_key="k")
    assert info.value.kind == "device_gone" and info.value.retryable
    tool.close()


@pytest.mark.parametrize("lines,key,value", [
    ({"x": {"offset": 1, "direction": "sideways"}}, "lines.x.direction", "sideways"),
    ({"x": {"offset": -2}}, "lines.x.offset", -2),
    ({"x": {"offset": 1, "bias": "up"}}, "lines.x.bias", "up"),
    ({"x": {"offset": 1, "debounce_ms": 2.5}}, "lines.x.debounce_ms", 2.5),
    ({"x": {"offset": 1, "active_low": "yes"}}, "lines.x.active_low", "yes"),
    ({"x": {"offset": 1, "pull": "up"}}, "lines.x.pull", "up"),
    ({"x": {"direction": "input"}}, "lines.x.offset", None),
    ({"x": {"offset": 1}, "y": {"offset": 1}}, "lines.y.offset", 1),
    ({}, "lines", {}),
])
def test_bad_gpio_options_are_named(tmp_path: Path, lines: dict, key: str,
                                    value: object) -> None:
    problems = check_tool_options("gpio", {"chip": "sim:x", "lines": lines}, tmp_path)
    assert (key, value) in [(k, v) for k, _, v in problems], problems
    first = check_tool_options("gpio", {"chip": 3, "lines": lines}, tmp_path)[0]
    assert first[0] == "chip"
