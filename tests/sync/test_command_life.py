"""Issue 26, observation 6: every command the cloud sends has a state kept in its store
(queued, sent, confirmed, failed, expired) and ends; a device never seen gets what was
queued for it when it first connects; an expired command is marked expired at its expiry;
a device refuses a command issued too far ahead of its clock. Real mosquitto, real cloud
processes and daemons, both store backends."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.broker import Broker
from support.daemon import cli_json, until
from support.fleetrig import cloud, cloud_service, device
from support.syncrig import device_db, edge, ingest

from sync.cloud.commands import Commands, NewCommand
from sync.cloud.schema import MIGRATIONS
from sync.cloud.store import SqlCloudStore
from sync.cloud.sweep import Sweeper, read_stats
from sync.cloud.work import Work
from sync.signing import Opener, Sealer, public_key_text

KEY = Ed25519PrivateKey.generate()


def commands(cfg: Path, *args: str) -> list[dict[str, Any]]:
    r = cloud(cfg, "commands", "--json", *args)
    assert r.returncode == 0, r.stderr
    rows: list[dict[str, Any]] = json.loads(r.stdout)["commands"]
    return rows


def state_of(cfg: Path, device: str) -> str:
    return str(commands(cfg, "--device", device)[0]["state"])


def test_a_device_never_seen_gets_what_was_queued_unless_it_expired(tmp_path: Path,
                                                                     broker: Broker) -> None:
    """`start --group` to devices that never connected: the command used to be published to
    nobody (the broker keeps nothing for a client it never met) and lost."""
    ccfg = tmp_path / "cloud.toml"
    ccfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ninsecure = true\n'
                    '[store]\nurl = "sqlite:///cloud.db"\n[groups]\nlate = ["cell-late"]\n')
    (late_cfg, late), (gone_cfg, gone) = device(tmp_path, "cell-late", broker.port), \
        device(tmp_path, "cell-gone", broker.port)
    with cloud_service(ccfg):
        try:
            r = cloud(ccfg, "start", "hello", "--group", "late", "--input", '{"n": 7}')
            assert r.returncode == 0 and r.stdout.split()[:2] == ["cell-late", "queued"], r
            r = cloud(ccfg, "start", "hello", "--device", "cell-gone", "--expires-in", "2s")
            assert r.returncode == 0, r.stderr
            assert state_of(ccfg, "cell-late") == "queued"
            until(lambda: state_of(ccfg, "cell-gone") == "expired", 10)  # the sweep
            assert [c["state"] for c in commands(ccfg, "--state", "queued")] == ["queued"]
            late.start(), gone.start()
            late.wait_for("READY=1"), gone.wait_for("READY=1")
            until(lambda: state_of(ccfg, "cell-late") == "confirmed", 20)
            run_id = commands(ccfg, "--device", "cell-late")[0]["result"]["result"]["run_id"]
            until(lambda: cli_json(late_cfg, "runs", "show", run_id)["status"] == "completed",
                  20)
            time.sleep(1.0)
            assert cli_json(gone_cfg, "runs")["runs"] == []  # expired: never delivered
            assert state_of(ccfg, "cell-gone") == "expired"
        finally:
            late.close(), gone.close()


def test_a_command_to_an_offline_device_is_marked_expired_at_its_expiry(
        tmp_path: Path, broker: Broker) -> None:
    """`approve --expires-in 2s` to a device offline: the broker drops it at expiry
    (MQTT 5), so no answer ever comes; the cloud's command used to stay `sent` forever."""
    ccfg = tmp_path / "cloud.toml"
    ccfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ninsecure = true\n'
                    '[store]\nurl = "sqlite:///cloud.db"\n')
    db = tmp_path / "device.db"
    device_db(db)
    e = edge(db, broker.port, "cell-off", handler=lambda c, cmd: {})
    with cloud_service(ccfg):
        try:
            e.start()
            until(lambda: e.connected, 10)
            until(lambda: bool(json.loads(cloud(ccfg, "status", "--json").stdout)["devices"]),
                  10)
            e.shutdown()  # offline from now on
            r = cloud(ccfg, "approve", "--device", "cell-off", "r1", "--approval", "1",
                      "--expires-in", "2s")  # names the gate: the cloud has not seen it
            assert r.returncode == 0, r.stderr
            assert state_of(ccfg, "cell-off") == "sent"
            began = time.time()
            until(lambda: state_of(ccfg, "cell-off") == "expired", 10)
            assert time.time() - began < 5  # at its expiry (the sweep runs every second)
        finally:
            e.shutdown()


def test_a_command_issued_far_ahead_of_the_device_clock_is_refused(tmp_path: Path,
                                                                    broker: Broker) -> None:
    """A signed command issued 10 years ahead used to be applied: issued-at was never
    compared with the device's clock. Now it is answered (failed, `future`) and applied
    never; one within the skew (60 s ahead of 300 s) is applied."""
    db = tmp_path / "device.db"
    device_db(db)
    applied: list[str] = []
    opener = Opener("dev-a", [public_key_text(KEY)], max_skew_s=300)
    e = edge(db, broker.port, "dev-a", opener=opener,
             handler=lambda c, cmd: applied.append(cmd.id) or {})
    ahead = {"years": 10 * 365 * 86400.0, "minute": 60.0}
    workers = {name: ingest(f"sqlite:///{tmp_path / 'cloud.db'}", broker.port,
                            sealer=Sealer(KEY, clock=lambda s=s: time.time() + s),
                            worker_id=f"w-{name}", listen=name == "years")
               for name, s in ahead.items()}
    for w, _ in workers.values():
        w.start()
    e.start()
    try:
        until(lambda: e.connected and all(w.connected.is_set() for w, _ in workers.values()),
              10)
        store = workers["years"][1]
        until(lambda: bool(store.devices()), 10)
        future = workers["years"][0].send_command("dev-a", "approve", {"run_id": "r1"},
                                                  wait_s=5)
        near = workers["minute"][0].send_command("dev-a", "approve", {"run_id": "r2"},
                                                 wait_s=5)
        until(lambda: (store.command(near) or {}).get("state") == "confirmed", 15)
        until(lambda: (store.command(future) or {}).get("state") == "failed", 15)
        assert "ahead of this device's clock" in store.command(future)["result"]["error"]
        assert applied == [near]
        assert e.stats.rejected["cmd:future"] == 1
    finally:
        e.shutdown()
        for w, s in workers.values():
            w.shutdown()
            s.close()


def test_command_states_on_both_backends(cloud_url: str) -> None:
    store = SqlCloudStore(cloud_url)
    try:
        c = Commands(store)
        store.seen("known", True, {"state": "online"})
        t = 1000.0
        assert c.add([NewCommand("a", "known", "approve", {}, t + 10),
                      NewCommand("b", "new", "start", {"workflow": "w"}, t + 10),
                      NewCommand("x", "new", "start", {"workflow": "w"}, t + 1)], t) == \
            {"a": "sent", "b": "queued", "x": "queued"}
        assert c.expire_due(t + 5) == 1  # x
        taken = c.take_queued("new", t + 6)
        assert [(cid, ctype) for cid, ctype, _, _ in taken] == [("b", "start")]
        assert c.take_queued("new", t + 6) == []  # taken once, by one worker
        assert c.answer("new", [("b", {"ok": True}), ("a", {"ok": True})], t + 7) == \
            [True, False]  # a was sent to another device
        assert c.expire_due(t + 20) == 1  # a: never answered
        assert c.answer("known", [("a", {"ok": False, "error": "expired"})], t + 30) == [True]
        states = {r["id"]: r["state"] for r in c.listing()}
        assert states == {"a": "expired", "b": "confirmed", "x": "expired"}
        assert [r["id"] for r in c.listing(device="new", state="expired")] == ["x"]
    finally:
        store.close()


def test_commands_of_an_older_store_get_an_expiry_in_place(cloud_url: str) -> None:
    """The migration: commands written before states had expiries end 24 h after they were
    made; their states stay."""
    if cloud_url.startswith("sqlite:///"):
        conn: Any = sqlite3.connect(cloud_url[len("sqlite:///"):], isolation_level=None)
        blob, serial = "BLOB", "INTEGER PRIMARY KEY"
    else:
        import psycopg
        conn = psycopg.connect(cloud_url, autocommit=True)
        blob, serial = "BYTEA", "BIGSERIAL PRIMARY KEY"
    dialect = "sqlite" if cloud_url.startswith("sqlite") else "postgresql"
    for version in (1, 2):
        for sql in dict(MIGRATIONS[dialect])[version]:
            conn.execute(sql.format(blob=blob, serial=serial))
    conn.execute("INSERT INTO commands (id, device, type, args, state, created_at) VALUES"
                 " ('old', 'd', 'approve', '{}', 'sent', 1000.0)")
    conn.close()
    store = SqlCloudStore(cloud_url)
    try:
        (row,) = Commands(store).listing()
        assert (row["state"], row["expires_at"], row["sent_at"]) == ("sent", 87400.0, 1000.0)
        assert Commands(store).expire_due() == 1
    finally:
        store.close()


def test_the_sweep_publishes_the_pools_counters_for_status(tmp_path: Path) -> None:
    store = SqlCloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
    work = Work()
    try:
        work.handoffs.busy["d"] += 3  # as three refusals leave it
        Sweeper(store, work, "p1").tick()
        stats = read_stats(store)
        assert stats["processes"] == 1 and stats["handoffs"]["workers"] == 4
        assert stats["handoffs"]["devices"] == {"d": {"in_flight": 0, "busy": 3}}
        assert read_stats(store, now=time.time() + 60)["processes"] == 0  # stopped long ago
    finally:
        work.shutdown()
        store.close()
