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

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from inference.test_agent_e2e import wait_status
from support.daemon import DaemonProcess, cli, cli_json, until
from support.openai_server import FakeOpenAI

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
