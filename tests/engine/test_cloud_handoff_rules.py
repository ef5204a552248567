"""The rules of a handed-off step's result: applied only while the device's request is open
and the cloud's lease version dominates the device's; otherwise recorded once as a conflict.
A real SQLite store, no broker: the lease document's clocks decide."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_agent.engine import queries as q
from edge_agent.engine.cloud_handoff import (
    LEASES,
    apply_handoff_result,
    decide_result,
    lease_replica,
    write_lease,
)
from edge_agent.engine.control import queue_run
from edge_agent.store import Store
from sync.cloud.docs import CLOUD_NODE
from sync.replica import MemoryDocStore, Replica

KEY = "handoff/k1"


@pytest.mark.parametrize("request_status,finished,holds,action", [
    ("requested", False, True, "apply"),
    ("requested", False, False, "late"),  # the device took the lease back meanwhile
    ("requested", True, True, "late"),  # the run ended (cancelled) meanwhile
    ("timed_out", False, False, "late"),
    ("ok", False, True, "duplicate"),
    ("error", False, False, "duplicate"),
])
def test_decide_result(request_status: str, finished: bool, holds: bool,
                       action: str) -> None:
    assert decide_result(request=request_status, run_finished=finished,
                         cloud_holds=holds) == action


def _handed_off(tmp: Path) -> tuple[Store, str, Replica]:
    """A run whose step is out: the request journaled, the lease naming the cloud, and the
    cloud's replica holding the device's lease version."""
    store = Store(tmp / "edge.db")
    rid = queue_run(store.write, workflow="w", input={}, workflows={"w": None})
    cloud = Replica(CLOUD_NODE, MemoryDocStore())

    def tx(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO tool_calls (idem_key, attempt, run_id, node, tool, args, status,"
                  " started_at) VALUES (?, 1, ?, 'review#1', 'cloud:r', '{}', 'requested', 0)",
                  (KEY, rid))
        cloud.apply(write_lease(c, "dev", rid, {"owner": "cloud", "lease": KEY,
                                                "state": "held"}))
    store.write(tx)
    return store, rid, cloud


def _answer(cloud: Replica, rid: str) -> dict:
    version = cloud.write(LEASES, rid, {"owner": "device", "state": "done"})
    return {"key": KEY, "ok": True, "result": {"v": 1}, "version": version.encode(),
            "cloud": {"target": "r", "child_run": "h-1", "worker": "w1"}}


def test_a_result_on_an_open_lease_is_applied_once(tmp_path: Path) -> None:
    store, rid, cloud = _handed_off(tmp_path)
    answer = _answer(cloud, rid)
    assert store.write(lambda c: apply_handoff_result(c, "dev", answer))["applied"]
    again = store.write(lambda c: apply_handoff_result(c, "dev", answer))
    assert again["duplicate"] and not again["applied"]
    assert store.read(lambda c: q.journal_get(c, KEY, 1))["result"] == {"v": 1}
    steps = store.read(lambda c: q.steps(c, rid))
    assert [s["status"] for s in steps] == ["handoff"]
    assert store.read(lambda c: lease_replica(c, "dev").read(LEASES, rid)).siblings == {}


def test_a_result_after_the_device_took_the_lease_back_is_a_conflict(tmp_path: Path) -> None:
    store, rid, cloud = _handed_off(tmp_path)

    def take_back(c: sqlite3.Connection) -> None:
        c.execute("UPDATE tool_calls SET status = 'timed_out' WHERE idem_key = ?", (KEY,))
        write_lease(c, "dev", rid, {"owner": "device", "state": "fallback"})
    store.write(take_back)
    answer = _answer(cloud, rid)  # the cloud never saw the take-back: concurrent
    out = store.write(lambda c: apply_handoff_result(c, "dev", answer))
    assert out["conflict"] and not out["applied"]
    assert store.write(lambda c: apply_handoff_result(c, "dev", answer))["duplicate"]
    assert store.read(lambda c: q.journal_get(c, KEY, 1))["status"] == "timed_out"
    steps = store.read(lambda c: q.steps(c, rid))
    assert [(s["status"], s["output"]) for s in steps] == [("conflict", {"v": 1})]
    lease = store.read(lambda c: lease_replica(c, "dev").read(LEASES, rid))
    assert set(lease.siblings) == {"state"}  # both versions kept: `edge-agent conflicts`


def test_a_result_over_a_lease_the_device_moved_on_is_a_conflict(tmp_path: Path) -> None:
    """The request is still open, but the device wrote its lease again after the version
    the cloud answered on top of (an operator's write of the lease document does): the
    cloud's version no longer dominates, so the result is recorded, not applied. Only the
    lease clock can tell this apart: the journal still says `requested`."""
    store, rid, cloud = _handed_off(tmp_path)
    store.write(lambda c: write_lease(c, "dev", rid, {"owner": "device", "state": "held"}))
    answer = _answer(cloud, rid)  # on top of the first device version only: concurrent
    out = store.write(lambda c: apply_handoff_result(c, "dev", answer))
    assert out["conflict"] and not out["applied"]
    assert store.read(lambda c: q.journal_get(c, KEY, 1))["status"] == "requested"
    steps = store.read(lambda c: q.steps(c, rid))
    assert [(s["status"], s["error_kind"]) for s in steps] == [("conflict", "handoff_late")]


def test_a_result_without_the_lease_version_is_refused(tmp_path: Path) -> None:
    """Issue 26, observation 4: the clock guard is never skipped; a result with no version
    used to be applied as if the cloud held the lease."""
    store, rid, cloud = _handed_off(tmp_path)
    answer = {k: v for k, v in _answer(cloud, rid).items() if k != "version"}
    with pytest.raises(ValueError, match="without the lease's version"):
        store.write(lambda c: apply_handoff_result(c, "dev", answer))
    assert store.read(lambda c: q.journal_get(c, KEY, 1))["status"] == "requested"
    assert store.read(lambda c: q.steps(c, rid)) == []


def test_a_busy_answer_closes_the_request_unrun(tmp_path: Path) -> None:
    """Issue 26, observation 1: the cloud refused the request unrun; the step is closed
    with error kind `busy` (its handler takes the fallback or asks again), once."""
    store, _, _ = _handed_off(tmp_path)
    busy = {"key": KEY, "ok": False, "busy": True, "error": "busy: the cloud runs as many"}
    assert store.write(lambda c: apply_handoff_result(c, "dev", busy))["busy"]
    row = store.read(lambda c: q.journal_get(c, KEY, 1))
    assert (row["status"], row["error_kind"]) == ("error", "busy")
    assert store.write(lambda c: apply_handoff_result(c, "dev", busy))["duplicate"]
