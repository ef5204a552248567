"""Command shapes as the issues write them: `edge-agent-cloud keys init` without --config
(the installed service's config, or $EDGE_AGENT_CLOUD_CONFIG), and a CLI whose reader
leaves (`edge-agent status --watch | head`) ends without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
DEVICE = """
[device]
id = "pipe-1"
data_dir = "data"
runtime_dir = "run"
"""


def test_cloud_commands_find_their_config_without_the_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.toml"
    cfg.write_text('[mqtt]\nbroker = "127.0.0.1:1"\ntls = { cert = "c.pem", key = "c.key" }\n'
                   '[store]\nurl = "sqlite:///fleet.db"\n[signing]\nkey = "signing.key"\n')
    env = {**os.environ, "EDGE_AGENT_CLOUD_CONFIG": str(cfg)}
    r = subprocess.run([str(BIN / "edge-agent-cloud"), "keys", "init"], capture_output=True,
                       text=True, timeout=60, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "signing.key").exists() and r.stdout.strip()
    env.pop("EDGE_AGENT_CLOUD_CONFIG")
    r = subprocess.run([str(BIN / "edge-agent-cloud"), "status"], capture_output=True,
                       text=True, timeout=60, env=env, cwd=tmp_path)
    if not Path("/etc/edge-agent-cloud/cloud.toml").exists():  # the default, named
        assert r.returncode == 78 and "/etc/edge-agent-cloud/cloud.toml" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_reader_that_leaves_is_no_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(DEVICE)
    status = subprocess.Popen([str(BIN / "edge-agent"), "--config", str(cfg), "status",
                               "--watch", "--interval", "0.05"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        assert status.stdout is not None
        status.stdout.readline()
        status.stdout.close()  # as `head -1` does
        _, err = status.communicate(timeout=30)
    finally:
        status.kill()
        status.wait()
    assert b"Traceback" not in err, err.decode()
    assert status.returncode == 141
