"""`edge-agent conflicts` lists manual siblings; `conflicts resolve` ends them and replicates."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import msgpack
from support.daemon import cli, cli_json

from edge_agent.config import load_config
from edge_agent.store import Store
from sync.documents import CollectionRules, Version
from sync.replica import MemoryDocStore, Replica

CONFIG = """
[device]
id = "dev-a"
data_dir = "data"
runtime_dir = "run"
[sync]
broker = "127.0.0.1:1"
insecure = true
[sync.collections.notes]
default = "manual"
"""


def test_conflicts_list_and_resolve(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    cfg = load_config(path)
    from edge_agent.store.documents import replica, write_doc
    store = Store(cfg.db_path)
    mine = write_doc(store, cfg, "notes", "shift", {"text": "edge says"})
    theirs = Replica("cloud", MemoryDocStore(), rules={}).write("notes", "shift",
                                                               {"text": "cloud says"})
    store.write(lambda c: replica(c, cfg).apply(theirs))
    store.close()
    listed = cli_json(path, "conflicts")["conflicts"]
    assert listed[0]["key"] == "notes/shift"
    assert listed[0]["fields"] == {"text": ["cloud says", "edge says"]}
    assert cli_json(path, "status")["conflicts"] == 1
    bad = cli(path, "conflicts", "resolve", "notes/shift", "--take", "zzzz", check=False)
    assert bad.returncode == 1 and "names 0 of the versions" in bad.stderr
    cli(path, "conflicts", "resolve", "notes/shift", "--take", theirs.digest[:12])
    assert cli_json(path, "conflicts")["conflicts"] == []
    conn = sqlite3.connect(cfg.db_path)
    rows = conn.execute("SELECT payload FROM outbox WHERE kind = 'doc.version' ORDER BY seq")
    versions = [Version.decode(msgpack.unpackb(r[0])) for r in rows]
    conn.close()
    assert versions[0].digest == mine.digest
    resolution = versions[-1]
    assert resolution.value == {"text": "cloud says"}
    other = Replica("cloud", MemoryDocStore(), rules={"notes": CollectionRules({}, "manual")})
    for v in (mine, theirs):
        other.apply(v)
    assert other.read("notes", "shift").conflicted
    for v in (resolution,):
        other.apply(v)
    assert not other.read("notes", "shift").conflicted
    assert json.loads(cli(path, "status", "--json").stdout)["conflicts"] == 0


def test_resolve_with_a_new_value(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    cfg = load_config(path)
    from edge_agent.store.documents import replica, write_doc
    store = Store(cfg.db_path)
    write_doc(store, cfg, "notes", "shift", {"text": "edge says"})
    theirs = Replica("cloud", MemoryDocStore(), rules={}).write("notes", "shift",
                                                               {"text": "cloud says"})
    store.write(lambda c: replica(c, cfg).apply(theirs))
    store.close()
    both = cli(path, "conflicts", "resolve", "notes/shift", "--take", "x", "--value", "{}",
               check=False)
    assert both.returncode == 64  # one of --take or --value
    bad = cli(path, "conflicts", "resolve", "notes/shift", "--value", "{not json",
              check=False)
    assert bad.returncode != 0 and "--value" in bad.stderr
    done = cli_json(path, "conflicts", "resolve", "notes/shift", "--value",
                    '{"text": "both, merged by hand"}')
    assert done["value"] == {"text": "both, merged by hand"}
    assert cli_json(path, "conflicts")["conflicts"] == []
    store = Store(cfg.db_path)
    try:
        final = store.read(lambda c: replica(c, cfg).read("notes", "shift"))
        assert final.value == {"text": "both, merged by hand"} and not final.conflicted
    finally:
        store.close()
