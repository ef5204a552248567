"""Four agents of a `parallel` node on one model with `parallel = 4`, in the real daemon:
valid tool calls, a SIGKILL mid-batch, the KV figure in status, a config that cannot fit."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import jsonschema
from inference.test_agent_e2e import CONFIG, STAMP_PARAMS, setup, wait_status
from support.daemon import DaemonProcess, cli, cli_json

from edge_agent.inference.testmodel import make_test_model

BRANCHES = ["a", "b", "c", "d"]
FANOUT = CONFIG.replace("n_ctx = 2048\n", "n_ctx = 1024\nparallel = 4\n").replace(
    '''[workflows.inspect.nodes.look]
agent = "inspector"
input = "input.task"          # expression giving the agent's user message
next = "done"
''', f'''[workflows.inspect.nodes.look]
parallel = {json.dumps(BRANCHES)}
join = "all"
next = "done"
''' + "".join(f'''
[workflows.inspect.nodes.{b}]
agent = "inspector"
input = "input.task + ' side {b}'"
''' for b in BRANCHES))


def fanout(tmp: Path, delay: float = 0.0, extra: str = "") -> Path:
    cfg = setup(tmp, delay, extra)
    cfg.write_text(FANOUT.replace("max_turns = 4\n", "max_turns = 4\n" + extra))
    return cfg


def agent_turns(cfg: Path, rid: str) -> list[dict]:
    trace = cli_json(cfg, "trace", rid)
    return [c for s in trace["steps"] for c in s["children"]]


def test_four_agents_share_the_model_and_call_tools_validly(tmp_path: Path) -> None:
    cfg = fanout(tmp_path)
    assert cli(cfg, "config", "check").stdout.strip() == "ok"
    status = cli_json(cfg, "status")
    assert status["kv_cache"][0] | {"device_bytes": 0} == {
        "model": "small", "parallel": 4, "n_ctx": 1024, "kv_bytes": 4 * 1024 * 512,
        "weights_bytes": (tmp_path / "models" / "small.gguf").stat().st_size, "device_bytes": 0}
    assert "small 4 x 1024 tokens, KV 2.0 MiB" in cli(cfg, "status").stdout
    d = DaemonProcess(cfg, tmp_path).start()
    try:
        d.wait_for("READY=1")
        rids = [cli_json(cfg, "start", "inspect", "--input",
                         json.dumps({"task": f"inspect part {i}"}))["run_id"] for i in range(2)]
        for rid in rids:
            run = wait_status(cfg, rid, {"completed", "failed"}, timeout=120)
            assert run["status"] == "completed" or "max_turns=4" in run["error"], run
            children = agent_turns(cfg, rid)
            assert sum(1 for c in children if "model_turn" in c) >= 4  # every branch decided
            for c in children:
                if c.get("tool") == "stamp":
                    jsonschema.validate(c["args"], STAMP_PARAMS)
        assert "KV 2.0 MiB" in cli(cfg, "metrics").stdout
    finally:
        d.close()


def ledger_keys(ledger: Path, word: str) -> list[str]:
    if not ledger.exists():
        return []
    return [x.split()[1] for x in ledger.read_text().splitlines() if x.startswith(word + " ")]


def answer_unknown_outcomes(cfg: Path, rid: str, ledger: Path, asked: list[str]) -> dict:
    """Wait until the run ends; each interrupted stamp it waits on is answered as a person
    at the device would: took effect if the ledger shows its end (approve), else not
    (reject: the branch's agent runs again). The keys asked about go to `asked`."""
    answered: set[int] = set()
    deadline = time.time() + 180
    while True:
        run = cli_json(cfg, "runs", "show", rid)
        if run["status"] in ("completed", "failed"):
            return run
        pending = [a for a in cli_json(cfg, "approvals")["approvals"]
                   if a["run_id"] == rid and a["id"] not in answered]
        if run["status"] == "waiting_approval" and pending:
            [appr] = pending
            assert appr["kind"] == "unknown_outcome", appr
            key = appr["context"]["key"]
            asked.append(key)
            answered.add(appr["id"])
            cli(cfg, "approve" if key in ledger_keys(ledger, "end") else "reject", rid)
        assert time.time() < deadline, run
        time.sleep(0.1)


def test_sigkill_mid_batch_then_restart_repeats_no_tool_call(tmp_path: Path) -> None:
    cfg = fanout(tmp_path, extra="temperature = 1.5\n")
    stamp = tmp_path / "stamp.sh"
    stamp.write_text('#!/bin/sh\nL="$(dirname "$0")/ledger"\necho "start '
                     '$EDGE_AGENT_IDEMPOTENCY_KEY" >> "$L"\nsleep 0.05\necho "end '
                     '$EDGE_AGENT_IDEMPOTENCY_KEY" >> "$L"\necho ok\n')
    d = DaemonProcess(cfg, tmp_path).start()
    d2 = DaemonProcess(cfg, tmp_path)
    ledger = tmp_path / "ledger"
    try:
        d.wait_for("READY=1")
        rids = [cli_json(cfg, "start", "inspect", "--input",
                         json.dumps({"task": f"part {i}"}))["run_id"] for i in range(3)]
        deadline = time.time() + 60
        while True:  # kill while the agents decode: a stamp done, none in flight
            ends = ledger_keys(ledger, "end")
            if ends and len(ends) == len(ledger_keys(ledger, "start")):
                break
            assert time.time() < deadline, "no branch called its tool"
            time.sleep(0.002)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        time.sleep(0.3)  # a stamp the kill left running finishes (its 0.05 s) on its own
        d2.start()
        d2.wait_for("READY=1")
        asked: list[str] = []
        for rid in rids:
            run = answer_unknown_outcomes(cfg, rid, ledger, asked)
            # every run completes (or its agent ran out of turns), a stamp whose intent the
            # kill cut included: its run waited for a person, who said what the ledger shows
            assert run["status"] == "completed" or "max_turns=4" in run["error"], run
        keys = ledger_keys(ledger, "start")
        assert len(keys) == len(set(keys)), keys  # no tool call executed twice
        assert not set(asked) & set(ledger_keys(ledger, "start")) - set(
            ledger_keys(ledger, "end"))  # none asked about was left half done
    finally:
        d.close()
        d2.close()


def test_config_check_refuses_sequences_that_cannot_fit(tmp_path: Path) -> None:
    make_test_model(tmp_path / "big.gguf", n_embd=512, n_layer=8, n_head=8, n_ff=64)
    cfg = tmp_path / "config.toml"
    cfg.write_text('''[device]
id = "press-7"
data_dir = "data"
runtime_dir = "run"

[model.big]
path = "big.gguf"
n_ctx = 1048576
parallel = 64
''')
    r = cli(cfg, "config", "check", check=False)
    assert r.returncode == 78, r.stdout + r.stderr
    # 64 x 2^20 cells x 8 layers x 1024 values x 2 bytes = 1 TiB
    assert "model.big.parallel: 64 sequences x 1048576 tokens need 1,048,576.0 MiB of KV " \
           "cache" in r.stdout + r.stderr
    assert "(got 64)" in r.stdout + r.stderr
    cfg.write_text(cfg.read_text().replace("parallel = 64", "parallel = 0"))
    r = cli(cfg, "config", "check", check=False)
    assert r.returncode == 78 and "model.big.parallel: must be >= 1 (got 0)" in r.stdout + r.stderr
