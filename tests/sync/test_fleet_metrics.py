"""`edge-agent-cloud metrics` gives the device's `edge-agent metrics` figures: real engines
run a workflow with a tool that fails once (one retry) and a tool that fails for good on two
devices; what their outboxes hold is stored in the cloud (SQLite and PostgreSQL); the
cloud's figures per device equal what each device computes of its own database (the same
names, counts, success rates and p50/p95), the fleet's pool both, and --device, --group and
--since choose what is counted."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.engine import Harness, LedgerError, LedgerTool, fast_retry, record_spans
from support.to_cloud import to_cloud

from edge_agent.engine import ToolBinding
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.telemetry.summary import collect
from sync.cloud import fleet_metrics
from sync.cloud.cli import main as cloud_main
from sync.cloud.store import SqlCloudStore
from sync.distribution import percentile

FIGURES = ("tools", "retries", "steps")


def device_run(tmp_path: Path, cloud: SqlCloudStore, device: str, runs: int
               ) -> dict[str, Any]:
    """`runs` runs of a workflow on a real engine: `stamp` fails once then succeeds (a
    retry), `press` fails for good (a failed call, the fallback); the records go to the
    cloud as `device`'s. Returns the device's own figures, as `edge-agent metrics` has them."""
    d = tmp_path / device
    d.mkdir()
    stamp = LedgerTool("stamp", d / "stamp.jsonl", fail=lambda n: LedgerError(
        "busy", kind="timeout", retryable=True) if n % 2 == 1 else None)
    press = LedgerTool("press", d / "press.jsonl", fail=lambda n: LedgerError(
        "jammed", kind="error", retryable=False))
    wf = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="b", retry=fast_retry(3))
          .tool("b", "press", args={}, next="done", fallback="done", retry=fast_retry(1))
          .end("done")
          .build(tools={"stamp": tool_config("stamp"), "press": tool_config("press")}))
    h = Harness(d / "edge-agent.db", {"w": wf}, {"stamp": ToolBinding(stamp),
                                                 "press": ToolBinding(press)})
    since = time.time()

    async def main() -> dict[str, Any]:
        await h.start()
        try:
            for _ in range(runs):
                await h.wait(h.queue("w", {}), "completed", "failed")
            record_spans(h.writer)
            to_cloud(h.store, cloud, device)
            got: dict[str, Any] = collect(h.store.conn, since=since)
            return got
        finally:
            await h.stop()
    return asyncio.run(main())


@pytest.fixture
def fleet(cloud_url: str, tmp_path: Path) -> Any:
    """press-2 ran one run, then (after `mid`) press-1 ran two: (store, devices' figures, mid)."""
    cloud = SqlCloudStore(cloud_url)
    try:
        two = device_run(tmp_path, cloud, "press-2", 1)
        time.sleep(0.05)
        mid = time.time()
        time.sleep(0.05)
        one = device_run(tmp_path, cloud, "press-1", 2)
        yield cloud, {"press-1": one, "press-2": two}, mid
    finally:
        cloud.close()


def test_the_clouds_figures_per_device_are_the_devices_own(fleet: Any) -> None:
    cloud, own, _ = fleet
    got = fleet_metrics.metrics(cloud, since=time.time() - 3600)
    assert [d["device"] for d in got["devices"]] == ["press-1", "press-2"]
    for d in got["devices"]:
        mine = own[d["device"]]
        assert {k: d[k] for k in FIGURES} == {k: mine[k] for k in FIGURES}
    one = got["devices"][0]
    tools = {t["tool"]: t for t in one["tools"]}
    # two runs: stamp failed once and succeeded once in each, press failed in each
    assert (tools["stamp"]["calls"], tools["stamp"]["ok"], tools["stamp"]["failed"],
            tools["stamp"]["success_rate"]) == (4, 2, 2, 0.5)
    assert (tools["press"]["calls"], tools["press"]["failed"], tools["press"]["success_rate"]
            ) == (2, 2, 0.0)
    assert one["retries"] == {"total": 2, "runs": 2, "by_node": {"a": 2}}
    assert tools["stamp"]["duration_s"]["count"] == 4
    assert tools["stamp"]["duration_s"]["p50"] <= tools["stamp"]["duration_s"]["p95"]
    fleet_tools = {t["tool"]: t for t in got["fleet"]["tools"]}
    assert (fleet_tools["stamp"]["calls"], fleet_tools["press"]["calls"]) == (6, 3)
    assert got["fleet"]["retries"]["total"] == 3
    # the fleet's percentiles are those of every device's durations, pooled
    pooled = sorted(x for t in (own["press-1"], own["press-2"]) for x in [
        s["duration_s"]["max"] for s in t["steps"] if s["node"] == "b"])
    assert pooled and max(pooled) == next(
        s for s in got["fleet"]["steps"] if s["node"] == "b")["duration_s"]["max"]


def test_the_names_are_the_devices(fleet: Any) -> None:
    """Every key, at every depth, is one the device's `edge-agent metrics --json` has."""
    cloud, own, _ = fleet

    def keys(v: Any, path: str = "") -> set[str]:
        if isinstance(v, dict):
            return {f"{path}.{k}" for k in v if path != ".retries.by_node"} | {
                x for k, w in v.items() for x in keys(w, f"{path}.{k}")}
        if isinstance(v, list):
            return {x for w in v for x in keys(w, f"{path}[]")}
        return set()
    got = fleet_metrics.metrics(cloud, since=time.time() - 3600, device="press-1")
    device = {k: own["press-1"][k] for k in FIGURES}
    assert keys({k: got["devices"][0][k] for k in FIGURES}) == keys(device)
    assert keys(got["fleet"]) == keys(device)


def test_device_group_and_since_choose_what_is_counted(fleet: Any, tmp_path: Path,
                                                       capsys: Any, cloud_url: str) -> None:
    _, _, mid = fleet
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n[store]\nurl ='
                   f' "{cloud_url}"\n[groups]\nline = ["press-2"]\n')

    def run(*words: str) -> tuple[int, Any, str]:
        code = cloud_main(["metrics", *words, "--config", str(cfg), "--json"])
        out = capsys.readouterr()
        return code, json.loads(out.out) if out.out else None, out.err

    def calls(data: Any) -> dict[str, int]:
        return {d["device"]: sum(t["calls"] for t in d["tools"]) for d in data["devices"]}
    code, data, _ = run()
    assert code == 0 and calls(data) == {"press-1": 6, "press-2": 3}
    code, data, _ = run("--device", "press-1")
    assert code == 0 and calls(data) == {"press-1": 6}
    assert sum(t["calls"] for t in data["fleet"]["tools"]) == 6
    code, data, _ = run("--group", "line")
    assert code == 0 and calls(data) == {"press-2": 3}
    code, data, _ = run("--since", f"{mid:.3f}")  # press-2's run is older: not counted
    assert code == 0 and calls(data) == {"press-1": 6}
    assert data["fleet"]["retries"]["total"] == 2
    code, data, _ = run("--since", f"{time.time() + 1:.3f}")
    assert code == 0 and data["fleet"]["tools"] == [] and data["fleet"]["steps"] == []
    code, _, err = run("--device", "nope")
    assert code == 1 and "no device 'nope'" in json.loads(err)["error"]
    code, _, err = run("--group", "nope")
    assert code == 64 and "no group 'nope'" in json.loads(err)["error"]
    code = cloud_main(["metrics", "--config", str(cfg)])
    out = capsys.readouterr().out
    assert code == 0 and "tool stamp" in out and out.splitlines()[1] == "fleet"


def span(name: str, start: float, seconds: float, **attrs: Any) -> Any:
    return ("t", name, None, attrs.get("edge_agent.run_id"), name, start, start + seconds,
            attrs)


def test_known_timings_give_known_percentiles_and_older_spans_are_left_out() -> None:
    """Twenty steps of 1..20 s: p50 10 s, p95 19 s, max 20 s (nearest rank, the device's);
    calls ok / error / unknown; a retry is an attempt after the first; a span that started
    before `since` is not counted."""
    t = 1000.0
    spans = [span("step a", t + i, float(i), **{
        "edge_agent.node": "a", "edge_agent.workflow": "w", "edge_agent.node_kind": "tool",
        "edge_agent.attempt": 2 if i in (3, 4) else 1, "edge_agent.run_id": f"r{i % 2}",
        "edge_agent.step_status": "failed" if i == 5 else "completed"}) for i in range(1, 21)]
    spans += [span("execute_tool x", t, 2.0, **{"gen_ai.operation.name": "execute_tool",
                                                "gen_ai.tool.name": "x",
                                                "edge_agent.outcome": o})
              for o in ("ok", "ok", "confirmed", "error", "intent")]
    spans.append(span("step a", t - 1, 99.0, **{"edge_agent.node": "a",
                                                "edge_agent.workflow": "w"}))
    got = fleet_metrics.figures(spans, since=t)
    assert got["steps"] == [{"workflow": "w", "node": "a", "kind": "tool", "failed": 1,
                             "duration_s": {"count": 20, "p50": 10.0, "p95": 19.0,
                                            "max": 20.0}}]
    assert got["retries"] == {"total": 2, "runs": 2, "by_node": {"a": 2}}
    assert got["tools"] == [{"tool": "x", "calls": 5, "ok": 3, "failed": 1, "unknown": 1,
                             "success_rate": 0.75, "duration_s": {
                                 "count": 4, "p50": 2.0, "p95": 2.0, "max": 2.0}}]


@given(st.lists(st.floats(0, 1e4), max_size=50), st.floats(0, 100))
def test_the_percentile_is_the_devices(values: list[float], q: float) -> None:
    """One definition serves both sides (sync.distribution); it is the nearest rank: a value
    of the list with at least q% of the values at or below it, and fewer below it."""
    assert fleet_metrics.percentile(values, q) == percentile(values, q)
    p = percentile(values, q)
    if not values:
        assert p is None
        return
    assert p in values
    assert sum(v <= p for v in values) >= q / 100 * len(values)
    assert sum(v < p for v in values) < max(1, q / 100 * len(values))
