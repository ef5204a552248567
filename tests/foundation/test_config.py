"""`edge-agent config check`: every malformed config names the file, the key and the value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.config import load_config
from edge_agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

CONTRACT = """
[device]
id = "press-7"
data_dir = "data"

[tools.stamp]
kind = "command"
argv = ["./stamp.sh", "{part}"]
params = { type = "object", properties = { part = { type = "string" } }, required = ["part"] }
idempotent = false
timeout_s = 5

[workflows.stamp_parts]
start = "first"

[workflows.stamp_parts.nodes.first]
tool = "stamp"
args = { part = "A" }
next = "check"

[workflows.stamp_parts.nodes.check]
branch = [ { when = "input.count > 1", next = "second" }, { next = "gate" } ]

[workflows.stamp_parts.nodes.second]
tool = "stamp"
args = { part = "B" }
next = "gate"

[workflows.stamp_parts.nodes.gate]
approval = { prompt = "Ship it?", timeout_s = 3600, on_timeout = "reject" }
next = "done"

[workflows.stamp_parts.nodes.done]
end = true
"""

MINIMAL = '[device]\nid = "d1"\ndata_dir = "data"\n'

# (description, toml text, substrings the error must contain)
BAD = [
    ("syntax error with line", MINIMAL + "[sync\n", ["TOML syntax error", "line 4"]),
    ("unknown top-level key", MINIMAL + "[nonsense]\nx = 1\n", ["nonsense: unknown key"]),
    ("unknown device key", MINIMAL + "colour = 'red'\n", ["device.colour: unknown key",
                                                          "'red'"]),
    ("missing device", '[telemetry]\nlog_format = "json"\n', ["device: is required"]),
    ("missing device id", '[device]\ndata_dir = "x"\n', ["device.id: is required"]),
    ("device id with slash", '[device]\nid = "a/b"\n', ["device.id:", "'a/b'"]),
    ("device id wrong type", '[device]\nid = 7\n', ["device.id: must be a string", "7"]),
    ("synchronous bad", MINIMAL + 'synchronous = "OFF"\n', ["device.synchronous", "'OFF'"]),
    ("batch bytes zero", MINIMAL + '[sync]\nbroker = "localhost:1883"\nbatch_max_bytes = 0\n',
     ["sync.batch_max_bytes: must be >= 1024 (got 0)"]),
    ("broker without port", MINIMAL + '[sync]\nbroker = "localhost"\n',
     ["sync.broker: must be host:port", "'localhost'"]),
    ("broker port range", MINIMAL + '[sync]\nbroker = "h:70000"\n', ["sync.broker", "h:70000"]),
    ("protocol bad", MINIMAL + '[sync]\nbroker = "h:1"\nprotocol = "4"\n',
     ["sync.protocol", "'4'"]),
    ("window negative", MINIMAL + '[sync]\nbroker = "h:1"\nwindow = -1\n',
     ["sync.window: must be >= 1 (got -1)"]),
    ("tls cert without key", MINIMAL + '[sync]\nbroker = "h:1"\n[sync.tls]\ncert = "c.pem"\n',
     ["sync.tls.cert: cert and key go together"]),
    ("outbox limit unknown stream", MINIMAL + '[sync]\nbroker = "h:1"\n'
     '[sync.outbox_max_bytes]\nlogs = 10000\n', ["sync.outbox_max_bytes.logs: is not a stream"]),
    ("log format", MINIMAL + '[telemetry]\nlog_format = "xml"\n',
     ["telemetry.log_format", "'xml'"]),
    ("log level", MINIMAL + '[telemetry]\nlog_level = "LOUD"\n', ["telemetry.log_level", "LOUD"]),
    ("otlp endpoint", MINIMAL + '[telemetry]\notlp_endpoint = "collector:4318"\n',
     ["telemetry.otlp_endpoint", "collector:4318"]),
    ("model without path", MINIMAL + '[model.small]\nn_ctx = 512\n', ["model.small.path: is required"]),
    ("model n_ctx type", MINIMAL + '[model.small]\npath = "m.gguf"\nn_ctx = "big"\n',
     ["model.small.n_ctx: must be an integer", "'big'"]),
    ("api key in file", MINIMAL + '[model.cloud]\nkind = "openai"\nbase_url = "https://x"\n'
     'api_key = "sk-1"\n', ["model.cloud.api_key: keys never live in the config file"]),
    ("agent unknown model", MINIMAL + '[agents.a]\nmodel = "nope"\n',
     ["agents.a.model: names no [model.*] entry", "'nope'"]),
    ("agent unknown tool", MINIMAL + '[model.m]\npath = "m.gguf"\n[agents.a]\nmodel = "m"\n'
     'tools = ["ghost"]\n', ["agents.a.tools: names no [tools.*] entry", "'ghost'"]),
    ("agent max_turns zero", MINIMAL + '[model.m]\npath = "m.gguf"\n[agents.a]\nmodel = "m"\n'
     'max_turns = 0\n', ["agents.a.max_turns: must be >= 1 (got 0)"]),
    ("tool unknown kind", MINIMAL + '[tools.t]\nkind = "laser"\n', ["tools.t.kind", "'laser'"]),
    ("tool timeout zero", MINIMAL + '[tools.t]\nkind = "command"\nargv = ["true"]\n'
     'timeout_s = 0\n', ["tools.t.timeout_s: must be > 0 (got 0)"]),
    ("tool timeout beyond any use", MINIMAL + '[tools.t]\nkind = "command"\nargv = ["true"]\n'
     'timeout_s = 1e308\n', ["tools.t.timeout_s: must be <= 31622400"]),
    ("approval timeout beyond any use", MINIMAL + '[workflows.w]\nstart = "g"\n'
     '[workflows.w.nodes.g]\napproval = { prompt = "ok?", timeout_s = 1e308 }\nnext = "e"\n'
     '[workflows.w.nodes.e]\nend = true\n',
     ["workflows.w.nodes.g.approval.timeout_s: must be <= 31622400"]),
    ("drain timeout beyond any use", MINIMAL.replace('[device]', '[device]\ndrain_timeout_s = 1e300'),
     ["device.drain_timeout_s: must be <= 31622400"]),
    ("tool bad params schema", MINIMAL + '[tools.t]\nkind = "command"\nargv = ["true"]\n'
     'params = { type = "objekt" }\n', ["tools.t.params: is not a valid JSON Schema"]),
    ("tool params no grammar can honour", MINIMAL + '[tools.t]\nkind = "command"\n'
     'argv = ["true"]\nparams = { type = "object", properties = { a = { not = {} } } }\n',
     ["tools.t.params: uses 'properties/a/not', which grammar-constrained generation"]),
    ("tool params admit nothing", MINIMAL + '[tools.t]\nkind = "command"\nargv = ["true"]\n'
     'params = { type = "object", properties = { n = { type = "integer", minimum = 5, '
     'maximum = 4 } }, required = ["n"] }\n',
     ["tools.t.params: admits no value a model could produce", "no integer lies in [5, 4]"]),
    ("workflow start unknown", MINIMAL + '[workflows.w]\nstart = "a"\n'
     '[workflows.w.nodes.b]\nend = true\n', ["workflows.w.start: names no node", "'a'"]),
    ("node two kinds", MINIMAL + '[workflows.w]\nstart = "a"\n[workflows.w.nodes.a]\n'
     'end = true\nbranch = [{ next = "a" }]\n', ["workflows.w.nodes.a: must have exactly one of"]),
    ("bad expression", MINIMAL + '[workflows.w]\nstart = "b"\n[workflows.w.nodes.b]\n'
     'branch = [{ when = "input.x >", next = "e" }, { next = "e" }]\n'
     '[workflows.w.nodes.e]\nend = true\n',
     ["workflows.w.nodes.b.branch[0].when: invalid expression", "'input.x >'"]),
    ("branch without default", MINIMAL + '[workflows.w]\nstart = "b"\n[workflows.w.nodes.b]\n'
     'branch = [{ when = "true", next = "e" }]\n[workflows.w.nodes.e]\nend = true\n',
     ["needs a default rule"]),
    ("unknown tool in node", MINIMAL + '[workflows.w]\nstart = "a"\n[workflows.w.nodes.a]\n'
     'tool = "ghost"\nnext = "e"\n[workflows.w.nodes.e]\nend = true\n',
     ["workflows.w.nodes.a.tool: names no [tools.*] entry", "'ghost'"]),
    ("approval timeout negative", MINIMAL + '[workflows.w]\nstart = "g"\n[workflows.w.nodes.g]\n'
     'approval = { prompt = "ok?", timeout_s = -5 }\nnext = "e"\n[workflows.w.nodes.e]\n'
     'end = true\n', ["workflows.w.nodes.g.approval.timeout_s: must be > 0 (got -5)"]),
    ("unreachable node", MINIMAL + '[workflows.w]\nstart = "e"\n[workflows.w.nodes.e]\n'
     'end = true\n[workflows.w.nodes.lost]\nend = true\n', ["nodes.lost: is unreachable"]),
    ("quorum too big", MINIMAL + '[tools.t]\nkind = "command"\nargv = ["true"]\n'
     '[workflows.w]\nstart = "p"\n[workflows.w.nodes.p]\nparallel = ["a"]\nquorum = 3\n'
     'next = "e"\n[workflows.w.nodes.a]\ntool = "t"\n[workflows.w.nodes.e]\nend = true\n',
     ["workflows.w.nodes.p.quorum: must be <= the number of branches (1) (got 3)"]),
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_contract_example_is_accepted(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, CONTRACT))
    assert cfg.device.id == "press-7"
    assert cfg.device.data_dir == tmp_path / "data"  # relative to the config file
    wf = cfg.workflows["stamp_parts"]
    assert wf.nodes["gate"].approval.on_timeout == "reject"
    assert cfg.tools["stamp"].options["argv"] == ["./stamp.sh", "{part}"]


@pytest.mark.parametrize("name,text,expected", BAD, ids=[b[0] for b in BAD])
def test_malformed_config_names_key_and_value(tmp_path: Path, name: str, text: str,
                                              expected: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path.resolve()) in message or str(path) in message
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"


def test_several_errors_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, '[device]\nid = 3\nsynchronous = "x"\n[telemetry]\nlog_format = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.issues) == 3


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")
    d = tmp_path / "dir.toml"
    d.mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(d)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError):
        load_config(binary)


def test_environment_overlay_and_default_path(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    cfg = load_config(path, env={"EDGE_AGENT_DEVICE_ID": "from-env",
                                 "EDGE_AGENT_DATA_DIR": "/srv/x"})
    assert cfg.device.id == "from-env" and str(cfg.device.data_dir) == "/srv/x"
    with pytest.raises(ConfigError, match=r"device.id"):
        load_config(path, env={"EDGE_AGENT_DEVICE_ID": "bad id!"})


def test_config_check_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, CONTRACT)
    assert main(["config", "check", str(good)]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + "[sync]\nbroker = \"h:1\"\nbatch_max_bytes = 0\n")
    assert main(["config", "check", str(bad)]) == 78
    assert "sync.batch_max_bytes: must be >= 1024 (got 0)" in capsys.readouterr().out


def test_config_check_as_a_process_and_env_var(tmp_path: Path) -> None:
    """The console script, as systemd and people run it."""
    bad = write(tmp_path, "[device]\nid = 5\n")
    exe = Path(sys.executable).parent / "edge-agent"
    r = subprocess.run([str(exe), "config", "check"], capture_output=True, text=True,
                       env={**os.environ, "EDGE_AGENT_CONFIG": str(bad)}, timeout=60)
    assert r.returncode == 78
    assert "device.id: must be a string (got 5)" in r.stdout


def test_example_config_passes(tmp_path: Path) -> None:
    assert main(["config", "check", str(ROOT / "systemd" / "edge-agent.example.toml")]) == 0


HANDED = """
[device]
id = "cell-9"
data_dir = "data"
[tools.local_review]
kind = "command"
argv = ["./verdict.sh"]
params = {{ type = "object", properties = {{}} }}
[workflows.inspect]
start = "review"
[workflows.inspect.nodes.review]
{node}
input = "input"
timeout_s = 30
fallback = "local"
next = "done"
[workflows.inspect.nodes.local]
tool = "local_review"
next = "done"
[workflows.inspect.nodes.done]
end = true
"""


def test_an_agent_where_cloud_is_a_step_handed_to_the_cloud(tmp_path: Path) -> None:
    """The issue's second shape, `agent = NAME` with `where = "cloud"`, is the same node as
    `handoff = "cloud:NAME"` (no local agent of that name is needed)."""
    nodes = []
    for i, shape in enumerate(('handoff = "cloud:reviewer"',
                               'agent = "reviewer"\nwhere = "cloud"')):
        path = tmp_path / f"c{i}.toml"
        path.write_text(HANDED.format(node=shape))
        nodes.append(load_config(path).workflows["inspect"].nodes["review"])
    assert nodes[0] == nodes[1]
    assert (nodes[1].kind, nodes[1].agent, nodes[1].timeout_s, nodes[1].fallback) == \
        ("handoff", "cloud:reviewer", 30.0, "local")
    path = tmp_path / "bad.toml"
    path.write_text(HANDED.format(node='agent = "reviewer"\nwhere = "moon"'))
    with pytest.raises(ConfigError, match=r"workflows\.inspect\.nodes\.review\.where: must be"
                       r" one of .*\(got 'moon'\)"):
        load_config(path)
