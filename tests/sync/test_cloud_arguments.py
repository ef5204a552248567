"""`edge-agent-cloud` checks its arguments before it opens a store or a broker: a lone
surrogate, a 5,000-deep JSON, an MQTT wildcard, an empty or 70,000-character device id, and a
70 KB `--input` (which the device would refuse after it travelled) are each a clear error with
exit 64 (usage) or 65 (too large to travel), never a traceback, under --json a JSON object."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

DEEP = "[" * 5000 + "]" * 5000
CASES = [
    (["start", "w", "--device", "d1", "--input", '"\\ud800"'], 64, "lone surrogate"),
    (["start", "w", "--device", "d1", "--input", "\udced\udca0\udc80"], 64, "not valid UTF-8"),
    (["start", "w", "--device", "d1", "--input", DEEP], 64, "nested deeper than 64 levels"),
    (["start", "w", "--device", "d1", "--input", "{"], 64, "not valid JSON"),
    (["approve", "--device", "d1", "r1", "--patch", DEEP], 64, "nested deeper"),
    (["doc", "set", "notes/a", "--device", "d1", "--value", DEEP], 64, "nested deeper"),
    (["approve", "--device", "+", "r1"], 64, "a device id is"),
    (["cancel", "--device", "line/#", "r1"], 64, "a device id is"),
    (["start", "w", "--device", "x" * 70_000], 64, "70000 characters"),
    (["start", "w", "--device", ""], 64, "a device id is"),
    (["start", "w", "--devices", "d1,+"], 64, "a device id is"),
    (["start", "w", "--device", "d1", "--input",
      json.dumps({"blob": "x" * 70_000})], 65, "more than one command carries"),
    (["approve", "--device", "d1", "r\udcff"], 64, "not valid UTF-8"),
]


@pytest.fixture
def cloud_toml(tmp_path: Path) -> Path:
    with socket.socket() as s:  # a broker nobody runs: nothing may get that far
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{port}"\ninsecure = true\n'
                   '[store]\nurl = "sqlite:///cloud.db"\n')
    return cfg


@pytest.mark.parametrize("words, code, message", CASES)
def test_arguments_are_checked_on_the_cloud_side(cloud_toml: Path, words: list[str], code: int,
                                                 message: str) -> None:
    for extra in ([], ["--json"]):
        argv = [sys.executable, "-m", "sync.cloud.cli", *words, "--config", str(cloud_toml),
                *extra]
        r = subprocess.run([os.fsencode(a) for a in argv], capture_output=True, timeout=60,
                           check=False)
        err = r.stderr.decode(errors="replace")
        assert r.returncode == code, err[-2000:]
        assert message in err and "Traceback" not in err, err[-2000:]
        if extra:
            assert json.loads(err)["exit_code"] == code
