"""The crash loop: a child process runs workflows until SIGKILLed at random moments (or
its power is cut), again and again; a device-side ledger judges that nothing finished is
redone and no non-idempotent action runs twice. `target` is the engine's database: a
SQLite file, or a postgresql:// URL (the store conformance suite runs it on both)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack

from edge_agent.engine import decide_approval
from edge_agent.engine import queries as q
from edge_agent.store.opening import open_database
from support.crash_child import IDEMPOTENT
from support.engine import ledger_lines
from sync.outbox import has_reader

TESTS = Path(__file__).resolve().parents[1]
RUNS = 12


def child(db: Path | str, ledger: Path, power_cut: Path | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if power_cut is not None:
        env["POWER_CUT_DIR"] = str(power_cut)
    return subprocess.Popen([sys.executable, "-m", "support.crash_child", str(db), str(ledger),
                             str(RUNS)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def answer_unknowns_truthfully(db: Path | str, ledger: Path) -> int:
    """An operator checks the device (the ledger) and says whether the action happened."""
    store = open_database(db)
    answered = 0
    try:
        done = {e["key"] for e in ledger_lines(ledger)}
        for appr in store.read(lambda c: q.list_approvals(c, pending_only=True)):
            assert appr["kind"] == "unknown_outcome", appr
            took_effect = appr["context"]["key"] in done
            decide_approval(store.write, appr["run_id"], approve=took_effect, by="operator")
            answered += 1
    finally:
        store.close()
    return answered


def keep(db: Path, cut: Path) -> None:
    """What is on disk now (nothing holds the database open): the state a power cut keeps
    until the next child's first fsync."""
    shutil.rmtree(cut, ignore_errors=True)
    (cut / "base").mkdir(parents=True)
    for suffix in ("", "-wal"):
        if Path(f"{db}{suffix}").exists():
            shutil.copyfile(f"{db}{suffix}", cut / "base" / f"{db.name}{suffix}")
    (cut / "durable").write_text("base")


def cut_power(db: Path, cut: Path) -> None:
    """Leave only what the last completed fsync covered, as a power cut would."""
    durable = cut / (cut / "durable").read_text()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    for suffix in ("", "-wal"):
        if (durable / f"{db.name}{suffix}").exists():
            shutil.copyfile(durable / f"{db.name}{suffix}", f"{db}{suffix}")


def outbox_holds_every_transition(c: Any, runs: list[Any]) -> None:
    """The transactional outbox, judged after the crashes: every stream's records are
    numbered 1..last_seq without a gap (nothing here acks or drops them), every completed
    step has its record (`step.completed`, or `run.finished` for the step that ends the
    run) and every finished run its `run.finished`. A database whose outbox nothing reads
    (PostgreSQL, the cloud runner's) holds no record at all, and no stream moved."""
    if not has_reader(c):
        assert c.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
        assert c.execute("SELECT max(last_seq) FROM outbox_streams").fetchone()[0] == 0
        return
    for stream, last in c.execute("SELECT stream, last_seq FROM outbox_streams").fetchall():
        seqs = [r[0] for r in c.execute("SELECT seq FROM outbox WHERE stream = ? ORDER BY seq",
                                        (stream,)).fetchall()]
        assert seqs == list(range(1, last + 1)), (stream, last, seqs[:5], len(seqs))
    told: dict[str, set[tuple[str, int]]] = {}
    finished: dict[str, str] = {}
    for kind, payload in c.execute("SELECT kind, payload FROM outbox WHERE stream ="
                                   " 'checkpoints' ORDER BY seq").fetchall():
        rec = msgpack.unpackb(bytes(payload))
        if kind in ("step.completed", "run.finished") and "visit" in rec:
            told.setdefault(rec["run_id"], set()).add((rec["node"], rec["visit"]))
        if kind == "run.finished":
            finished[rec["run_id"]] = rec["run_status"]
    for r in runs:
        done = {(s["node"], s["visit"]) for s in q.steps(c, r.run_id)
                if s["status"] == "completed"}
        assert done <= told.get(r.run_id, set()), \
            (r.run_id, "steps without their outbox record", done - told.get(r.run_id, set()))
        assert finished.get(r.run_id) == r.status, (r.run_id, r.status, "run.finished")


def kill_at_random_moments(tmp_path: Path, kills_wanted: int, power_cut: Path | None = None,
                           target: str | None = None) -> None:
    db: Path | str = target or tmp_path / "crash.db"
    ledger = tmp_path / "ledger.jsonl"
    rng = random.Random(int(os.environ.get("CRASH_SEED", "7")))
    kills = answered = 0
    procs: list[subprocess.Popen[bytes]] = []
    try:
        while kills < kills_wanted:
            if power_cut is not None:
                assert isinstance(db, Path)
                keep(db, power_cut)
            p = child(db, ledger, power_cut)
            procs.append(p)
            time.sleep(rng.uniform(0.15, 0.6))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            p.wait()
            if power_cut is not None:
                assert isinstance(db, Path)
                cut_power(db, power_cut)
            if not isinstance(db, Path) or db.exists():
                answered += answer_unknowns_truthfully(db, ledger)
        for _ in range(20):  # let it finish, answering what the kills left unknown
            p = child(db, ledger)
            procs.append(p)
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode()[-2000:]
            n = answer_unknowns_truthfully(db, ledger)
            answered += n
            if n == 0:
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    store = open_database(db)
    try:
        runs = store.read(lambda c: q.list_runs(c, limit=1000))
        assert len(runs) == RUNS
        assert Counter(r.status for r in runs) == {"completed": RUNS}, \
            [(r.run_id, r.status, r.error) for r in runs if r.status != "completed"]
        entries = ledger_lines(ledger)
        # a non-idempotent action ran exactly once per node of each run, across all attempts
        per_node = Counter((e["key"].split("/")[0], e["tool"]) for e in entries
                           if e["tool"] not in IDEMPOTENT)
        assert per_node and max(per_node.values()) == 1, per_node.most_common(3)
        for r in runs:
            part = r.input["part"]
            expected = {"scan", "press", "inspect", "weigh", "route", "finish"} | (
                set() if part % 2 == 0 else {"fan", "label", "light"})
            completed = {s["node"] for s in store.read(lambda c, r=r: q.steps(c, r.run_id))
                         if s["status"] == "completed"}
            assert expected <= completed, (r.run_id, expected - completed)
            for tool in ("press", "mark"):
                done = [e for e in entries if e["tool"] == tool
                        and e["key"].startswith(r.run_id + "/")]
                assert len(done) == 1, (r.run_id, tool, done)
            assert r.context["inspect"]["marked"] == str(part)
        store.read(lambda c: outbox_holds_every_transition(c, runs))
        if isinstance(db, Path):
            assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        store.close()
    print(f"{'power cuts' if power_cut else 'kills'}={kills} unknown outcomes "
          f"answered={answered}")
