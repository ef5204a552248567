"""The built-in `kv` tool: shared state an agent reads and writes, replicated like any
document (each write commits with its `doc.version` outbox record)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import msgpack
from support.daemon import cli, cli_json
from support.engine import Harness

from edge_agent.config import load_config
from edge_agent.daemon.runtime import build_tools
from edge_agent.store import Store
from sync.documents import Version

CONFIG = """
[device]
id = "dev-k"
data_dir = "data"
runtime_dir = "run"

[tools.shared]
kind = "kv"

[workflows.remember]
start = "put"

[workflows.remember.nodes.put]
tool = "shared"
args_from = { op = "'set'", key = "'line_speed'", value = "input.speed" }
next = "get"

[workflows.remember.nodes.get]
tool = "shared"
args = { op = "get", key = "line_speed" }
next = "done"

[workflows.remember.nodes.done]
end = true
output = "get.value"
"""


def test_kv_from_the_cli_and_a_workflow(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    listed = cli_json(path, "tools", "list")["tools"][0]
    assert listed["kind"] == "kv" and listed["idempotent"] is True
    assert listed["params"]["properties"]["op"] == {"enum": ["get", "set"]}
    out = cli_json(path, "tools", "call", "shared", "--args",
                   '{"op": "set", "key": "mode", "value": {"fast": true}}')
    assert out["ok"] and out["result"]["written"]
    got = cli_json(path, "tools", "call", "shared", "--args", '{"op": "get", "key": "mode"}')
    assert got["result"] == {"key": "mode", "found": True, "value": {"fast": True}}
    missing = cli_json(path, "tools", "call", "shared", "--args", '{"op": "get", "key": "x"}')
    assert missing["result"]["found"] is False
    bad = cli(path, "tools", "call", "shared", "--args", '{"op": "drop", "key": "mode"}',
              check=False)
    assert bad.returncode == 65  # refused before anything is touched

    cfg = load_config(path)
    store = Store(cfg.db_path)
    h = Harness(cfg.db_path, cfg.workflows, build_tools(cfg, store))

    async def main() -> object:
        await h.start()
        try:
            rid = h.queue("remember", {"speed": 42})
            return await h.wait(rid, "completed", "failed")
        finally:
            await h.stop()
    run = asyncio.run(main())
    store.close()
    assert run.status == "completed", run.error
    assert run.output == 42
    with sqlite3.connect(cfg.db_path) as c:
        rows = c.execute("SELECT payload FROM outbox WHERE kind = 'doc.version'"
                         " ORDER BY seq").fetchall()
    versions = [Version.decode(msgpack.unpackb(r[0])) for r in rows]
    assert [(v.collection, v.key, v.value) for v in versions] == [
        ("kv", "mode", {"value": {"fast": True}}), ("kv", "line_speed", {"value": 42})]


def test_kv_options_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.replace('kind = "kv"', 'kind = "kv"\ncollection = "a/b"'))
    r = cli(path, "config", "check", check=False)
    assert r.returncode == 78 and "tools.shared.collection" in r.stdout + r.stderr
