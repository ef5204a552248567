"""The fleet's projection on both stores: one row per device run kept with each batch, the
same rows in any arrival order and after `reindex`, hostile records counted and skipped
without blocking the batch, and the views (runs, approvals, trace, conflicts) over it."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.cloud import views
from sync.cloud.cli import main as cloud_main
from sync.cloud.projection import empty_row, fold, reindex
from sync.cloud.run_records import NARROW_BYTES, Event, decode
from sync.cloud.store import SqlCloudStore
from sync.envelope import Batch, WireRecord

EP = "1111111111111111"
T0 = time.time() - 60


def rec(seq: int, record_kind: str, ts: float, **fields: Any) -> WireRecord:
    return WireRecord(seq, record_kind, msgpack.packb({**fields, "ts": ts}), ts)


def run_records(run_id: str, *, fail: bool = False, t: float = T0) -> tuple[list[WireRecord],
                                                                          list[WireRecord]]:
    """A run's checkpoint and control records as a device writes them: queued, started,
    a step, a retry, then a gate that waits (or a failure); seqs from 1."""
    ck = [rec(1, "run.queued", t, run_id=run_id, workflow="ship", version="abc123",
              input={}, origin="cloud"),
          rec(2, "run.started", t + 1, run_id=run_id, workflow="ship", node="check"),
          rec(3, "step.retry", t + 2, run_id=run_id, node="check", attempt=1,
              error="timeout", kind="timeout", delay_s=0.5),
          rec(4, "step.completed", t + 3, run_id=run_id, workflow="ship", node="check",
              visit=1, attempt=2, status="completed", output={"ok": 1}, next="gate")]
    ct = [rec(1, "approval.requested", t + 4, run_id=run_id, approval_id=1, node="gate",
              visit=1, kind="approval", prompt="Ship lot 7?", timeout_at=t + 3600)]
    if fail:
        ck.append(rec(5, "run.finished", t + 5, run_id=run_id, workflow="ship", node="gate",
                      run_status="failed", error="E" * 5000))
    return ck, ct


def store_all(store: SqlCloudStore, device: str, stream: str, recs: list[WireRecord],
              size: int = 2) -> None:
    for i in range(0, len(recs), size):
        part = tuple(recs[i:i + size])
        store.store_batch(Batch(device, stream, part[0].seq - 1, part[0].seq, part[-1].seq,
                                part, EP, 2))


def table(store: SqlCloudStore, name: str, columns: str = "*") -> list[tuple[Any, ...]]:
    with store.tx() as c:
        return sorted(tuple(r) for r in c.execute(f"SELECT {columns} FROM {name}").fetchall())


def test_runs_are_projected_with_each_batch_and_reindex_gives_the_same_rows(
        cloud_url: str) -> None:
    store = SqlCloudStore(cloud_url)
    try:
        ck, ct = run_records("r-wait")
        store_all(store, "press-1", "checkpoints", ck)
        store_all(store, "press-1", "control", ct)
        ck2, _ = run_records("r-fail", fail=True)
        store_all(store, "press-2", "checkpoints", ck2, size=5)
        got = views.run(store, "press-1", "r-wait")
        assert got is not None
        assert (got["status"], got["node"], got["workflow"], got["version"], got["steps"],
                got["retries"]) == ("waiting_approval", "gate", "ship", "abc123", 1, 1)
        assert got["pending_approval"] == {
            "approval_id": 1, "node": "gate", "visit": 1, "kind": "approval",
            "prompt": "Ship lot 7?", "requested_at": T0 + 4, "expires_at": T0 + 3600}
        failed = views.run(store, "press-2", "r-fail")
        assert failed is not None and failed["status"] == "failed"
        assert failed["pending_approval"] is None and failed["finished_at"] == T0 + 5
        assert len(failed["error"]) == 2000  # truncated
        before = table(store, "fleet_runs")
        assert reindex(store)["devices"] == 2
        assert table(store, "fleet_runs") == before
        assert reindex(store, "press-1")["devices"] == 1
        assert table(store, "fleet_runs") == before
    finally:
        store.close()


def counted(store: SqlCloudStore) -> dict[str, dict[str, int]]:
    """Each device's listed runs by status, counted over every run (what the devices
    view's counters must equal)."""
    out: dict[str, dict[str, int]] = {}
    for d, status, n in table(store, "fleet_runs WHERE queued_at IS NOT NULL OR started_at"
                                     " IS NOT NULL GROUP BY device, status", "device, status,"
                                     " count(*)"):
        out.setdefault(d, {})[status] = n
    return out


def test_devices_count_runs_by_status_as_the_runs_say_in_any_order(cloud_url: str) -> None:
    """The devices view's per-status counters follow each run through its statuses
    (queued, running, waiting, failed or completed), whatever order batches come in,
    never count a run the views do not list, and `reindex` gives the same counters."""
    store = SqlCloudStore(cloud_url)
    try:
        batches = []
        for i in range(6):
            ck, ct = run_records(f"r{i}", fail=i % 3 == 1, t=T0 + i)
            if i % 3 == 2:  # decided and completed
                ct.append(rec(2, "approval.decided", T0 + i + 6, run_id=f"r{i}",
                              approval_id=1, node="gate", decision="approved"))
                ck.append(rec(5, "run.finished", T0 + i + 7, run_id=f"r{i}", node="end",
                              visit=1, attempt=1, status="completed", run_status="completed"))
            device = f"press-{i % 2}"
            batches += [(device, "checkpoints", [r]) for r in ck] + [
                (device, "control", [r]) for r in ct]
        batches.append(("press-0", "checkpoints", [rec(
            9, "run.finished", T0, run_id="no-start", run_status="failed")]))
        random.Random(7).shuffle(batches)
        for n, (device, stream, part) in enumerate(batches):
            for r in part:  # seqs per device and stream, as the shuffle left them
                store_all(store, device, stream, [WireRecord(100 * n + r.seq, r.kind,
                                                             r.payload, r.created_at)])
            if n % 5 == 0:
                assert {d["device"]: d["runs"] for d in views.devices(store)
                        if d["runs"]} == counted(store)
        got = {d["device"]: d["runs"] for d in views.devices(store)}
        assert got == counted(store) and sum(sum(r.values()) for r in got.values()) == 6
        assert got["press-0"] == {"waiting_approval": 1, "completed": 1, "failed": 1}
        assert reindex(store)["devices"] == 2
        assert {d["device"]: d["runs"] for d in views.devices(store)} == got
    finally:
        store.close()


def test_a_store_of_migration_5_gets_its_counters_from_its_runs(cloud_url: str) -> None:
    store = SqlCloudStore(cloud_url)
    try:
        for i in range(2):
            ck, ct = run_records(f"r{i}", fail=i == 1)
            store_all(store, f"press-{i}", "checkpoints", ck)
            store_all(store, f"press-{i}", "control", ct)
        with store.tx() as c:  # as migration 5 left it (6 adds the counters)
            c.execute("DROP TABLE fleet_device_runs")
            c.execute("UPDATE schema_version SET version = 5")
    finally:
        store.close()
    again = SqlCloudStore(cloud_url)
    try:
        assert {d["device"]: d["runs"] for d in views.devices(again)} == {
            "press-0": {"waiting_approval": 1}, "press-1": {"failed": 1}} == counted(again)
    finally:
        again.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_any_arrival_order_gives_the_same_rows(backend: str, tmp_path: Any,
                                               request: pytest.FixtureRequest) -> None:
    """Shared subscriptions reorder batches and two streams are stored side by side: the
    rows (and the device's counters) do not depend on it (compared with the in-order rows),
    on either store."""
    rows = []
    for n, seed in enumerate((None, 1, 2, 3)):
        store = SqlCloudStore(f"sqlite:///{tmp_path / f'{n}.db'}" if backend == "sqlite"
                              else request.getfixturevalue("new_pg_url")())
        try:
            ck, ct = run_records("r1")
            ct.append(rec(2, "approval.decided", T0 + 6, run_id="r1", approval_id=1,
                          node="gate", decision="approved", by="op", origin="local"))
            ck.append(rec(5, "run.finished", T0 + 7, run_id="r1", workflow="ship", node="end",
                          visit=1, attempt=1, status="completed", run_status="completed"))
            batches = [("checkpoints", [r]) for r in ck] + [("control", [r]) for r in ct]
            if seed is not None:
                random.Random(seed).shuffle(batches)
            for stream, part in batches:
                store_all(store, "d", stream, part)
            rows.append(table(store, "fleet_runs")
                        + table(store, "fleet_device_runs WHERE count <> 0"))
        finally:
            store.close()
    assert all(r == rows[0] for r in rows)
    assert "completed" in rows[0][0]


EVENTS = [Event("checkpoints", 1, "run.queued", "r", 1.0, {"workflow": "w", "version": "a"}),
          Event("checkpoints", 2, "run.started", "r", 2.0, {"node": "a"}),
          Event("checkpoints", 3, "step.completed", "r", 3.0, {"node": "a", "next": "g"}),
          Event("control", 1, "approval.requested", "r", 4.0, {"approval_id": 1, "node": "g",
                                                               "visit": 1, "prompt": "p"}),
          Event("control", 2, "approval.decided", "r", 5.0, {"approval_id": 1}),
          Event("checkpoints", 4, "run.migrated", "r", 5.5, {"to": "b"}),
          Event("checkpoints", 5, "step.retry", "r", 6.0, {"node": "h"}),
          Event("control", 3, "approval.requested", "r", 7.0, {"approval_id": 2, "node": "g",
                                                               "visit": 2, "prompt": "q"}),
          Event("checkpoints", 6, "run.finished", "r", 8.0, {"run_status": "failed",
                                                              "error": "x"})]


@settings(max_examples=200, deadline=None)
@given(st.permutations(EVENTS), st.integers(1, len(EVENTS)))
def test_fold_is_the_same_in_any_order_and_grouping(order: list[Event], cut: int) -> None:
    """The pure fold: any order of the events, applied in one or two batches, gives the
    row of the in-order fold."""
    expected = fold(empty_row(0.0), EVENTS)
    assert fold(fold(empty_row(0.0), order[:cut]), order[cut:]) == expected
    assert fold(empty_row(0.0), EVENTS[:-1])["approval_id"] == 2  # the newest open gate


def test_a_large_record_is_read_narrowly_and_projects_as_a_small_one() -> None:
    """A step's large output (and bytes no one reads, even invalid UTF-8) is skipped
    undecoded: the event holds the fields the projection folds, and the row is the same."""
    fields = {"run_id": "r", "node": "a", "next": "b", "visit": 1, "attempt": 1,
              "status": "completed", "workflow": "w", "ts": T0}
    small = WireRecord(1, "step.completed", msgpack.packb(fields), T0)
    padded = msgpack.packb({**fields, "output": {"rows": list(range(500)), "text": "x" * 4000},
                            "blob": b"\xff\xfe" * 100})
    large = WireRecord(1, "step.completed", padded, T0)
    got = decode("checkpoints", [large])
    assert len(large.payload) > NARROW_BYTES and not got.skipped
    assert "output" not in got.events[0].rec and got.events[0].rec["next"] == "b"
    assert fold(empty_row(0.0), got.events) == fold(
        empty_row(0.0), decode("checkpoints", [small]).events)
    broken = WireRecord(2, "step.completed", padded[:-3], T0)  # cut short: undecodable
    assert decode("checkpoints", [broken]).skipped == {"undecodable": 1}


def test_records_the_projection_cannot_use_are_counted_and_never_block_the_batch(
        cloud_url: str) -> None:
    store = SqlCloudStore(cloud_url)
    try:
        ck, _ = run_records("r1")
        bad_utf8 = msgpack.packb({"run_id": "r1", "ts": T0}, use_bin_type=True)
        bad_utf8 = bad_utf8.replace(b"r1", b"\xff\xfe")
        hostile = [WireRecord(5, "no.such.kind", b"whatever", T0),
                   rec(6, "run.finished", T0 + 9, run_id="r1", run_status="failed",
                       error="E" * (10 << 20)),  # a 10 MB error string
                   WireRecord(7, "step.completed", bad_utf8, T0),
                   rec(8, "run.finished", T0, run_id="never-started", run_status="failed"),
                   WireRecord(9, "step.completed", b"\x92\x01\x02", T0),  # not a map
                   rec(10, "step.completed", T0 + 5, run_id="r1", node="check", next="gate",
                       visit=1, attempt=1, status="completed")]
        stored = store.store_batch(Batch("d", "checkpoints", 0, 1, 10,
                                         tuple(ck + hostile), EP, 2))
        assert stored.watermark == 10  # every record stored, the batch acked
        assert len(store.records("d", "checkpoints")) == 10
        dev = views.devices(store)[0]
        assert dev["skipped"] == {"unknown_kind": 1, "too_large": 1, "undecodable": 1,
                                  "no_start": 1, "not_a_map": 1}
        r1 = views.run(store, "d", "r1")
        assert r1 is not None and r1["status"] == "running" and r1["steps"] == 2
        assert views.run(store, "d", "never-started") is None  # kept, not listed
        assert [r["run_id"] for r in views.runs(store)] == ["r1"]
    finally:
        store.close()


def test_views_filter_and_trace(cloud_url: str) -> None:
    store = SqlCloudStore(cloud_url)
    try:
        for i, device in enumerate(("press-1", "press-2", "press-3")):
            ck, ct = run_records(f"r{i}", fail=i == 1, t=T0 + i * 10)
            store_all(store, device, "checkpoints", ck)
            store_all(store, device, "control", ct)
        store_all(store, "press-1", "control", [rec(
            2, "approval.conflict", T0 + 8, run_id="r0", approval_id=1, node="gate",
            local="approved", cloud="rejected", resolved="rejected", rule="reject_wins")])
        assert [r["run_id"] for r in views.runs(store)] == ["r2", "r1", "r0"]
        assert [r["run_id"] for r in views.runs(store, status="failed")] == ["r1"]
        assert [r["run_id"] for r in views.runs(store, device="press-3")] == ["r2"]
        assert [r["run_id"] for r in views.runs(store, group="line", groups={
            "line": ["press-1", "press-2"]})] == ["r1", "r0"]
        assert views.runs(store, since=time.time() + 60) == []
        assert len(views.runs(store, limit=1)) == 1
        assert views.runs(store, workflow="other") == []
        pending = views.approvals(store)
        assert [(a["device"], a["run_id"], a["approval_id"], a["node"], a["visit"])
                for a in pending] == [("press-3", "r2", 1, "gate", 1)]  # r0 decided by the
        assert pending[0]["age_s"] > 0 and pending[0]["prompt"] == "Ship lot 7?"  # conflict
        assert [c["kind"] for c in views.conflicts(store)] == ["approval.conflict"]
        t = views.trace(store, "press-3", "r2")
        assert [(s["node"], s["status"], s["attempt"]) for s in t["steps"]] == [
            ("check", "failed", 1), ("check", "completed", 2), ("gate", "waiting", 1)]
        assert t["steps"][0]["error"] == "timeout"
        assert t["steps"][2]["children"][0]["prompt"] == "Ship lot 7?"
        devs = {d["device"]: d for d in views.devices(store, groups={"line": ["press-1"]})}
        assert devs["press-1"]["groups"] == ["line"] and devs["press-2"]["runs"] == {
            "failed": 1}
        json.dumps([views.devices(store), views.runs(store), pending, t])  # all JSON-able
    finally:
        store.close()


def cloud_with_r7(tmp_path: Any, capsys: Any) -> tuple[str, Any]:
    """A cloud store holding press-1's run r7 (waiting at its gate), and `run(*words)`:
    edge-agent-cloud over it, giving (exit code, stdout, stderr)."""
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    store = SqlCloudStore(url)
    ck, ct = run_records("r7")
    store_all(store, "press-1", "checkpoints", ck)
    store_all(store, "press-1", "control", ct)
    store.close()
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n[store]\nurl = "{url}"\n')

    def run(*words: str) -> tuple[int, str, str]:
        code = cloud_main([*words, "--config", str(cfg)])
        out = capsys.readouterr()
        return code, out.out, out.err
    return url, run


def test_cli_views_and_the_approve_the_cloud_refuses(tmp_path: Any, capsys: Any) -> None:
    """`runs`, `approvals`, `trace`, `export`, `reindex` with --json; `approve` of a run the
    cloud sees no gate on is refused (exit 1, nothing sent: the broker is not even asked)."""
    _, run = cloud_with_r7(tmp_path, capsys)
    code, out, _ = run("runs", "--status", "waiting_approval", "--since", "1h", "--json")
    assert code == 0 and [r["run_id"] for r in json.loads(out)["runs"]] == ["r7"]
    code, out, _ = run("approvals", "--json")
    assert code == 0 and json.loads(out)["approvals"][0]["run_id"] == "r7"
    code, out, _ = run("trace", "--device", "press-1", "r7")
    assert code == 0 and out.startswith("run r7 (ship version abc123) waiting_approval")
    assert "approval (approval) pending" in out
    code, out, err = run("trace", "--device", "press-1", "nope", "--json")
    assert code == 1 and "no run 'nope'" in json.loads(err)["error"]
    code, out, _ = run("export", "--since", "1d", "--device", "press-1")
    lines = [json.loads(x) for x in out.splitlines()]
    assert [(x["stream"], x["seq"]) for x in lines] == [("checkpoints", s) for s in
                                                        range(1, 5)] + [("control", 1)]
    assert all(len(x["sha256"]) == 64 and x["epoch"] == EP for x in lines)
    code, out, _ = run("reindex", "--json")
    assert code == 0 and json.loads(out)["records"] == 5
    code, _, err = run("approve", "--device", "press-1", "r8", "--json")
    assert code == 1 and "has not seen that run" in json.loads(err)["error"]
    code, _, err = run("runs", "--group", "nope", "--json")
    assert code == 64


def test_cli_words_that_are_not_text_and_odd_values_are_usage_errors(
        tmp_path: Any, capsys: Any) -> None:
    """Bytes that are not UTF-8 on the command line (a lone surrogate in argv), an unknown
    --status and an --approval no store can hold exit 64 with a JSON error, no traceback."""
    cfg = tmp_path / "cloud.toml"
    cfg.write_text('[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n[store]\n'
                   f'url = "sqlite:///{tmp_path / "cloud.db"}"\n')
    fragment = tmp_path / "f.toml"
    fragment.write_text("[tools]\n")
    bad = "\udcff"
    for words, named in [(["runs", "--workflow", bad], "workflow"),
                         (["trace", "--device", bad, bad], "device"),
                         (["export", "--since", "1h", "--device", bad], "device"),
                         (["reindex", "--device", bad], "device"),
                         (["deployment", "show", bad], "id"),
                         (["deploy", str(fragment), "--devices", "a", "--version", bad],
                          "--version"),
                         (["runs", "--status", "bogus"], "--status: one of queued"),
                         (["approve", "--device", "d", "r", "--approval", str(2**70)],
                          "--approval: an approval id")]:
        code = cloud_main([*words, "--config", str(cfg), "--json"])
        err = json.loads(capsys.readouterr().err)
        assert code == 64 and err["exit_code"] == 64, (words, err)
        assert err["error"].startswith(named), (words, err)


def test_reindex_of_an_unknown_device_and_approve_of_approval_0_are_refused(
        tmp_path: Any, capsys: Any) -> None:
    """`reindex --device nosuch` said "reindexed 1 device(s) from 0 record(s)" (exit 0): it is
    now "no device" (exit 1, the error as JSON under --json). `approve --approval -1` and `0`
    are usage errors (64) before anything is sent: no command is recorded."""
    url, run = cloud_with_r7(tmp_path, capsys)
    code, _, err = run("reindex", "--device", "nosuch", "--json")
    assert code == 1 and json.loads(err) == {
        "error": "no device 'nosuch': the cloud holds no records of it", "exit_code": 1}
    code, out, err = run("reindex", "--device", "nosuch")
    assert code == 1 and out == "" and "no device 'nosuch'" in err
    code, out, _ = run("reindex", "--device", "press-1", "--json")
    assert code == 0 and json.loads(out)["devices"] == 1 and json.loads(out)["records"] == 5
    for approval in ("-1", "0"):
        code, _, err = run("approve", "--device", "press-1", "r7", "--approval", approval,
                           "--json")
        assert code == 64 and json.loads(err)["error"].startswith(
            f"--approval: an approval id, 1 to {2**63 - 1} (got {approval})"), err
    store = SqlCloudStore(url)
    try:
        with store.tx() as c:
            assert store._exec(c, "SELECT count(*) FROM commands").fetchone()[0] == 0
    finally:
        store.close()
