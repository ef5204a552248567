"""A SIGKILL during a non-idempotent call made by an agent inside a branch of a `parallel`
node: after the restart the run waits for a person (the unknown-outcome approval), as a
plain agent node does, instead of failing its join; the person's answer decides whether
the call is made once more, and the join then completes.

The real daemon, a model that answers from a script (a local server speaking the
chat-completions shape), and a command tool whose ledger says what the device did: a call
writes `start KEY PID`, waits while the file `hold` exists, then writes `end KEY` (the
effect) and answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from inference.test_agent_e2e import wait_status
from support.crash_child import agent_config, scripted_agent
from support.daemon import DaemonProcess, cli, cli_json, until
from support.engine import STAMP as STAMP_SCHEMA
from support.engine import Harness, LedgerTool, ledger_lines
from support.openai_server import FakeOpenAI

from edge_agent.engine import ToolBinding, decide_approval, queue_run
from edge_agent.engine import queries as q
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.engine.records import Run
from edge_agent.engine.transitions import branch_scope, branch_unknown, call_decided, call_key
from edge_agent.store.opening import open_database

CONFIG = """
[device]
id = "press-7"
data_dir = "data"
runtime_dir = "run"

[tools.stamp]
kind = "command"
argv = ["./stamp.sh", "{part}"]
params = { type = "object", properties = { part = { type = "string" } }, required = ["part"] }
idempotent = false
timeout_s = 60

[tools.light]
kind = "command"
argv = ["./light.sh"]
params = { type = "object", properties = {} }
idempotent = true

[model.remote]
kind = "openai"
base_url = "URL"

[agents.inspector]
model = "remote"
allow_remote = true
system = "You inspect parts and stamp the ones that pass."
tools = ["stamp"]
max_turns = 3

[workflows.inspect]
start = "fan"

[workflows.inspect.nodes.fan]
parallel = ["look", "lamp"]
join = "all"
next = "done"

[workflows.inspect.nodes.look]
agent = "inspector"
input = "input.task"

[workflows.inspect.nodes.lamp]
tool = "light"

[workflows.inspect.nodes.done]
end = true
"""

STAMP = '''#!/bin/sh
D="$(dirname "$0")"
echo "start $EDGE_AGENT_IDEMPOTENCY_KEY $$" >> "$D/ledger"
while [ -e "$D/hold" ]; do sleep 0.02; done
echo "end $EDGE_AGENT_IDEMPOTENCY_KEY" >> "$D/ledger"
echo '{"stamped": "'"$1"'"}'
'''
STAMP_CALL = '{"tool": "stamp", "args": {"part": "A7"}}'
ANSWER = '{"tool": "final_answer", "args": {"answer": "stamped"}}'


def ledger(tmp: Path, word: str) -> list[list[str]]:
    path = tmp / "ledger"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split()[1:] for line in lines if line.startswith(word + " ")]


def call_statuses(cfg: Path, rid: str) -> dict[str, str]:
    """The run's stamp calls in the tool journal: key -> status."""
    rows = cli_json(cfg, "db", "export", "tool_calls", "--run", rid)["rows"]
    return {r["idem_key"]: r["status"] for r in rows if r["tool"] == "stamp"}


@pytest.fixture
def model() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI([])
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def orphans() -> Iterator[list[int]]:
    """Tool processes the killed daemon leaves behind: stopped by PID at the end."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("took_effect", [False, True])
def test_sigkill_during_a_branch_agents_call_asks_a_person(
        tmp_path: Path, model: FakeOpenAI, orphans: list[int], took_effect: bool) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG.replace("URL", model.url))
    for name, text in (("stamp.sh", STAMP),
                       ("light.sh", '#!/bin/sh\necho "light on" >> "$(dirname "$0")/ledger"\n'
                                    'echo "{}"\n')):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    (tmp_path / "hold").touch()
    model.answers = [STAMP_CALL]
    d = DaemonProcess(cfg, tmp_path).start()
    d2 = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_for("READY=1")
        rid = cli_json(cfg, "start", "inspect", "--input", json.dumps({"task": "part A7"}))[
            "run_id"]
        until(lambda: ledger(tmp_path, "start") and ledger(tmp_path, "light"),
              why=d.output)  # the agent's stamp is in flight, the lamp branch is done
        [(key, pid)] = ledger(tmp_path, "start")
        orphans.append(int(pid))
        d.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        d.proc.wait()  # type: ignore[union-attr]
        if took_effect:  # the device finishes the stamp on its own
            (tmp_path / "hold").unlink()
            until(lambda: ledger(tmp_path, "end") == [[key]])
        else:  # the stamp never acts
            os.kill(int(pid), signal.SIGKILL)
            (tmp_path / "hold").unlink()

        d2.start()
        d2.wait_for("READY=1")
        run = wait_status(cfg, rid, {"waiting_approval", "failed", "completed"}, timeout=30)
        assert run["status"] == "waiting_approval", run["error"]  # before the fix: join 'all' not met
        [appr] = cli_json(cfg, "approvals")["approvals"]
        assert appr["kind"] == "unknown_outcome" and appr["context"]["key"] == key, appr
        assert call_statuses(cfg, rid) == {key: "unknown"}

        # the person says what the device shows; the model answers what follows
        model.answers = [STAMP_CALL, ANSWER] if not took_effect else [ANSWER]
        cli(cfg, "approve" if took_effect else "reject", rid, "--by", "op")
        run = wait_status(cfg, rid, {"completed", "failed", "waiting_approval"}, timeout=30)
        assert run["status"] == "completed", run["error"]
        ends = [e[0] for e in ledger(tmp_path, "end")]
        if took_effect:
            assert ends == [key]  # never called again
        else:
            assert len(ends) == 1 and ends[0] != key  # called once more, under its own key
        assert run["output"] is not None and model.answers == []
        calls = call_statuses(cfg, rid)
        assert calls.pop(key) == ("confirmed" if took_effect else "assumed_failed")
        assert list(calls.values()) == ([] if took_effect else ["ok"])
    finally:
        d.close()
        d2.close()


# the same rules in the engine over a real SQLite file: an agent branch's interrupted call as
# the database holds it after a SIGKILL, the branch's on_unknown, and the rules themselves
def two_agents() -> Any:
    return (Workflow("w").parallel("fan", ["look", "peek"], next="done")
            .agent("look", "inspector", input="input.part")
            .agent("peek", "inspector", input="input.part")
            .end("done").build(tools={"mark": tool_config("mark", STAMP_SCHEMA)},
                               agents={"inspector": agent_config("inspector")}))


def interrupted_branches(db_path: Path, wf: Any, branches: list[str]) -> str:
    """Run r1 at parallel node `fan`, each named agent branch with a `mark` call whose
    intent is committed and whose outcome never was."""
    store = open_database(db_path)
    try:
        rid = queue_run(store.write, workflow="w", input={"part": "A7"}, workflows={"w": wf},
                        run_id="r1")
        now = time.time()

        def tx(c: Any) -> None:
            q.update_run(c, rid, now, status="running", node="fan", visits={"fan": 1},
                         node_state={})
            for b in branches:
                q.journal_intent(c, key=call_key(rid, f"fan/{b}#1", 0, 0, 1), attempt=1,
                                 run_id=rid, node=f"fan/{b}#1", tool="mark",
                                 args={"part": "A7"}, now=now)
        store.write(tx)
    finally:
        store.close()
    return rid


def harness(db_path: Path, ledger: Path, on_unknown: str = "escalate") -> Harness:
    tool = ToolBinding(LedgerTool("mark", ledger), on_unknown=on_unknown)
    return Harness(db_path, {"w": two_agents()}, {"mark": tool}, agent_runner=scripted_agent)


@pytest.mark.parametrize("on_unknown", ["fail", "assume_failed"])
def test_a_branch_agents_unknown_call_follows_on_unknown(db_path: Path, ledger: Path,
                                                         on_unknown: str) -> None:
    rid = interrupted_branches(db_path, two_agents(), ["look"])
    h = harness(db_path, ledger, on_unknown)

    async def main() -> None:
        await h.start()
        try:
            run = await h.wait(rid, "failed", "completed", "waiting_approval")
            assert run.status == "failed", run.status
            why = " (on_unknown = fail)" if on_unknown == "fail" else "; assumed failed"
            assert f"look: outcome of mark unknown{why}" in run.error, run.error
            calls = h.store.read(lambda c: q.tool_calls(c, rid))
            key = call_key(rid, "fan/look#1", 0, 0, 1)
            status = "unknown" if on_unknown == "fail" else "assumed_failed"
            assert {c["idem_key"]: c["status"] for c in calls if c["tool"] == "mark"}[key] \
                == status
            # never called again (peek's call, if the failed join left it time, is its own)
            assert [e for e in ledger_lines(ledger) if "/look#" in e["key"]] == []
        finally:
            await h.stop()
    asyncio.run(main())


def test_two_branches_with_unknown_calls_ask_one_at_a_time(db_path: Path,
                                                           ledger: Path) -> None:
    """Both agents were in a call when the process died: the person is asked about one,
    then the other; "did not take effect" runs that agent again in a fresh scope, "took
    effect" replays the other with its call confirmed; the join then completes."""
    rid = interrupted_branches(db_path, two_agents(), ["look", "peek"])
    h = harness(db_path, ledger)

    async def main() -> None:
        engine = await h.start()
        try:
            asked: list[str] = []
            for approve in (False, True):
                deadline = time.monotonic() + 10
                while (appr := h.store.read(lambda c: q.pending_approval(c, rid))) is None \
                        or appr["context"]["key"] in asked:
                    assert time.monotonic() < deadline, h.store.read(
                        lambda c: q.get_run(c, rid))
                    await asyncio.sleep(0.01)
                assert appr["kind"] == "unknown_outcome", appr
                assert len(h.store.read(lambda c: q.list_approvals(c, run_id=rid))) == 1
                asked.append(appr["context"]["key"])
                decide_approval(h.writer.write, rid, approve=approve, by="op")
                engine.wake(rid)
            run = await h.wait(rid, "completed", "failed")
            assert run.status == "completed", run.error
            assert sorted(asked) == [call_key(rid, f"fan/{b}#1", 0, 0, 1)
                                     for b in ("look", "peek")]
            rejected = asked[0].split("/")[2].split("#")[0]
            # the one said not to have acted is made once more, in the fresh scope only
            assert [e["key"] for e in ledger_lines(ledger)] == [
                call_key(rid, f"fan/{rejected}#1.2.0", 0, 0, 1)]
            steps = {(s["node"], s["status"], s["attempt"]) for s in h.steps(rid)}
            assert {(rejected, "completed", 2), ("fan", "completed", 1)} <= steps
            assert ({"look", "peek"} - {rejected}).pop() in {s[0] for s in steps
                                                              if s[1] == "completed"}
            assert run.context[rejected] == {"marked": "A7", "ok": True}
        finally:
            await h.stop()
    asyncio.run(main())


def test_the_rules_of_a_branchs_unknown_outcome() -> None:
    assert branch_scope("fan", "look", 3) == "fan/look#3"
    assert branch_scope("fan", "look", 3, 2) == "fan/look#3.2.0"
    u = branch_unknown("escalate", tool="mark", key="k", call_attempt=1, args={}, attempt=2,
                       rerun=True)
    assert u["unknown"] and u["rerun"] and u["attempt"] == 2 and "mark" not in u
    assert branch_unknown("fail", tool="mark", key="k", call_attempt=1, args={}, attempt=1,
                          rerun=False)["mark"] == ["unknown", "k", 1]
    wf = two_agents()
    run = Run(run_id="r1", workflow="w", status="waiting_approval", node="fan", node_state={},
              visits={"fan": 1}, input={}, context={}, output=None, error=None,
              origin="test", trace_id=None, span_id=None, cancel_requested=False,
              created_at=0.0, updated_at=0.0, finished_at=None)
    asked = {"done": {"peek": {"ok": True}}, "attempts": {"look": 2}, "approval_id": 7,
             "unknown_key": "k", "unknown_attempt": 1, "rerun_branch": "look"}
    appr = {"status": "rejected", "kind": "unknown_outcome", "decided_by": "op"}
    d = call_decided(run, wf.nodes["fan"], asked, appr)
    assert d.action == "resume" and d.mark == ("assumed_failed", "k", 1, None)
    assert d.state == {"done": {"peek": {"ok": True}}, "attempts": {"look": 3}}
    d = call_decided(run, wf.nodes["fan"], asked, {**appr, "status": "approved"})
    assert d.action == "resume" and d.mark is not None and d.mark[0] == "confirmed"
    assert d.state == {"done": {"peek": {"ok": True}}, "attempts": {"look": 2}}
    tool_branch = {k: v for k, v in asked.items() if k != "rerun_branch"}  # retried by key
    assert call_decided(run, wf.nodes["fan"], tool_branch, appr).state == {
        "done": {"peek": {"ok": True}}, "attempts": {"look": 2}}
