"""Rough edges of both CLIs: errors as JSON under --json with the same exit codes, --version,
`tools list` telling where a tool runs, the cloud's approve --patch, and the cloud's
[tools] modules imported only by `run`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent import __version__
from edge_agent.cli import main

TOOLS = """
[device]
id = "c-1"
data_dir = "{data}"
runtime_dir = "{data}/run"
[tools.local_one]
kind = "command"
argv = ["/bin/true"]
[tools.asked]
kind = "remote"
timeout_s = 5
fallback = "local_one"
[workflows.w]
start = "done"
[workflows.w.nodes.done]
end = true
"""


def test_tools_list_says_where_a_tool_runs(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(TOOLS.format(data=tmp_path))
    assert main(["tools", "list", "--config", str(cfg), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["tools"]}
    assert (rows["local_one"]["location"], rows["local_one"]["executed_by"]) == ("local",
                                                                               "device")
    assert (rows["asked"]["location"], rows["asked"]["executed_by"]) == ("remote", "cloud")
    assert rows["asked"]["fallback"] == "local_one"
    assert main(["tools", "list", "--config", str(cfg)]) == 0
    assert "cloud (fallback local_one)" in capsys.readouterr().out


def test_errors_are_json_under_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(TOOLS.format(data=tmp_path))
    code = main(["runs", "show", "nope", "--config", str(cfg), "--json"])
    plain = main(["runs", "show", "nope", "--config", str(cfg)])
    assert code == plain != 0
    err = capsys.readouterr().err.splitlines()
    assert json.loads(err[0]) == {"error": json.loads(err[0])["error"], "exit_code": code}
    assert not err[1].startswith("{")
    bad = tmp_path / "bad.toml"
    bad.write_text("[device]\nid = 3\n")
    assert main(["status", "--config", str(bad), "--json"]) == 78
    assert json.loads(capsys.readouterr().err)["exit_code"] == 78


def test_versions() -> None:
    for cmd, name in (([sys.executable, "-m", "edge_agent"], "edge-agent"),
                      ([sys.executable, "-m", "sync.cloud.cli"], "edge-agent-cloud")):
        r = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60,
                           check=False)
        assert r.returncode == 0 and r.stdout.strip() == f"{name} {__version__}", r


def test_cloud_approve_patch_and_json_errors(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from sync.cloud.cli import build_parser
    from sync.cloud.cli import main as cloud_main
    args = build_parser().parse_args(["approve", "--config", "c.toml", "--device", "d", "r1",
                                      "--patch", '{"limit": 3}'])
    assert args.patch == '{"limit": 3}'
    cfg = tmp_path / "cloud.toml"
    cfg.write_text('[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n[store]\nurl = "sqlite:///c.db"\n')
    assert cloud_main(["approve", "--config", str(cfg), "--device", "d", "r1", "--patch",
                       "[1]", "--json"]) == 64
    assert json.loads(capsys.readouterr().err)["exit_code"] == 64
    assert cloud_main(["status", "--config", str(tmp_path / "missing.toml"), "--json"]) == 78
    assert json.loads(capsys.readouterr().err)["exit_code"] == 78


def test_cloud_imports_tools_only_to_run(tmp_path: Path) -> None:
    """A [tools] module that is not importable breaks only `run`, never status or approve."""
    cfg = tmp_path / "cloud.toml"
    cfg.write_text('[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n[store]\nurl = "sqlite:///c.db"\n'
                   '[tools]\nthing = "not_a_module_here:fn"\n')
    code = ("import sys; from sync.cloud.cli import main; rc = main(sys.argv[1:]); "
            "assert 'not_a_module_here' not in sys.modules; print(rc)")
    r = subprocess.run([sys.executable, "-c", code, "status", "--config", str(cfg), "--json"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert r.returncode == 0 and r.stdout.strip().endswith("0"), r.stderr


@pytest.mark.parametrize("cmd", [[sys.executable, "-m", "edge_agent"],
                                 [sys.executable, "-m", "sync.cloud.cli"]])
def test_usage_errors_are_json_under_json(cmd: list[str]) -> None:
    r = subprocess.run([*cmd, "approve", "--json", "--bogus"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 2
    err = json.loads(r.stderr)
    assert err["exit_code"] == 2 and "approve: error:" in err["error"]
    r = subprocess.run([*cmd, "approve", "--bogus"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 2 and r.stderr.startswith("usage:")
