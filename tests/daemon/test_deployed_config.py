"""The device's deployed config on disk: a process SIGKILLed at any point of applying comes
back on one whole config, old or new, never a mix (fragment written first, then the marker
renamed); `config history` and `config rollback` work from the files alone; remote_config
names only tables a deployment may replace."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.daemon import cli, cli_json

from edge_agent.config import load_config
from edge_agent.config.deployed import DeployedState

CONFIG = """
[device]
id = "cell-1"
data_dir = "data"
runtime_dir = "run"
[sync]
broker = "127.0.0.1:1883"
insecure = true
remote_config = {remote}
[workflows.w]
start = "local"
[workflows.w.nodes.local]
end = true
"""


def fragment(name: str, n: int = 1) -> str:
    """A workflow `w` whose every node is named after the fragment, and `n` more workflows."""
    out = f'[workflows.w]\nstart = "{name}"\n[workflows.w.nodes.{name}]\nend = true\n'
    for i in range(n):
        out += f'[workflows.{name}_{i}]\nstart = "x"\n[workflows.{name}_{i}.nodes.x]\nend = true\n'
    return out


APPLY_FOREVER = """
import sys
from pathlib import Path
from edge_agent.config.deployed import DeployedState
state = DeployedState(Path(sys.argv[1]))
texts = sys.argv[2:]
i = 0
print("go", flush=True)
while True:
    text = texts[i % len(texts)]
    state.switch(state.store_fragment(text), {"action": "apply", "version": str(i)})
    i += 1
"""


def test_a_kill_mid_apply_leaves_one_whole_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG.format(remote='["workflows"]'))
    texts = [fragment("alpha", 40), fragment("beta", 40)]
    wholes = [{"w", *(f"{n}_{i}" for i in range(40))} for n in ("alpha", "beta")]
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", APPLY_FOREVER, str(tmp_path / "data"),
                                  *texts], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline() == "go\n"
            time.sleep(random.uniform(0.05, 0.4))
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
        loaded = load_config(cfg)
        names = set(loaded.workflows)
        assert names in wholes, names
        start = loaded.workflows["w"].start
        assert names == wholes[0 if start == "alpha" else 1]
        assert loaded.deployed == DeployedState(tmp_path / "data").current()


def test_history_rollback_and_remote_config_checks(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG.format(remote='["workflows", "tools"]'))
    state = DeployedState(tmp_path / "data")
    first = state.switch(state.store_fragment(fragment("alpha")), {"action": "apply",
                                                                   "version": "a"})
    state.switch(state.store_fragment(fragment("beta")), {"action": "apply", "version": "b"})
    assert load_config(cfg).workflows["w"].start == "beta"
    assert load_config(cfg, deployed=False).workflows["w"].start == "local"
    hist = cli_json(cfg, "config", "history")["history"]
    assert [(e["version"], e["previous"]) for e in hist] == [("a", "local"),
                                                             ("b", first["digest"])]
    out = cli_json(cfg, "config", "rollback")
    assert out["digest"] == first["digest"] and out["reloaded"] is False
    assert load_config(cfg).workflows["w"].start == "alpha"
    assert "ok" in cli(cfg, "config", "check").stdout
    cli(cfg, "config", "rollback")
    assert load_config(cfg).workflows["w"].start == "local"
    r = cli(cfg, "config", "rollback", check=False)
    assert r.returncode == 1 and "no deployment is in force" in r.stderr
    # the device's own tables are never the cloud's
    cfg.write_text(CONFIG.format(remote='["workflows", "sync"]'))
    r = cli(cfg, "config", "check", check=False)
    assert r.returncode == 78
    assert "sync.remote_config: names tables a deployment may replace" in r.stdout
