"""Issue 17, observations 2-5: epochs, holes, acks by content, results by sender.

Each test runs real parts (mosquitto, SQLite files, PostgreSQL) and failed on protocol 1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgpack
from support.broker import Broker
from support.syncrig import append, device_db, edge, ingest, wait_synced, watermarks

from sync.acks import decode_ack, encode_ack
from sync.cloud.ingest import IngestWorker
from sync.cloud.store import SqlCloudStore
from sync.envelope import WireRecord, decode_batch, encode_batch
from sync.mqtt import Topics, make_client
from sync.outbox import STREAMS

EP = "0123456789abcdef"


def recs(seqs: range | list[int], tag: str = "p") -> list[WireRecord]:
    return [WireRecord(i, "k", f"{tag}{i}".encode(), 1.7e9) for i in seqs]


class Acks:
    """A worker never connected to a broker, whose acks the test reads instead."""

    def __init__(self, url: str) -> None:
        self.store = SqlCloudStore(url)
        self.worker = IngestWorker(self.store, host="127.0.0.1", port=1)
        self.sent: list[tuple[str, bytes]] = []
        self.worker.client.publish = (  # type: ignore[method-assign]
            lambda topic, payload, qos=0, **kw: self.sent.append((topic, payload)))

    def handle(self, device: str, payload: bytes) -> Any:
        self.worker.handle(f"edge/{device}/up", payload)
        acks = [p for topic, p in self.sent if topic == f"edge/{device}/ack"]
        return decode_ack(acks[-1], STREAMS)

    def close(self) -> None:
        self.store.close()


def test_the_cloud_never_acks_over_a_hole(cloud_url: str) -> None:
    """Observation 3: held 1-10, then 21-30 with after/floor 0, then seq 2^63-1: the
    watermark stays at 10 until 11-20 arrive; nothing acked is missing."""
    c = Acks(cloud_url)
    try:
        assert c.handle("d1", encode_batch("d1", "checkpoints", 0, recs(range(1, 11)),
                                           epoch=EP)).watermark == 10
        gap = encode_batch("d1", "checkpoints", 0, recs(range(21, 31)), epoch=EP)
        ack = c.handle("d1", gap)
        assert (ack.watermark, ack.digest) == (10, decode_batch(
            gap, topic_device="d1", streams=STREAMS).digest)
        huge = encode_batch("d1", "checkpoints", 10, recs([2**63 - 1]), epoch=EP)
        assert c.handle("d1", huge).watermark == 10
        # the same holes from a protocol 1 device (its `after` is not trusted)
        assert c.handle("d2", encode_batch("d2", "traces", 0, recs(range(1, 11)))).watermark \
            == 10
        assert c.handle("d2", encode_batch("d2", "traces", 0, recs(range(21, 31)))).watermark \
            == 10
        assert c.handle("d2", encode_batch("d2", "traces", 10, recs([2**63 - 1]))).watermark \
            == 10
        # the gap fills: the watermark moves on over what was stored ahead
        assert c.handle("d1", encode_batch("d1", "checkpoints", 10, recs(range(11, 21)),
                                           epoch=EP)).watermark == 30
        assert [s for s, _, _ in c.store.records("d1", "checkpoints")] == \
            list(range(1, 31)) + [2**63 - 1]
        # a floor declares records the device dropped: the watermark may pass those
        assert c.handle("d1", encode_batch("d1", "checkpoints", 40, recs(range(41, 43)),
                                           epoch=EP)).watermark == 42
    finally:
        c.close()


def test_a_resend_with_other_content_is_quarantined_and_counted(cloud_url: str) -> None:
    c = Acks(cloud_url)
    try:
        c.handle("d1", encode_batch("d1", "control", 0, recs(range(1, 6)), epoch=EP))
        ack = c.handle("d1", encode_batch("d1", "control", 0, recs(range(1, 6), "q"),
                                          epoch=EP))
        assert (ack.watermark, ack.conflicts) == (5, 5)
        assert [p for _, _, p in c.store.records("d1", "control")] == \
            [f"p{i}".encode() for i in range(1, 6)]  # the first content stays
        assert [q["reason"] for q in c.store.quarantined()] == ["seq_conflict"] * 5
        assert c.store.devices()[0]["streams"]["control"]["conflicts"] == 5
    finally:
        c.close()


def test_a_result_confirms_only_a_command_sent_to_its_device(cloud_url: str) -> None:
    """Observation 5."""
    c = Acks(cloud_url)
    try:
        c.store.seen("dev-a", True, {"state": "online"})  # known: its command is sent
        c.store.add_command("cmd-1", "dev-a", "approve", {"run_id": "r"})
        result = msgpack.packb({"id": "cmd-1", "type": "approve", "ok": True})
        forged = [WireRecord(1, "cmd.result", result, 1.7e9)]
        c.handle("dev-b", encode_batch("dev-b", "control", 0, forged, epoch=EP))
        assert c.store.command("cmd-1")["state"] == "sent"
        assert c.worker.rejected["foreign_result"] == 1
        c.handle("dev-a", encode_batch("dev-a", "control", 0, forged, epoch=EP))
        assert c.store.command("cmd-1")["state"] == "confirmed"
    finally:
        c.close()


def test_a_device_whose_database_was_lost_starts_a_new_epoch(tmp_path: Path, broker: Broker,
                                                             cloud_url: str,
                                                             capsys: Any) -> None:
    """Observation 2: a reflashed device starts its seqs at 1 again; the cloud keeps both
    sequence spaces and tells the operator, on both fleet stores (a PostgreSQL migration
    that keyed records without their epoch lost the new epoch's records: issue 33)."""
    from sync.cloud.cli import main as cloud_main
    from sync.outbox import epoch
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ninsecure = true\n'
                   f'[store]\nurl = "{cloud_url}"\n')
    worker, store = ingest(cloud_url, broker.port)
    worker.start()
    db = tmp_path / "device.db"
    epochs = []
    try:
        for n in (30, 10):
            if db.exists():
                for p in tmp_path.glob("device.db*"):
                    p.unlink()  # the SD card is swapped
            device_db(db)
            append(db, "checkpoints", n)
            e = edge(db, broker.port)
            e.start()
            try:
                wait_synced(db, 30)
            finally:
                e.shutdown()
            import sqlite3
            conn = sqlite3.connect(db, isolation_level=None)
            epochs.append(epoch(conn))
            conn.close()
        old, new = epochs
        assert old != new
        assert len(store.records("dev-a", "checkpoints", old)) == 30
        assert [s for s, _, _ in store.records("dev-a", "checkpoints", new)] == \
            list(range(1, 11))
        dev = store.devices()[0]
        assert dev["epoch"] == new and dev["streams"]["checkpoints"]["received_seq"] == 10
        assert [(r["from"], r["to"]) for r in dev["resets"]] == [(old, new)]
        assert cloud_main(["status", "--config", str(cfg), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)["devices"][0]
        assert shown["resets"][0]["from"] == old and shown["resets"][0]["at"].endswith("Z")
        assert cloud_main(["status", "--config", str(cfg)]) == 0
        text = capsys.readouterr().out
        assert f"database reset at {shown['resets'][0]['at']}, epoch {old} to {new}" in text
    finally:
        worker.shutdown()
        store.close()


def test_acks_move_nothing_unless_they_name_a_batch_in_flight(tmp_path: Path,
                                                             broker: Broker) -> None:
    """Observation 4: an ack with an empty digest, a digest of no batch in flight, or a
    protocol 1 ack moves nothing; a true ack clears no further than what was sent."""
    db = tmp_path / "dev.db"
    device_db(db)
    append(db, "checkpoints", 22)
    batches: list[Any] = []
    liar = make_client("liar")
    liar.on_message = lambda c, u, m: batches.append(
        decode_batch(bytes(m.payload), topic_device="dev-a", streams=STREAMS))
    liar.on_connect = lambda c, *a: c.subscribe("edge/dev-a/up", 1)
    liar.connect("127.0.0.1", broker.port)
    liar.loop_start()
    e = edge(db, broker.port, batch_max_records=10, window=1, ack_timeout_s=60)
    ack_topic = Topics("edge", "dev-a").ack

    def lie(payload: bytes, counter: str, n: int) -> None:
        liar.publish(ack_topic, payload, qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while e.stats.rejected[counter] < n:
            assert time.monotonic() < deadline, dict(e.stats.rejected)
            time.sleep(0.02)
        assert watermarks(db)["checkpoints"][0] == 0

    try:
        time.sleep(0.3)
        e.start()
        deadline = time.monotonic() + 10
        while not batches:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        b = batches[0]
        assert (b.first, b.last) == (1, 10)
        lie(msgpack.packb({"v": 2, "s": "checkpoints", "ep": b.epoch, "d": "", "wm": 22,
                           "c": 0}), "ack:bad_digest", 1)
        lie(encode_ack("checkpoints", 22, ""), "ack:wrong_epoch", 1)  # protocol 1, empty
        lie(encode_ack("checkpoints", 22, "ab" * 32, epoch=b.epoch), "ack:unknown_digest", 1)
        lie(encode_ack("checkpoints", 22, b.digest, epoch="f" * 16), "ack:wrong_epoch", 2)
        # the true ack, with a watermark past what was sent: cleared up to 10, not 22
        liar.publish(ack_topic, encode_ack("checkpoints", 22, b.digest, epoch=b.epoch),
                     qos=1).wait_for_publish(5)
        while watermarks(db)["checkpoints"][0] != 10:
            assert time.monotonic() < deadline + 10
            time.sleep(0.02)
        time.sleep(0.2)
        assert watermarks(db)["checkpoints"] == (10, 22)  # 12 records still pending
    finally:
        e.shutdown()
        liar.loop_stop()
        liar.disconnect()


def test_the_device_counts_what_the_cloud_held_otherwise(tmp_path: Path,
                                                        broker: Broker) -> None:
    """A resend under a seq the cloud holds with other content: quarantined and counted by
    the cloud, counted by the device from the ack; the stream goes on."""
    import sqlite3

    from sync.envelope import Batch
    from sync.outbox import epoch
    db = tmp_path / "device.db"
    device_db(db)
    append(db, "control", 20)
    conn = sqlite3.connect(db, isolation_level=None)
    ep = epoch(conn)
    conn.close()
    worker, store = ingest(f"sqlite:///{tmp_path / 'cloud.db'}", broker.port)
    other = tuple(recs(range(1, 4), "someone-else"))
    store.store_batch(Batch("dev-a", "control", 0, 1, 3, other, ep, 2))
    e = edge(db, broker.port)
    worker.start()
    e.start()
    try:
        wait_synced(db, 30)
        deadline = time.monotonic() + 10
        while e.stats.conflicts < 3:
            assert time.monotonic() < deadline, e.stats
            time.sleep(0.02)
        assert e.stats.conflicts == 3 and worker.conflicts == 3
        assert [q["reason"] for q in store.quarantined()] == ["seq_conflict"] * 3
        assert len(store.records("dev-a", "control")) == 20
    finally:
        e.shutdown()
        worker.shutdown()
        store.close()


def test_effects_ride_only_on_the_control_stream(cloud_url: str) -> None:
    """PROTOCOL.md section 2: a command result, a tool request and a handoff request on the
    traces stream are stored and acked but act on nothing; each is counted and quarantined.
    The same records on the control stream act."""
    from sync.replica import MemoryDocStore, Replica
    c = Acks(cloud_url)
    ran: list[str] = []
    c.worker.tools["echo"] = lambda **kw: ran.append("tool") or kw
    c.worker.handoffs.handoffs["reviewer"] = lambda **kw: ran.append("handoff") or {}
    def settle() -> None:  # the pools' tasks (a tool, a hand-off) have run
        deadline = time.time() + 10
        while not (c.worker.work.tools.idle() and c.worker.work.handoffs.idle()):
            assert time.time() < deadline, "the pools did not finish their tasks"
            time.sleep(0.02)
    try:
        c.store.seen("d1", True, {"state": "online"})  # known: its command is sent
        c.store.add_command("cmd-1", "d1", "approve", {"run_id": "r"})
        lease = Replica("d1", MemoryDocStore()).write("runs.lease", "r", {"owner": "cloud"})
        effects = [
            ("cmd.result", {"id": "cmd-1", "type": "approve", "ok": True}),
            ("tool.request", {"tool": "echo", "key": "t/1", "args": {"x": 1}}),
            ("handoff.request", {"run_id": "r", "key": "handoff/1", "target": "reviewer",
                                 "input": {}, "context": {}, "lease": lease.encode()})]
        records = [WireRecord(i, kind, msgpack.packb(p), time.time())
                   for i, (kind, p) in enumerate(effects, 1)]
        ack = c.handle("d1", encode_batch("d1", "traces", 0, records, epoch=EP))
        assert ack.watermark == 3  # stored: the stream goes on
        assert [k for _, k, _ in c.store.records("d1", "traces")] == [k for k, _ in effects]
        assert c.store.command("cmd-1")["state"] == "sent"
        assert ran == [] and c.worker.work.tools.done == c.worker.work.handoffs.done == 0
        assert c.worker.rejected["wrong_stream"] == 3
        assert [q["reason"] for q in c.store.quarantined()] == ["wrong_stream"] * 3
        c.handle("d1", encode_batch("d1", "traces", 0, records, epoch=EP))  # a resend
        assert c.worker.rejected["wrong_stream"] == 3  # counted once per record
        c.handle("d1", encode_batch("d1", "control", 0, records, epoch=EP))
        settle()
        assert c.store.command("cmd-1")["state"] == "confirmed"
        assert sorted(ran) == ["handoff", "tool"]
    finally:
        c.close()
