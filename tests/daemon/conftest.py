from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import DaemonProcess

GATED = """
[device]
id = "cell-1"
data_dir = "data"
runtime_dir = "run"

[telemetry]
log_format = "json"

[workflows.gated]
start = "gate"

[workflows.gated.nodes.gate]
approval = { prompt = "Proceed?" }
next = "done"

[workflows.gated.nodes.done]
end = true
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(GATED)
    return path


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.close()
