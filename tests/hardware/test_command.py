"""The command kind: a fixed argv, no shell, timeouts that kill the group, output limits."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest

from edge_agent.tools.base import ToolError
from edge_agent.tools.registry import build_tool, check_tool_options

ECHO_ARGS = f"""#!{sys.executable}
import json, os, sys
print(json.dumps({{"argv": sys.argv[1:], "key": os.environ.get("EDGE_AGENT_IDEMPOTENCY_KEY"),
                  "cwd": os.getcwd(), "env": os.environ.get("STAMP_MODE")}}))
"""


def script(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def command(tmp: Path, argv: list[str], params: dict | None = None, timeout_s: float = 10.0,
            **options: object):
    opts = {"argv": argv, **options}
    assert check_tool_options("command", opts, tmp) == []
    return build_tool("cmd", "command", description="", timeout_s=timeout_s, idempotent=False,
                      params=params or {"type": "object"}, result_schema=None, options=opts,
                      base_dir=tmp)


def test_contract_relative_program_and_json_stdout(tmp_path: Path) -> None:
    script(tmp_path, "stamp.sh", ECHO_ARGS)
    tool = command(tmp_path, ["./stamp.sh", "--part={part}", "{part}"], env={"STAMP_MODE": "x"})
    out = tool.call({"part": "A-7"}, idempotency_key="run/n/0")
    assert out["exit_code"] == 0 and out["stderr"] == ""
    assert out["json"] == {"argv": ["--part=A-7", "A-7"], "key": "run/n/0",
                           "cwd": str(tmp_path), "env": "x"}


def test_values_never_reach_a_shell_or_split(tmp_path: Path) -> None:
    script(tmp_path, "stamp.sh", ECHO_ARGS)
    tool = command(tmp_path, ["./stamp.sh", "{part}", "{count}"])
    nasty = "x; touch pwned && echo $(id) `id` | cat > pwned2 \n -rf *"
    out = tool.call({"part": nasty, "count": 3}, idempotency_key="k")
    assert out["json"]["argv"] == [nasty, "3"]  # one argument each, byte for byte
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    out = tool.call({"part": "{count}", "count": 1.5}, idempotency_key="k")
    assert out["json"]["argv"] == ["{count}", "1.5"]  # no second substitution


def test_arguments_are_validated_before_running(tmp_path: Path) -> None:
    script(tmp_path, "touch.sh", "#!/bin/sh\ntouch ran\n")
    params = {"type": "object", "properties": {"part": {"type": "string", "pattern": "^[A-Z]"}},
              "required": ["part"]}
    tool = command(tmp_path, ["./touch.sh", "{part}"], params=params)
    for bad in ({}, {"part": "lower"}, {"part": 5}):
        with pytest.raises(ToolError) as info:
            tool.call(bad, idempotency_key="k")
        assert info.value.kind == "invalid_args" and not info.value.retryable
    assert not (tmp_path / "ran").exists()
    tool.call({"part": "Ok"}, idempotency_key="k")
    assert (tmp_path / "ran").exists()


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    script(tmp_path, "hang.sh", "#!/bin/sh\nsleep 60 &\necho $! > child.pid\nwait\n")
    tool = command(tmp_path, ["./hang.sh"], timeout_s=0.5)
    with pytest.raises(ToolError) as info:
        tool.call({}, idempotency_key="k")
    assert info.value.kind == "timeout" and info.value.retryable
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail("the grandchild outlived the timeout")


def test_output_limit_stops_a_flood(tmp_path: Path) -> None:
    tool = command(tmp_path, ["yes", "{word}"], timeout_s=30, max_output_bytes=10_000)
    with pytest.raises(ToolError) as info:  # killed at the limit, long before the timeout
        tool.call({"word": "spam"}, idempotency_key="k")
    assert info.value.kind == "bad_reply" and not info.value.retryable
    assert "10000 bytes" in str(info.value)


def test_nonzero_exit_carries_code_and_stderr_tail(tmp_path: Path) -> None:
    script(tmp_path, "fail.sh", "#!/bin/sh\necho progress\n"
           "for i in $(seq 1 300); do echo noise $i >&2; done\necho 'disk full' >&2\nexit 3\n")
    tool = command(tmp_path, ["./fail.sh"])
    with pytest.raises(ToolError) as info:
        tool.call({}, idempotency_key="k")
    err = info.value
    assert err.kind == "failed" and not err.retryable and err.fields["exit_code"] == 3
    assert err.fields["stderr"].endswith("disk full") and len(err.fields["stderr"]) <= 500


def test_missing_program_and_non_json_output(tmp_path: Path) -> None:
    tool = command(tmp_path, ["./nowhere.sh"])
    with pytest.raises(ToolError) as info:
        tool.call({}, idempotency_key="k")
    assert info.value.kind == "failed" and "nowhere.sh" in str(info.value)
    out = command(tmp_path, ["echo", "[1, 2]"]).call({}, idempotency_key="k")
    assert out["stdout"] == "[1, 2]\n" and "json" not in out  # only objects are parsed


@pytest.mark.parametrize("options,key", [
    ({}, "argv"),
    ({"argv": "ls -l"}, "argv"),
    ({"argv": []}, "argv"),
    ({"argv": ["{prog}", "x"]}, "argv"),
    ({"argv": ["ls", "{a.b}"]}, "argv"),
    ({"argv": ["ls", "{0}"]}, "argv"),
    ({"argv": ["ls"], "max_output_bytes": 0}, "max_output_bytes"),
    ({"argv": ["ls"], "env": {"A": 1}}, "env"),
    ({"argv": ["ls"], "cwd": "missing-folder"}, "cwd"),
    ({"argv": ["ls"], "shell": True}, "shell"),
])
def test_bad_command_options_are_named(tmp_path: Path, options: dict, key: str) -> None:
    problems = check_tool_options("command", options, tmp_path)
    assert key in [k for k, _, _ in problems]
    for k, _, value in problems:
        if k == key and key in options:
            assert value == options[key]


def test_python_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "plant_tools.py").write_text(
        "def scale(*, value, factor=2, idempotency_key):\n"
        "    if value < 0:\n        raise ValueError('negative')\n"
        "    return {'value': value * factor, 'key': idempotency_key}\n"
        "def bad(**kw):\n    return [1]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    opts = {"entry": "plant_tools:scale"}
    assert check_tool_options("python", opts, tmp_path) == []
    tool = build_tool("scale", "python", description="", params={"type": "object"},
                      result_schema={"type": "object", "required": ["value"]},
                      idempotent=True, timeout_s=1, options=opts, base_dir=tmp_path)
    assert tool.call({"value": 4}, idempotency_key="k9") == {"value": 8, "key": "k9"}
    assert tool.blocks  # a function may wait, unless it says it never does
    pure = build_tool("scale", "python", description="", params={"type": "object"},
                      result_schema=None, idempotent=True, timeout_s=1,
                      options={**opts, "blocks": False}, base_dir=tmp_path)
    from edge_agent.engine import ToolBinding
    assert not pure.blocks and not ToolBinding(pure).blocks
    assert pure.call({"value": 1}, idempotency_key="k") == {"value": 2, "key": "k"}
    assert check_tool_options("python", {**opts, "blocks": "no"}, tmp_path) == [
        ("blocks", "must be true or false", "no")]
    with pytest.raises(ToolError) as info:
        tool.call({"value": -1}, idempotency_key="k")
    assert info.value.kind == "failed" and "negative" in str(info.value)
    bad = build_tool("bad", "python", description="", params={"type": "object"},
                     result_schema=None, idempotent=True, timeout_s=1,
                     options={"entry": "plant_tools:bad"}, base_dir=tmp_path)
    with pytest.raises(ToolError) as info:
        bad.call({}, idempotency_key="k")
    assert info.value.kind == "invalid_result"
    problems = {v for _, _, v in check_tool_options("python", {"entry": "nope_mod:f"}, tmp_path)}
    problems |= {v for _, _, v in check_tool_options("python", {"entry": "no-colon"}, tmp_path)}
    assert problems == {"nope_mod:f", "no-colon"}
    with pytest.raises(ToolError) as info:
        build_tool("x", "python", description="", params={"type": "object"},
                   result_schema=None, idempotent=True, timeout_s=1,
                   options={"entry": "plant_tools:missing"}, base_dir=tmp_path)
    assert info.value.kind == "failed"
