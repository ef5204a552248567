"""An approval's `patch_keys` are optional in the answer: a plain approve (no patch, or a
patch without some key) gives the missing keys null, so a branch after the gate reads null
instead of failing the run with "Undefined variable" (config check accepted it)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support.engine import Harness

from edge_agent.config import load_config
from edge_agent.engine import decide_approval

CONFIG = """
[device]
id = "d1"
data_dir = "data"

[workflows.w]
start = "gate"
[workflows.w.nodes.gate]
approval = { prompt = "Which mode?", patch_keys = ["mode", "speed"] }
next = "pick"
[workflows.w.nodes.pick]
branch = [ { when = 'mode == "fast"', next = "fast" }, { next = "slow" } ]
[workflows.w.nodes.fast]
end = true
output = "speed"
[workflows.w.nodes.slow]
end = true
output = "speed"
"""


@pytest.mark.parametrize("patch, ends, output", [
    (None, "slow", None), ({"speed": 3}, "slow", 3), ({"mode": "fast"}, "fast", None),
    ({"mode": "fast", "speed": 9}, "fast", 9)])
def test_a_plain_approve_leaves_declared_keys_null(tmp_path: Path, patch: Any, ends: str,
                                                   output: Any) -> None:
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text(CONFIG)
    cfg = load_config(cfg_path)
    h = Harness(tmp_path / "e.db", cfg.workflows, {})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {})
            await h.wait(rid, "waiting_approval")
            decide_approval(h.writer.write, rid, approve=True, by="op", patch=patch)
            assert h.engine is not None
            h.engine.wake(rid)
            done = await h.wait(rid, "completed", "failed")
            assert done.status == "completed", done.error
            assert [s["node"] for s in h.steps(rid)][-1] == ends
            assert done.output == output
        finally:
            await h.stop()
    asyncio.run(main())
