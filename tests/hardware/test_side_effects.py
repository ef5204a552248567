"""What each tool kind says about a failure: did the request possibly reach the device?
And arguments that stay data. Real pty device, real processes, a real TCP peer."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.devices import SerialSim

from edge_agent.tools.base import ToolError
from edge_agent.tools.registry import build_tool, check_tool_options
from hardware.errors import DeviceTimeout, PortBusy
from hardware.modbus import ModbusDevice, Register
from hardware.serial_line import SerialLine


@pytest.fixture
def sim(tmp_path: Path) -> Any:
    s = SerialSim(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def test_a_call_that_never_gets_the_port_fails_retryably_having_sent_nothing(
        sim: SerialSim) -> None:
    sim.fault("slow 1.0")
    first = SerialLine(str(sim.link), timeout_s=3.0)
    second = SerialLine(str(sim.link), timeout_s=3.0, queue_timeout_s=0.2)
    try:
        holder = threading.Thread(target=first.exchange, args=("SET 1 ON",))
        holder.start()
        time.sleep(0.2)
        with pytest.raises(PortBusy) as info:
            second.exchange("SET 2 ON")
        assert info.value.retryable and not info.value.effect_may_have_happened
        holder.join()
        assert [(e["channel"], e["state"]) for e in sim.ledger_lines()] == [(1, "ON")]
    finally:
        first.close()
        second.close()


def test_the_reply_deadline_starts_once_the_port_is_ours(sim: SerialSim) -> None:
    """Two calls queued behind each other, each answered in 0.6 s with a 1 s timeout: the
    second waits 0.6 s for the port and still gets its full second."""
    sim.fault("slow 0.6")
    a = SerialLine(str(sim.link), timeout_s=1.0)
    b = SerialLine(str(sim.link), timeout_s=1.0)
    out: dict[str, Any] = {}
    try:
        t = threading.Thread(target=lambda: out.setdefault("a", a.exchange("SET 1 ON")))
        t.start()
        time.sleep(0.1)
        out["b"] = b.exchange("SET 2 OFF")
        t.join()
        assert out == {"a": ["OK 1 ON"], "b": ["OK 2 OFF"]}
    finally:
        a.close()
        b.close()


def test_a_timeout_after_writing_says_the_effect_may_have_happened(sim: SerialSim) -> None:
    sim.fault("slow 0.8")
    line = SerialLine(str(sim.link), timeout_s=0.2)
    try:
        with pytest.raises(DeviceTimeout) as info:
            line.exchange("SET 4 ON")
        assert info.value.effect_may_have_happened
        time.sleep(1.0)
        assert [(e["channel"], e["state"]) for e in sim.ledger_lines()] == [(4, "ON")]
    finally:
        line.close()
    gone = SerialLine(str(sim.link.parent / "no-such-tty"), timeout_s=0.2)
    with pytest.raises(Exception) as info2:
        gone.exchange("SET 4 ON")
    assert not getattr(info2.value, "effect_may_have_happened", True)  # nothing opened


def test_serial_queue_timeout_is_checked_in_config(tmp_path: Path) -> None:
    base = {"port": "/dev/ttyX", "send": "GET {ch}", "expect": "OK"}
    assert check_tool_options("serial", {**base, "queue_timeout_s": 5}, tmp_path) == []
    for bad in (0, -1, "5", True, 7200):
        problems = check_tool_options("serial", {**base, "queue_timeout_s": bad}, tmp_path)
        assert [p[0] for p in problems] == ["queue_timeout_s"], bad


def test_a_modbus_write_that_got_no_answer_may_have_happened() -> None:
    """A TCP peer that takes the request and never answers: the write was sent."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = srv.accept()
        conn.settimeout(3)
        try:
            got.append(conn.recv(256))
            time.sleep(1.5)
        except OSError:
            pass
        conn.close()
    threading.Thread(target=serve, daemon=True).start()
    dev = ModbusDevice({"valve": Register("valve", "coil", 0, "bool", writable=True),
                        "level": Register("level", "holding", 1, "int16", writable=True)},
                       transport="tcp", host="127.0.0.1", port=srv.getsockname()[1],
                       timeout_s=0.5)
    try:
        with pytest.raises(Exception) as bad_value:
            dev.write("level", 10 ** 9)  # does not fit: refused before anything is sent
        assert not getattr(bad_value.value, "effect_may_have_happened", True)
        with pytest.raises(Exception) as info:
            dev.write("valve", True)
        assert info.value.effect_may_have_happened and got and got[0]
    finally:
        dev.close()
        srv.close()


# command arguments -----------------------------------------------------------------------------

ECHO = f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n"


def command(tmp: Path, argv: list[str], params: dict[str, Any], timeout_s: float = 10.0,
            **options: Any) -> Any:
    opts = {"argv": argv, **options}
    assert check_tool_options("command", opts, tmp) == []
    return build_tool("cmd", "command", description="", timeout_s=timeout_s, idempotent=False,
                      params=params, result_schema=None, options=opts, base_dir=tmp)


def echo(tmp: Path) -> str:
    path = tmp / "echo.py"
    path.write_text(ECHO)
    path.chmod(0o755)
    return "./echo.py"


FREE = {"type": "object", "properties": {"part": {"type": "string"}}}


@pytest.mark.parametrize("value", ["--help", "-rf", "-"])
def test_a_value_that_would_be_an_option_is_refused(tmp_path: Path, value: str) -> None:
    tool = command(tmp_path, ["touch", "{part}"], FREE)
    with pytest.raises(ToolError) as info:
        tool.call({"part": value}, idempotency_key="k")
    assert info.value.kind == "invalid_args" and "option" in str(info.value)
    assert os.listdir(tmp_path) == []  # touch never ran


def test_after_double_dash_or_inside_an_argument_a_dash_is_data(tmp_path: Path) -> None:
    tool = command(tmp_path, [echo(tmp_path), "--part={part}", "--", "{part}"], FREE)
    out = tool.call({"part": "-7"}, idempotency_key="k")
    assert out["stdout"].strip() == '["--part=-7", "--", "-7"]'


def test_a_schema_that_pins_values_down_admits_them(tmp_path: Path) -> None:
    params = {"type": "object", "properties": {
        "flag": {"enum": ["-v", "-q"]}, "part": {"type": "string", "pattern": "^-?[a-z]+$"}}}
    tool = command(tmp_path, [echo(tmp_path), "{flag}", "{part}"], params)
    out = tool.call({"flag": "-v", "part": "-abc"}, idempotency_key="k")
    assert out["stdout"].strip() == '["-v", "-abc"]'
    with pytest.raises(ToolError) as info:  # the pattern is enforced
        tool.call({"flag": "-v", "part": "-ABC"}, idempotency_key="k")
    assert info.value.kind == "invalid_args"
    with pytest.raises(ToolError):  # so is the enum
        tool.call({"flag": "-x", "part": "abc"}, idempotency_key="k")


@pytest.mark.parametrize("value", ["../../../../etc/passwd", "a/../../b", ".."])
def test_a_path_that_climbs_out_is_refused(tmp_path: Path, value: str) -> None:
    (tmp_path / "parts").mkdir()
    tool = command(tmp_path, ["cat", "parts/{part}"], FREE)
    with pytest.raises(ToolError) as info:
        tool.call({"part": value}, idempotency_key="k")
    assert info.value.kind == "invalid_args" and ".." in str(info.value)
    (tmp_path / "parts" / "a..b").write_text("ok")
    assert tool.call({"part": "a..b"}, idempotency_key="k")["stdout"] == "ok"


@pytest.mark.parametrize("argv, values, says", [
    (["touch", "{a}{b}"], {"a": "", "b": "--version"}, "option"),  # the argument, not each value
    (["touch", "{a}{b}"], {"a": "-", "b": "-help"}, "option"),
    (["touch", "{part}"], {"part": "/etc/cron.d/x"}, "absolute path"),
    (["touch", "--", "{part}"], {"part": "/etc/cron.d/x"}, "absolute path"),
    (["touch", "{a}{b}"], {"a": "", "b": "/tmp/x"}, "absolute path"),
    (["touch", "parts/{a}{b}"], {"a": ".", "b": "."}, "climbs"),
    (["touch", "parts/{a}/{b}"], {"a": "..", "b": "x"}, "climbs"),
    (["touch", "{part}"], {"part": ["--version"]}, "cannot stand in an argument"),
    (["touch", "{part}"], {"part": {"a": "--help"}}, "cannot stand in an argument"),
])
def test_the_resulting_argument_is_checked_and_values_are_scalars(
        tmp_path: Path, argv: list[str], values: dict[str, Any], says: str) -> None:
    params = {"type": "object"}
    tool = command(tmp_path, argv, params)
    with pytest.raises(ToolError) as info:
        tool.call(values, idempotency_key="k")
    assert info.value.kind == "invalid_args" and says in str(info.value), str(info.value)
    assert os.listdir(tmp_path) == []  # touch never ran


def test_literal_text_in_argv_is_the_operators_choice(tmp_path: Path) -> None:
    tool = command(tmp_path, [echo(tmp_path), "/dev/{port}", "../logs/{part}", "-n{part}"],
                   {"type": "object"})
    out = tool.call({"port": "ttyUSB0", "part": "A7"}, idempotency_key="k")
    assert out["stdout"].strip() == '["/dev/ttyUSB0", "../logs/A7", "-nA7"]'


def test_a_literal_brace_and_a_json_string_in_argv(tmp_path: Path) -> None:
    """As the README writes it: a brace in argv is doubled."""
    tool = command(tmp_path, [echo(tmp_path), '{{"by": 1}}', "{{{part}}}", "a}}b{{"],
                   {"type": "object"})
    out = tool.call({"part": "x"}, idempotency_key="k")
    assert json.loads(out["stdout"]) == ['{"by": 1}', "{x}", "a}b{"]
    assert check_tool_options("command", {"argv": ["echo", '{"by": 1}']}, tmp_path) != []


def test_max_output_bytes_has_a_ceiling(tmp_path: Path) -> None:
    ok = check_tool_options("command", {"argv": ["ls"], "max_output_bytes": 16 * 1024 * 1024},
                            tmp_path)
    assert ok == []
    problems = check_tool_options("command", {"argv": ["ls"], "max_output_bytes": 100_000_000},
                                  tmp_path)
    assert [(k, v) for k, _, v in problems] == [("max_output_bytes", 100_000_000)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_timeout_kills_the_whole_tree_even_a_setsid_child(tmp_path: Path) -> None:
    pidfile = tmp_path / "escaped.pid"
    script = f"setsid sleep 300 & echo $! > {pidfile}; sleep 300"
    tool = command(tmp_path, ["sh", "-c", script], {"type": "object"}, timeout_s=0.5)
    with pytest.raises(ToolError) as info:
        tool.call({}, idempotency_key="k")
    assert info.value.kind == "timeout" and info.value.effect_may_have_happened
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the setsid child outlived the tool's timeout")
