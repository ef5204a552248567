"""The registry's own contract: kinds, option checks on whole tables, building, listing."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from support.devices import SERIAL_CONTRACT as CONTRACT

from edge_agent.tools.base import ToolError
from edge_agent.tools.registry import KINDS, build_tool, check_tool_options, describe_tools

COMMON = {"kind", "description", "params", "result", "timeout_s", "retry", "idempotent",
          "location", "on_unknown"}


def test_contract_table_is_accepted(tmp_path: Path) -> None:
    table = tomllib.loads(CONTRACT)["tools"]["relay"]
    options = {k: v for k, v in table.items() if k not in COMMON}
    assert check_tool_options("serial", options, tmp_path) == []
    tool = build_tool("relay", "serial", description="", params=table["params"],
                      result_schema=None, idempotent=True, timeout_s=table["timeout_s"],
                      options=options, base_dir=tmp_path)  # no device needed to build
    with pytest.raises(ToolError) as info:
        tool.call({"channel": 0, "state": "ON"}, idempotency_key="k")
    assert info.value.kind == "invalid_args" and "channel" in str(info.value)
    tool.close()


def test_kinds_and_unknown_kind(tmp_path: Path) -> None:
    assert {"serial", "modbus", "gpio", "command", "python", "remote", "kv"} == KINDS
    assert check_tool_options("telepathy", {}, tmp_path) == \
        [("kind", "must be one of command, gpio, kv, modbus, python, remote, serial",
          "telepathy")]
    assert check_tool_options("serial", ["not", "a", "table"], tmp_path)[0][0] == ""  # type: ignore[arg-type]


def test_remote_options_and_build(tmp_path: Path) -> None:
    assert check_tool_options("remote", {"fallback": "local_relay"}, tmp_path) == []
    assert check_tool_options("remote", {"fallback": 3, "url": "x"}, tmp_path) == \
        [("url", "unknown key", "x"), ("fallback", "must name a local tool", 3)]
    with pytest.raises(ToolError) as info:
        build_tool("r", "remote", description="", params={"type": "object"}, result_schema=None,
                   idempotent=False, timeout_s=1, options={}, base_dir=tmp_path)
    assert info.value.kind == "not_supported" and not info.value.retryable


def test_check_never_raises_on_garbage(tmp_path: Path) -> None:
    for kind in sorted(KINDS):
        for options in ({"port": {"a": 1}, "send": 1, "expect": [], "registers": "x",
                         "lines": [1], "argv": {"x": 1}, "entry": 5, "chip": None},
                        {"registers": {"r": "x"}, "lines": {"l": 3}, "env": [1]}):
            problems = check_tool_options(kind, options, tmp_path)
            assert problems and all(isinstance(p, tuple) and len(p) == 3 for p in problems)


def test_describe_tools(tmp_path: Path) -> None:
    tools = {name: build_tool(name, "command", description=f"{name} it",
                              params={"type": "object"}, result_schema=None, idempotent=False,
                              timeout_s=3, options={"argv": ["true"]}, base_dir=tmp_path)
             for name in ("zap", "beep")}
    rows = describe_tools(tools)
    assert [r["name"] for r in rows] == ["beep", "zap"]
    assert rows[0] == {"name": "beep", "description": "beep it", "params": {"type": "object"},
                       "result": None, "idempotent": False, "timeout_s": 3}
