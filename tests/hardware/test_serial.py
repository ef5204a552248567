"""Serial tools against the simulator on a pty: contract, faults, reconnects, exactly-once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.devices import SerialSim

from edge_agent.tools.base import ToolError
from edge_agent.tools.registry import build_tool, check_tool_options

RELAY = {
    "port": "ttyRELAY", "baudrate": 115200, "terminator": "\n",
    "send": "SET {channel} {state}",
    "expect": r"^OK (?P<channel>\d+) (?P<state>ON|OFF)$",
    "error": r"^ERR (?P<reason>.*)$",
}
PARAMS = {"type": "object", "properties": {
    "channel": {"type": "integer", "minimum": 1, "maximum": 8},
    "state": {"enum": ["ON", "OFF"]}}, "required": ["channel", "state"]}


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SerialSim]:
    s = SerialSim(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def relay(tmp: Path, timeout_s: float = 1.0, **extra: object):
    options = {**RELAY, **extra}
    assert check_tool_options("serial", options, tmp) == []
    return build_tool("relay", "serial", description="relay", params=PARAMS,
                      result_schema=None, idempotent=True, timeout_s=timeout_s,
                      options=options, base_dir=tmp)


def test_contract_example(tmp_path: Path, sim: SerialSim) -> None:
    tool = relay(tmp_path)
    try:
        assert tool.call({"channel": 3, "state": "ON"}, idempotency_key="k1") == \
            {"channel": "3", "state": "ON"}
        assert sim.ledger_lines()[0]["channel"] == 3
    finally:
        tool.close()


def test_device_error_is_typed_and_not_retryable(tmp_path: Path, sim: SerialSim) -> None:
    tool = build_tool("get", "serial", description="", params={"type": "object"},
                      result_schema=None, idempotent=True, timeout_s=1.0, base_dir=tmp_path,
                      options={**RELAY, "send": "GET 99"})
    with pytest.raises(ToolError) as info:
        tool.call({}, idempotency_key="k")
    assert info.value.kind == "device_error" and not info.value.retryable
    assert info.value.fields == {"reason": "unknown command GET"}
    tool.close()
    tool = build_tool("set", "serial", description="", params={"type": "object"},
                      result_schema=None, idempotent=True, timeout_s=1.0, base_dir=tmp_path,
                      options=RELAY)  # no schema bounds: the device itself refuses
    with pytest.raises(ToolError) as info:
        tool.call({"channel": 9, "state": "ON"}, idempotency_key="k")
    assert info.value.kind == "device_error" and info.value.fields == {"reason": "no channel 9"}
    with pytest.raises(ToolError) as info:  # a value cannot smuggle a second command
        tool.call({"channel": "1 ON\nSET 2", "state": "ON"}, idempotency_key="k")
    assert info.value.kind == "invalid_args"
    tool.close()
    assert sim.ledger_lines() == []


def test_arguments_are_validated_before_any_io(tmp_path: Path, sim: SerialSim) -> None:
    tool = relay(tmp_path)
    for bad in ({"channel": 9, "state": "ON"}, {"channel": 1, "state": "MAYBE"}, {}):
        with pytest.raises(ToolError) as info:
            tool.call(bad, idempotency_key="k")
        assert info.value.kind == "invalid_args"
    assert sim.ledger_lines() == []
    tool.close()


@pytest.mark.parametrize("fault,kind,retryable", [
    ("slow 2", "timeout", True), ("silence", "timeout", True),
    ("partial", "timeout", True), ("garbage", "bad_reply", False),
])
def test_fault_modes_give_typed_errors(tmp_path: Path, sim: SerialSim, fault: str, kind: str,
                                       retryable: bool) -> None:
    tool = relay(tmp_path, timeout_s=0.6)
    sim.fault(fault)
    with pytest.raises(ToolError) as info:
        tool.call({"channel": 1, "state": "ON"}, idempotency_key="k")
    assert (info.value.kind, info.value.retryable) == (kind, retryable)
    sim.fault("none")
    time.sleep(1.6 if fault.startswith("slow") else 0.1)  # the late reply must not confuse us
    assert tool.call({"channel": 2, "state": "OFF"}, idempotency_key="k2") == \
        {"channel": "2", "state": "OFF"}
    tool.close()


def test_reconnects_after_the_device_disappears(tmp_path: Path, sim: SerialSim) -> None:
    tool = relay(tmp_path)
    assert tool.call({"channel": 1, "state": "ON"}, idempotency_key="a")["state"] == "ON"
    sim.fault("disconnect 1.0")
    with pytest.raises(ToolError) as info:
        tool.call({"channel": 1, "state": "OFF"}, idempotency_key="b")
    assert info.value.kind in ("device_gone", "timeout") and info.value.retryable
    deadline = time.time() + 10
    while True:
        try:
            assert tool.call({"channel": 1, "state": "OFF"}, idempotency_key="c")["state"] == \
                "OFF"
            break
        except ToolError as exc:
            assert exc.retryable and time.time() < deadline
            time.sleep(0.2)
    assert os.readlink(sim.link).startswith("/dev/pts/")  # a new pty behind the same path
    assert [e["state"] for e in sim.ledger_lines()][-1] == "OFF"
    tool.close()


def test_concurrent_calls_to_one_port_are_serialized(tmp_path: Path, sim: SerialSim) -> None:
    tools = [relay(tmp_path) for _ in range(4)]  # four tools, one port
    results: list[tuple[int, dict]] = []
    errors: list[Exception] = []

    def worker(i: int) -> None:
        try:
            for j in range(5):
                ch = (i * 5 + j) % 8 + 1
                state = "ON" if j % 2 == 0 else "OFF"
                out = tools[i].call({"channel": ch, "state": state}, idempotency_key=f"{i}{j}")
                results.append((ch, out))
                assert out == {"channel": str(ch), "state": state}
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20 and len(sim.ledger_lines()) == 20
    for t in tools:
        t.close()


def test_request_ids_let_the_device_drop_repeats(tmp_path: Path, sim: SerialSim) -> None:
    tool = relay(tmp_path, request_id=True)
    first = tool.call({"channel": 5, "state": "ON"}, idempotency_key="run/node/0/0/a1")
    again = tool.call({"channel": 5, "state": "ON"}, idempotency_key="run/node/0/0/a1")
    other = tool.call({"channel": 5, "state": "ON"}, idempotency_key="run/node/0/0/a2")
    assert first == again == other == {"channel": "5", "state": "ON"}
    ids = [e["id"] for e in sim.ledger_lines()]
    assert len(ids) == 2 and len(set(ids)) == 2  # the repeat was not executed again
    tool.close()


def test_request_id_field_in_the_send_template(tmp_path: Path, sim: SerialSim) -> None:
    tool = relay(tmp_path, send="#{id} SET {channel} {state}",
                 expect=r"^#\w+ OK (?P<channel>\d+) (?P<state>ON|OFF)$",
                 request_id_field="id")
    for key in ("k1", "k1", "k2"):
        assert tool.call({"channel": 6, "state": "ON", "id": "forged"},
                         idempotency_key=key) == {"channel": "6", "state": "ON"}
    ids = [e["id"] for e in sim.ledger_lines()]
    assert len(ids) == 2 and "forged" not in ids
    tool.close()


def test_late_reply_is_not_taken_for_the_next_one(tmp_path: Path, sim: SerialSim) -> None:
    tool = relay(tmp_path, timeout_s=0.6, request_id=True)
    sim.fault("slow 1")
    with pytest.raises(ToolError) as info:
        tool.call({"channel": 1, "state": "ON"}, idempotency_key="late")
    assert info.value.kind == "timeout"
    sim.fault("none")
    out = tool.call({"channel": 2, "state": "OFF"}, idempotency_key="next")
    assert out == {"channel": "2", "state": "OFF"}
    tool.close()


def test_multi_line_reply_until_a_terminator_line(tmp_path: Path, sim: SerialSim) -> None:
    relay(tmp_path).call({"channel": 4, "state": "ON"}, idempotency_key="k")
    dump = build_tool("dump", "serial", description="", params={"type": "object"},
                      result_schema=None, idempotent=True, timeout_s=1.0, base_dir=tmp_path,
                      options={"port": "ttyRELAY", "send": "DUMP", "until": "END",
                               "expect": r"RELAY 4 (?P<four>\w+)\n(?:.*\n)*RELAY 8 "
                                         r"(?P<eight>\w+)$"})
    assert dump.call({}, idempotency_key="k") == {"four": "ON", "eight": "OFF"}
    dump.close()


def test_result_schema_types_convert_groups(tmp_path: Path, sim: SerialSim) -> None:
    result = {"type": "object", "properties": {"sensor": {"type": "integer"},
                                               "celsius": {"type": "number",
                                                           "minimum": -40, "maximum": 125}}}
    temp = build_tool("temp", "serial", description="", params={"type": "object"},
                      result_schema=result, idempotent=True, timeout_s=1.0, base_dir=tmp_path,
                      options={"port": "ttyRELAY", "send": "TEMP {n}",
                               "expect": r"^TEMP (?P<sensor>\d+) (?P<celsius>-?[\d.]+)$",
                               "error": r"^ERR (?P<reason>.*)$"})
    out = temp.call({"n": 2}, idempotency_key="k")
    assert out["sensor"] == 2 and 23.0 <= out["celsius"] <= 23.4
    with pytest.raises(ToolError) as info:  # the reply parses but breaks the result schema
        temp.call({"n": 80}, idempotency_key="k")
    assert info.value.kind == "invalid_result"
    temp.close()


def test_fault_given_on_the_command_line(tmp_path: Path) -> None:
    link = tmp_path / "ttyBAD"
    proc = subprocess.Popen([sys.executable, "-m", "hardware.simulator", "--link", str(link),
                             "--fault", "garbage"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
        tool = relay(tmp_path, port="ttyBAD")
        with pytest.raises(ToolError) as info:
            tool.call({"channel": 1, "state": "ON"}, idempotency_key="k")
        assert info.value.kind == "bad_reply" and not info.value.retryable
        tool.close()
    finally:
        proc.terminate()
        proc.wait(5)
    assert not link.exists()


def test_absent_port_is_device_gone(tmp_path: Path) -> None:
    tool = relay(tmp_path, port="ttyNOWHERE")  # building does not need the device
    with pytest.raises(ToolError) as info:
        tool.call({"channel": 1, "state": "ON"}, idempotency_key="k")
    assert info.value.kind == "device_gone" and info.value.retryable
    tool.close()


@pytest.mark.parametrize("options,key,value", [
    ({"port": ""}, "port", ""),
    ({"send": None}, "send", None),
    ({"send": "SET {a b}"}, "send", "SET {a b}"),
    ({"send": "SET {0}"}, "send", "SET {0}"),
    ({"expect": "("}, "expect", "("),
    ({"error": "[x"}, "error", "[x"),
    ({"baudrate": 1234}, "baudrate", 1234),
    ({"baudrate": True}, "baudrate", True),
    ({"terminator": ""}, "terminator", ""),
    ({"until": 5}, "until", 5),
    ({"encoding": "klingon"}, "encoding", "klingon"),
    ({"request_id": "yes"}, "request_id", "yes"),
    ({"request_id_field": "id"}, "request_id_field", "id"),
    ({"colour": "red"}, "colour", "red"),
])
def test_bad_serial_option_is_named_with_its_value(tmp_path: Path, options: dict, key: str,
                                                   value: object) -> None:
    problems = check_tool_options("serial", {**RELAY, **options}, tmp_path)
    assert (key, value) in [(k, v) for k, _, v in problems], problems


def test_contract_toml_through_the_config_and_the_cli(tmp_path: Path, sim: SerialSim) -> None:
    """The issue's TOML as written, only its port pointed at the simulator's pty."""
    import json
    import subprocess
    import sys

    from support.devices import SERIAL_CONTRACT as CONTRACT

    from edge_agent.config import load_config
    config = tmp_path / "config.toml"
    config.write_text('[device]\nid = "cell-s"\ndata_dir = "data"\n'
                      + CONTRACT.replace("/dev/ttyUSB0", str(sim.link)))
    tc = load_config(config).tools["relay"]
    assert (tc.kind, tc.idempotent, tc.timeout_s) == ("serial", True, 2.0)

    def call(args: dict) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge_agent", "tools", "call", "relay",
                               "--args", json.dumps(args), "--config", str(config), "--json"],
                              capture_output=True, text=True, timeout=60)
    ok = call({"channel": 3, "state": "ON"})
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["result"] == {"channel": "3", "state": "ON"}
    assert [(e["channel"], e["state"]) for e in sim.ledger_lines()] == [(3, "ON")]
    refused = call({"channel": 9, "state": "ON"})  # outside the declared range
    assert refused.returncode == 65 and len(sim.ledger_lines()) == 1  # never reached it
