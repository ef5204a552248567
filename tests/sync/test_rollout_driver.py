"""The rollout driver on both fleet stores, without a broker: two drivers over one store
never both take a step (each command goes out once), a wave waits its bake and goes on
only while its gate holds, "no runs yet" is not healthy unless min_runs is 0, a failing
wave's devices are told to go back to the digest they held, a reconnecting device is sent
what it has not answered. And the pure rules: waves from their spec, the gate's checks."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from sync.cloud import deployments as deps
from sync.cloud.rollout_rules import (
    RolloutError,
    answered_state,
    check_gate,
    gate,
    plan_waves,
)
from sync.cloud.store import SqlCloudStore

FRAGMENT = '[workflows.w]\nstart = "done"\n[workflows.w.nodes.done]\nend = true\n'
T0 = 1_800_000_000.0


class Sent:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, device: str, cid: str, args: dict[str, Any], ttl: float) -> None:
        assert ttl > 0
        self.calls.append((device, cid, args))

    def devices(self) -> list[str]:
        return [d for d, _, _ in self.calls]


def answer(store: SqlCloudStore, dep: str, device: str, status: str = "applied",
           action: str = "apply", **kw: Any) -> None:
    deps.record_result(store, device, msgpack.packb(
        {"deployment": dep, "device": device, "action": action, "status": status, **kw}))


def health(store: SqlCloudStore, dep: str, device: str, started: int, failed: int) -> None:
    deps.record_health(store, device, msgpack.packb(
        {"deployment": dep, "device": device, "started": started, "failed": failed,
         "tool_calls": 0, "tool_failures": 0, "sync_healthy": True, "at": T0}))


def test_waves_gates_and_rollback(cloud_url: str) -> None:
    a, b = SqlCloudStore(cloud_url), SqlCloudStore(cloud_url)  # two ingest processes
    try:
        devices = ["d1", "d2", "d3", "d4"]
        for device in devices:  # devices the cloud has heard from
            a.seen(device, online=True)
        dep = deps.create(a, fragment=FRAGMENT, devices=devices, version="v2",
                          waves="1,100%", bake_s=10, now=T0)
        sent = Sent()
        for store in (a, b, a):
            deps.tick(store, sent, now=T0 + 1)
        assert sent.devices() == ["d1"]  # wave 1 once, whoever drives
        _, cid, args = sent.calls[0]
        assert cid == f"deploy-{dep}-d1" and args["action"] == "apply"
        assert args["fragment"] == FRAGMENT and args["bake_s"] == 10
        answer(a, dep, "d1", previous="local")
        health(a, dep, "d1", started=0, failed=0)
        deps.tick(b, sent, now=T0 + 5)
        assert len(sent.calls) == 1  # baking
        health(a, dep, "d1", started=3, failed=0)
        deps.tick(b, sent, now=T0 + 12)
        deps.tick(a, sent, now=T0 + 12)
        assert sorted(sent.devices()[1:]) == ["d2", "d3", "d4"]
        shown = deps.deployment(a, dep)
        assert shown is not None and shown["wave"] == 2
        assert [d["shown"] for d in shown["devices"]] == ["healthy", "pending", "pending",
                                                           "pending"]
        # d4 reconnects without having answered: sent again at the next tick
        deps.device_online(a, "d4")
        deps.tick(a, sent, now=T0 + 13)
        assert sent.devices()[-1] == "d4" and len(sent.calls) == 5
        for d in ("d2", "d3"):
            answer(a, dep, d)
            health(a, dep, d, started=2, failed=0)
        deps.tick(a, sent, now=T0 + 30)
        done = deps.deployment(a, dep)
        assert done is not None and done["state"] == "completed", done
        # d4 never answered: once the deployment has expired it is not sent again
        deps.device_online(a, "d4")
        deps.tick(a, sent, now=T0 + 8 * 86400)
        assert len(sent.calls) == 5

        # a failing wave stops the deployment and goes back to what each device held
        bad = deps.create(a, fragment=FRAGMENT + "#2\n", devices=devices, waves="2,100%",
                          bake_s=10, now=T0 + 40)
        sent = Sent()
        deps.tick(a, sent, now=T0 + 41)
        answer(a, bad, "d1", previous=done["sha256"])
        answer(a, bad, "d2", status="rejected", reasons=["tools.x: unknown key"])
        health(a, bad, "d1", started=4, failed=4)
        deps.tick(b, sent, now=T0 + 52)
        deps.tick(a, sent, now=T0 + 52)
        failed = deps.deployment(a, bad)
        assert failed is not None and failed["state"] == "failed"
        assert "failed_rate" in failed["reason"]
        rollbacks = [c for c in sent.calls if c[2]["action"] == "rollback"]
        assert [(d, x["to"], x["digest"]) for d, _, x in rollbacks] == [
            ("d1", done["sha256"], failed["sha256"])]
        answer(a, bad, "d1", status="rolled_back", action="rollback")
        states = {d["device"]: (d["state"], d["reason"]) for d in deps.deployment(a, bad)[
            "devices"]}  # type: ignore[index]
        assert states == {"d1": ("rolled_back", None),
                          "d2": ("rejected", "tools.x: unknown key"),
                          "d3": ("waiting", None), "d4": ("waiting", None)}
        assert [d["state"] for d in deps.deployments(b)] == ["failed", "completed"]
        assert not deps.abort(a, bad)
    finally:
        a.close()
        b.close()


def test_no_runs_is_not_healthy_unless_min_runs_is_0_and_abort(cloud_url: str) -> None:
    store = SqlCloudStore(cloud_url)
    try:
        quiet = deps.create(store, fragment=FRAGMENT, devices=["d1"], bake_s=1, now=T0)
        zero = deps.create(store, fragment=FRAGMENT, devices=["d2"], bake_s=1, min_runs=0,
                           now=T0)
        stopped = deps.create(store, fragment=FRAGMENT, devices=["d3", "d4"], waves="1,2",
                              bake_s=1, now=T0)
        sent = Sent()
        deps.tick(store, sent, now=T0 + 0.5)
        for dep, device in ((quiet, "d1"), (zero, "d2"), (stopped, "d3")):
            answer(store, dep, device)
        assert deps.abort(store, stopped)
        deps.tick(store, sent, now=T0 + 2)
        states = {d["id"]: d["state"] for d in deps.deployments(store)}
        assert states == {quiet: "failed", zero: "completed", stopped: "aborted"}
        assert "fewer than --min-runs 1" in deps.deployment(store, quiet)["reason"]  # type: ignore[index]
        assert "d4" not in [d for d, _, _ in sent.calls]  # nothing more after an abort
    finally:
        store.close()


def test_rules() -> None:
    assert plan_waves("1,10%,50%,100%", 40) == [1, 4, 20, 40]
    assert plan_waves("1,40%,100%", 5) == [1, 2, 5]
    assert plan_waves("10%", 3) == [1, 3]  # the devices left out form one more wave
    assert plan_waves("1,10%,50%,100%", 5) == [1, 3, 5]  # 10% of 5 rounds to 1: no wave
    assert plan_waves("5,10", 3) == [3]  # a count over the target is every device
    for bad in ("0", "x", "150%", "", "-1"):
        with pytest.raises(RolloutError, match="--waves"):
            plan_waves(bad, 3)
    with pytest.raises(RolloutError, match="boolean"):
        check_gate("failed_rate")
    with pytest.raises(RolloutError, match="--abort-if"):
        check_gate("nope > 1")
    holds, _, m = gate("failed_rate > 0.5", 1, [
        {"state": "applied", "health": {"started": 4, "failed": 1, "tool_calls": 10,
                                        "tool_failures": 5}},
        {"state": "pending", "health": None}, {"state": "rejected", "health": None}])
    assert holds and m["failed_rate"] == 0.25 and m["tool_failure_rate"] == 0.5
    assert m["offline"] == 1 and m["rejected"] == 1
    assert not gate("offline > 0", 0, [{"state": "pending"}])[0]
    # a device's answer: a late apply of a stopped deployment goes straight back, and a
    # late answer to the deploy never undoes its rollback
    assert answered_state("running", "pending", "apply", "applied") == "applied"
    assert answered_state("failed", "pending", "apply", "applied") == "rollback_pending"
    assert answered_state("failed", "rolled_back", "apply", "applied") is None
    assert answered_state("running", "pending", "apply", "rejected") == "rejected"
    assert answered_state("failed", "rollback_pending", "rollback", "unchanged") == "rolled_back"


def test_deploy_reads_only_a_regular_file_of_one_deployment(tmp_path: Any, capsys: Any
                                                            ) -> None:
    """`deploy /dev/zero` read without end (the process was killed for memory) and a FIFO
    would wait for a writer: both are refused as unreadable (66); a fragment over the limit
    and a version label of 1,000 characters are usage errors (64); nothing is recorded."""
    import json
    import os

    from sync.cloud.cli import main as cloud_main
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n[store]\nurl = "{url}"\n')
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    big = tmp_path / "big.toml"
    big.write_text("#" * (deps.MAX_FRAGMENT_BYTES + 1))
    small = tmp_path / "small.toml"
    small.write_text("[tools]\n")
    for path, extra, code, said in [("/dev/zero", [], 66, "not a regular file"),
                                    (str(fifo), [], 66, "not a regular file"),
                                    (str(tmp_path), [], 66, "not a regular file"),
                                    (str(big), [], 64, "over 49152 bytes"),
                                    (str(small), ["--version", "v" * 1000], 64,
                                     "--version: 1 to 128 characters")]:
        got = cloud_main(["deploy", path, "--devices", "a", *extra, "--config", str(cfg),
                          "--json"])
        err = json.loads(capsys.readouterr().err)
        assert got == code and said in err["error"], (path, err)
    store = SqlCloudStore(url)
    try:
        assert deps.deployments(store) == []
    finally:
        store.close()


def test_deployment_abort_says_which_id_is_unknown_and_which_stopped(tmp_path: Any,
                                                                     capsys: Any) -> None:
    """`deployment abort ID` of an id the cloud never held said "is not running"; it now says
    there is no such deployment, and of a stopped one, its state (exit 1 both)."""
    import json

    from sync.cloud.cli import main as cloud_main
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n[store]\n'
                   f'url = "sqlite:///{tmp_path / "cloud.db"}"\n')
    small = tmp_path / "small.toml"
    small.write_text("[tools]\n")

    def cloud(*words: str) -> tuple[int, Any]:
        code = cloud_main([*words, "--config", str(cfg), "--json"])
        out = capsys.readouterr()
        return code, json.loads(out.out if code == 0 else out.err)
    code, dep = cloud("deploy", str(small), "--devices", "a")
    assert code == 0
    assert cloud("deployment", "abort", dep["id"]) == (0, {"id": dep["id"], "state": "aborted"})
    code, err = cloud("deployment", "abort", dep["id"])
    assert code == 1 and err["error"] == f"deployment {dep['id']} is not running (it is aborted)"
    code, err = cloud("deployment", "abort", "nope")
    assert code == 1 and err["error"] == "no deployment nope"


def test_waves_must_grow_as_given(tmp_path: Any, capsys: Any) -> None:
    """`--waves 5,1` became [2] without a word: a wave smaller than the one before (shares
    resolved against the target), or a count repeated, is a usage error (64) naming it;
    `deploy --help` says the rule."""
    import json

    from sync.cloud.cli import main as cloud_main
    for spec, n, named in [("5,1", 2, "'1'"), ("3,3", 5, "'3'"), ("50%,1", 10, "'1'"),
                           ("2,10%", 10, "'10%'"), ("1,0", 5, "'0'")]:
        with pytest.raises(RolloutError, match=f"--waves: .*{named}"):
            plan_waves(spec, n)
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n[store]\n'
                   f'url = "sqlite:///{tmp_path / "cloud.db"}"\n')
    small = tmp_path / "small.toml"
    small.write_text("[tools]\n")
    code = cloud_main(["deploy", str(small), "--devices", "a,b", "--waves", "5,1",
                       "--config", str(cfg), "--json"])
    err = json.loads(capsys.readouterr().err)
    assert code == 64 and "--waves" in err["error"] and "'1'" in err["error"], err
    # the rule is in `deploy --help`, which died of the default's `%` (a traceback)
    with pytest.raises(SystemExit) as done:
        cloud_main(["deploy", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0 and "each larger than the one before" in said
    assert "devices the last leaves out form one more wave) (default 1,10%,50%,100%)" in said


def test_an_empty_fragment_is_refused(tmp_path: Any, capsys: Any) -> None:
    """A fragment with no table and no key deployed "nothing" to every device; it is now
    refused as the other unusable fragments are (64, with --json the error as JSON)."""
    import json

    from sync.cloud.cli import main as cloud_main
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n[store]\nurl = "{url}"\n')
    for text in ("", "# only a comment\n\n"):
        empty = tmp_path / "empty.toml"
        empty.write_text(text)
        code = cloud_main(["deploy", str(empty), "--devices", "a", "--config", str(cfg),
                           "--json"])
        err = json.loads(capsys.readouterr().err)
        assert code == 64 and "nothing to deploy" in err["error"], err
    store = SqlCloudStore(url)
    try:
        assert deps.deployments(store) == []
    finally:
        store.close()


def test_a_device_never_seen_is_shown_so_and_expires(cloud_url: str, tmp_path: Any,
                                                     capsys: Any) -> None:
    """`deploy --devices nosuch` showed "waiting" forever: deploy warns of a device the cloud
    has never heard from (still queued, it may come), `deployment show` says `never seen`,
    and once the deployment expires its unanswered devices show `expired`."""
    import json

    from sync.cloud.cli import main as cloud_main
    store = SqlCloudStore(cloud_url)
    try:
        store.seen("d1", True)
        cfg = tmp_path / "cloud.toml"
        cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n[store]\n'
                       f'url = "{cloud_url}"\n')
        frag = tmp_path / "f.toml"
        frag.write_text(FRAGMENT)
        code = cloud_main(["deploy", str(frag), "--devices", "d1,nosuch-dev", "--waves",
                           "1", "--bake", "10s", "--min-runs", "0", "--config", str(cfg)])
        out = capsys.readouterr()
        assert code == 0 and "warning: the cloud has never seen nosuch-dev" in out.err
        dep_id = out.out.split()[0]
        code = cloud_main(["deploy", str(frag), "--devices", "nosuch-dev", "--config",
                           str(cfg), "--json"])
        assert code == 0 and json.loads(capsys.readouterr().out)["never_seen"] == ["nosuch-dev"]
        d = deps.deployment(store, dep_id)
        assert d is not None
        assert [(x["device"], x["shown"]) for x in d["devices"]] == [
            ("d1", "waiting"), ("nosuch-dev", "never seen")]
        sent = Sent()
        for after in (1, 20, 40):  # wave 1 (d1), wave 2 (nosuch-dev), completed
            deps.tick(store, sent, now=d["created_at"] + after)
        d = deps.deployment(store, dep_id)
        assert d is not None and d["state"] == "completed"
        assert [x["shown"] for x in d["devices"]] == ["pending", "never seen"]
        assert {"d1", "nosuch-dev"} == set(sent.devices())
        n = len(sent.calls)
        later = d["expires_at"] + 1
        deps.tick(store, sent, now=later)
        assert len(sent.calls) == n  # nothing more once it expired
        d = deps.deployment(store, dep_id, now=later)
        assert d is not None and [x["shown"] for x in d["devices"]] == ["expired", "expired"]
        assert cloud_main(["deployment", "show", dep_id, "--config", str(cfg)]) == 0
        shown = capsys.readouterr().out
        assert "nosuch-dev" in shown and "waiting" not in shown
    finally:
        store.close()
