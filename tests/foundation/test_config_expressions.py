"""`config check` catches expressions that could only fail at run time: names a node cannot
see, functions the evaluator lacks, conversions it cannot do, conditions that are not
boolean, and sources too big or deep to parse safely. Every error names the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.config.expression_check import check_expression
from edge_agent.config.expressions import ExpressionError, compile_expression
from edge_agent.errors import ConfigError

BASE = """
[device]
id = "press-7"
data_dir = "data"

[tools.stamp]
kind = "command"
argv = ["true", "{part}"]
params = { type = "object", properties = { part = { type = "string" } } }
idempotent = false

[workflows.w]
start = "first"

[workflows.w.nodes.first]
tool = "stamp"
args = { part = "A" }
next = "check"
fallback = "recover"

[workflows.w.nodes.recover]
tool = "stamp"
args_from = { part = "error.error" }
next = "gate"

[workflows.w.nodes.check]
branch = [ { when = "WHEN", next = "gate" }, { next = "gate" } ]

[workflows.w.nodes.gate]
approval = { prompt = "Ship it?", patch_keys = ["qty"] }
next = "last"

[workflows.w.nodes.last]
tool = "stamp"
args_from = { part = "ARG" }
next = "done"

[workflows.w.nodes.done]
end = true
"""


def config(tmp: Path, when: str = "first.exit_code == 0", arg: str = "string(qty)") -> Path:
    path = tmp / "config.toml"
    path.write_text(BASE.replace("WHEN", when.replace('"', '\\"'))
                    .replace("ARG", arg.replace('"', '\\"')))
    return path


def problems(tmp: Path, **kw: str) -> str:
    try:
        load_config(config(tmp, **kw))
    except ConfigError as exc:
        return str(exc)
    return ""


def test_what_a_node_can_see_passes(tmp_path: Path) -> None:
    assert problems(tmp_path) == ""
    assert problems(tmp_path, when="input.items.exists(i, i.n > first.exit_code) && "
                    "size(input.name) > 2 && input.name.startsWith(\"A\")") == ""
    assert problems(tmp_path, arg="string(input.count) + first.stdout + string(qty)") == ""


@pytest.mark.parametrize("when, key, message", [
    ("frobnicate(input.x)", "check.branch[0].when", "unknown function 'frobnicate'"),
    ('__import__("os")', "check.branch[0].when", "unknown function '__import__'"),
    ("nosuchnode.exit_code == 0", "check.branch[0].when", "unknown variable 'nosuchnode'"),
    ("last.exit_code == 0", "check.branch[0].when", "unknown variable 'last'"),  # not yet run
    ("qty > 1", "check.branch[0].when", "unknown variable 'qty'"),  # the gate comes later
    ('"yes"', "check.branch[0].when", "must give a boolean, this gives str"),
    ("1 + 2", "check.branch[0].when", "must give a boolean, this gives int"),
    ("size(input.items)", "check.branch[0].when", "must give a boolean"),
    ('string({"a": 1}) == "x"', "check.branch[0].when", "string() of a map"),
    ("string(first) == \"x\"", "check.branch[0].when", "string() of a map"),
    ("string(true) == \"x\"", "check.branch[0].when", "string() of a bool"),
    ('"a".split(",") == ["a"]', "check.branch[0].when", "unknown function 'split'"),
])
def test_expressions_that_cannot_work_are_config_errors(tmp_path: Path, when: str, key: str,
                                                        message: str) -> None:
    text = problems(tmp_path, when=when)
    assert f"workflows.w.nodes.{key}: " in text and message in text, text


def test_error_is_visible_only_after_a_fallback(tmp_path: Path) -> None:
    """`recover` is first's fallback: `error` may be set there and after it (gate, last),
    never on the path that did not fail (check)."""
    assert problems(tmp_path, arg="error.error") == ""
    text = problems(tmp_path, when='error.node == "first"')
    assert "check.branch[0].when: unknown variable 'error'" in text, text


@pytest.mark.parametrize("source, reason", [
    (" + ".join(["1"] * 60_000), "longer than 4096 characters"),
    ("(" * 40 + "1" + ")" * 40, "nested deeper than 32 levels"),
    (" + ".join(["1"] * 300), "more than 256 operators"),
])
def test_limits_are_checked_before_parsing(source: str, reason: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(source)
    assert reason in str(info.value)
    assert check_expression(source, {"input"})[0].startswith("invalid expression")


def test_a_huge_flat_expression_is_exit_78_naming_the_key(tmp_path: Path) -> None:
    """It crashed the parser (SIGSEGV, exit 139) before the limits."""
    path = config(tmp_path, when=" + ".join(["input.x"] * 60_000) + " > 0")
    r = subprocess.run([sys.executable, "-m", "edge_agent", "config", "check", "--config",
                        str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 78, (r.returncode, r.stdout[-500:], r.stderr[-500:])
    assert "workflows.w.nodes.check.branch[0].when: invalid expression" in r.stdout
    assert "longer than 4096 characters" in r.stdout


@pytest.mark.parametrize("kw, key, reason", [
    ({"when": "1 / 0 > 0"}, "check.branch[0].when", "division by zero"),
    ({"when": "1 % 0 == 0"}, "check.branch[0].when", "modulo by zero"),
    ({"when": "9223372036854775807 + 1 > 0"}, "check.branch[0].when", "overflow"),
    ({"arg": "string(1 / 0)"}, "last.args_from.part", "division by zero"),
    ({"arg": "string(-9223372036854775807 - 2)"}, "last.args_from.part", "overflow"),
])
@pytest.mark.parametrize("command", [["config", "check"], ["run"]])
def test_constant_arithmetic_errors_are_exit_78_naming_the_key(
        tmp_path: Path, kw: dict[str, str], key: str, reason: str, command: list[str]) -> None:
    """They were a traceback and exit 1 at `config check` and at start (systemd restarted
    the daemon forever)."""
    path = config(tmp_path, **kw)
    r = subprocess.run([sys.executable, "-m", "edge_agent", *command, "--config", str(path)],
                       capture_output=True, text=True, timeout=60, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 78, out[-2000:]
    assert f"workflows.w.nodes.{key}: fails whatever the run holds" in out and reason in out, out
    assert "Traceback" not in out


def test_arithmetic_errors_at_run_time_are_expression_errors() -> None:
    from edge_agent.config.expressions import evaluate
    for source in ("input.x / 0", "input.x % 0", "input.x + 9223372036854775807"):
        with pytest.raises(ExpressionError):
            evaluate(source, {"input": {"x": 1}})


@pytest.mark.parametrize("what", ["missing", "not gguf", "directory"])
def test_a_model_file_that_cannot_load_fails_config_check(tmp_path: Path, what: str) -> None:
    path = config(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    if what == "not gguf":
        (models / "small.gguf").write_bytes(b"<html>404 not found</html>")
    elif what == "directory":
        (models / "small.gguf").mkdir()
    path.write_text(path.read_text() + '\n[model.small]\npath = "models/small.gguf"\n')
    r = subprocess.run([sys.executable, "-m", "edge_agent", "config", "check", "--config",
                        str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 78, (r.stdout, r.stderr)
    assert "model.small.path: " in r.stdout
    expected = {"missing": "no such file", "not gguf": "is not a GGUF model",
                "directory": "is not a regular file"}[what]
    assert expected in r.stdout


def test_a_generated_gguf_model_passes_config_check(tmp_path: Path) -> None:
    path = config(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "small.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\0" * 64)
    path.write_text(path.read_text() + '\n[model.small]\npath = "models/small.gguf"\n')
    r = subprocess.run([sys.executable, "-m", "edge_agent", "config", "check", "--config",
                        str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "big"])
def test_config_check_refuses_what_is_not_a_config_file(tmp_path: Path, target: str) -> None:
    """`config check /dev/zero` used to read forever."""
    import os
    path = Path(target)
    if target == "fifo":
        path = tmp_path / "config.fifo"
        os.mkfifo(path)
    elif target == "big":
        path = tmp_path / "big.toml"
        path.write_text("# " + "x" * (5 * 1024 * 1024) + "\n")
    r = subprocess.run([sys.executable, "-m", "edge_agent", "config", "check", str(path)],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 78, (r.stdout, r.stderr)
    expected = "is larger than" if target == "big" else "is not a regular file"
    assert expected in r.stdout and "Traceback" not in r.stderr
