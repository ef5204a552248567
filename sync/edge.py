"""The device side of sync: ships the outbox, moves watermarks on the cloud's acks, applies
downlink commands exactly once.

Threads: paho's network thread only queues what arrives and sets an event; one publisher
thread owns the sync's SQLite connection and does all the work, waking on `notify()`, on
arrivals, or on a timer (never a busy loop). Only the cloud's ack after its commit moves a
watermark; a batch not acked within `ack_timeout_s`, or any reconnect, makes the stream
resend from its first unacked sequence.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import paho.mqtt.client as mqtt

from sync.envelope import (
    COMMAND_TYPES, Command, EnvelopeError, WireRecord, batch_digest, decode_ack, decode_command,
    encode_batch,
)
from sync.mqtt import Topics, connect_properties, make_client, user_properties
from sync.outbox import STREAMS, Outbox
from sync.signing import Opener, Sealer, SealError, check_bound

log = logging.getLogger(__name__)
Handler = Callable[[sqlite3.Connection, Command], dict[str, Any]]


@dataclass
class _Inflight:
    last: int
    digest: str
    sent_at: float


@dataclass
class EdgeSyncStats:
    published_batches: int = 0
    published_records: int = 0
    acked_records: int = 0
    resends: int = 0
    digest_mismatches: int = 0
    commands_applied: int = 0
    commands_duplicate: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


class EdgeSync:
    def __init__(self, *, device_id: str, host: str, port: int,
                 open_conn: Callable[[], sqlite3.Connection], handler: Handler | None = None,
                 after_command: Callable[[Command, dict[str, Any]], None] | None = None,
                 prefix: str = "edge", protocol: str = "5", tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 username: str | None = None, password: str | None = None,
                 batch_max_records: int = 500, batch_max_bytes: int = 256 * 1024,
                 linger_s: float = 0.02, window: int = 8, compression: bool = True,
                 keepalive_s: int = 30, ack_timeout_s: float = 10.0,
                 outbox_limits: dict[str, int] | None = None,
                 durable: Callable[[], None] | None = None,
                 opener: Opener | None = None, uplink_sealer: Sealer | None = None) -> None:
        self.device_id = device_id
        self.opener = opener  # None: downlink taken unsigned (insecure = true)
        self.uplink_sealer = uplink_sealer  # None: batches unsealed (no device key)
        self.broker = f"{host}:{port}"
        self.topics = Topics(prefix, device_id)
        self.host, self.port = host, port
        self.protocol = protocol
        self.open_conn = open_conn
        self.handler = handler
        self.after_command = after_command
        self.batch_max_records = batch_max_records
        self.batch_max_bytes = batch_max_bytes
        self.linger_s = linger_s
        self.window = window
        self.compression = compression
        self.keepalive_s = keepalive_s
        self.ack_timeout_s = ack_timeout_s
        self.outbox_limits = outbox_limits
        # called between reading records and publishing them: returns once every commit the
        # read may have seen is on disk (the device's writer syncs after it commits), so the
        # cloud never holds a record a power cut could take back from the device
        self.durable = durable
        self.stats = EdgeSyncStats()
        self.connected = False
        self.last_sync: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._arrivals: queue.SimpleQueue[tuple[str, bytes, dict[str, str]]] = \
            queue.SimpleQueue()
        self._reset = threading.Event()
        self._inflight: dict[str, list[_Inflight]] = {s: [] for s in STREAMS}
        self._next: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="sync-publisher", daemon=True)
        self.client = make_client(f"edge-{device_id}", protocol=protocol, tls_ca=tls_ca,
                                  tls_cert=tls_cert, tls_key=tls_key, username=username,
                                  password=password)
        self.client.max_inflight_messages_set(max(20, window))
        self.client.max_queued_messages_set(0)
        self.client.will_set(self.topics.status, json.dumps({"state": "offline"}), qos=1,
                             retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        kwargs: dict[str, Any] = {"keepalive": self.keepalive_s}
        if self.protocol == "5":
            kwargs.update(clean_start=False, properties=connect_properties(self.protocol))
        self.client.connect_async(self.host, self.port, **kwargs)
        self.client.loop_start()
        self._thread.start()

    def shutdown(self, flush_s: float = 3.0) -> None:
        """Try to flush what is pending for a moment, then disconnect cleanly."""
        end = time.monotonic() + flush_s
        while self.connected and time.monotonic() < end and any(self._inflight.values()):
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self.connected:
            info = self.client.publish(self.topics.status, json.dumps({"state": "offline"}),
                                       qos=1, retain=True)
            info.wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()

    def notify(self) -> None:
        """New outbox data (thread-safe; cheap)."""
        self._wake.set()

    # paho callbacks (network thread): queue and wake, nothing else ------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("broker %s refused the connection: %s", self.broker, reason)
            return
        self.connected = True
        client.subscribe([(self.topics.ack, 1), (self.topics.cmd, 1)])
        client.publish(self.topics.status, json.dumps({"state": "online", "ts": time.time()}),
                       qos=1, retain=True)
        self._reset.set()
        self._wake.set()
        log.info("connected to %s", self.broker)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any = None) -> None:
        if self.connected:
            log.warning("disconnected from %s: %s", self.broker, reason)
        self.connected = False

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._arrivals.put((msg.topic, bytes(msg.payload), user_properties(msg)))
        self._wake.set()

    # publisher thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        conn = self.open_conn()
        outbox = Outbox(conn, limits=self.outbox_limits)
        try:
            while not self._stop.is_set():
                self._wake.wait(timeout=min(1.0, self.ack_timeout_s / 2))
                self._wake.clear()
                try:
                    self._arrived(conn, outbox)
                    if self.connected:
                        self._publish(outbox)
                except sqlite3.Error as exc:
                    log.error("sync: database error, retrying: %s", exc)
                    time.sleep(0.5)
        finally:
            conn.close()

    def _arrived(self, conn: sqlite3.Connection, outbox: Outbox) -> None:
        while True:
            try:
                topic, payload, props = self._arrivals.get_nowait()
            except queue.Empty:
                return
            # Mosquitto 2.0.11 leaves a listener's mount point on delivered topics
            if topic == self.topics.ack or topic.endswith("/" + self.topics.ack):
                self._ack(outbox, payload)
            elif topic == self.topics.cmd or topic.endswith("/" + self.topics.cmd):
                self._command(conn, outbox, payload, props)

    def _ack(self, outbox: Outbox, payload: bytes) -> None:
        try:
            if self.opener is not None:
                payload = self.opener.open(payload, types=("ack",)).body
            stream, seq, digest = decode_ack(payload, STREAMS)
        except EnvelopeError as exc:
            self.stats.rejected[f"ack:{exc.reason}"] += 1
            log.warning("rejected an ack: %s", exc)
            return
        flights = self._inflight[stream]
        sent = next((f for f in flights if f.last == seq), None)
        if sent is not None and digest and digest != sent.digest:
            self.stats.digest_mismatches += 1
            log.error("ack digest mismatch on %s up to %d: resending from the watermark",
                      stream, seq)
            self._reset.set()
            return
        before = outbox.watermark(stream)
        new = outbox.ack(stream, seq)
        self.stats.acked_records += max(0, new - before)
        self._inflight[stream] = [f for f in flights if f.last > seq]
        self.last_sync = time.time()

    def _command(self, conn: sqlite3.Connection, outbox: Outbox, payload: bytes,
                 props: dict[str, str]) -> None:
        sealed = None
        try:
            if self.opener is not None:
                sealed = self.opener.open(payload, types=COMMAND_TYPES, allow_expired=True)
                payload = sealed.body
            cmd = decode_command(payload)
            if sealed is not None:
                check_bound(sealed, cmd.id, cmd.type)
        except EnvelopeError as exc:
            self.stats.rejected[f"cmd:{exc.reason}"] += 1
            log.warning("rejected a command: %s", exc)
            return
        if props.get("traceparent"):
            cmd = Command(cmd.id, cmd.type, {**cmd.args, "traceparent": props["traceparent"]},
                          cmd.ts)
        expired = sealed is not None and self.opener is not None and \
            sealed.expired(self.opener.clock())
        if expired:  # answered "expired", applied never
            self.stats.rejected["cmd:expired"] += 1
            log.warning("rejected a command: %s (%s) expired before it arrived", cmd.id,
                        cmd.type)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM inbox WHERE id = ?", (cmd.id,)).fetchone():
                conn.execute("ROLLBACK")
                self.stats.commands_duplicate += 1
                return
            try:
                conn.execute("SAVEPOINT handler")
                if expired:
                    raise SealError("expired")
                result = {"ok": True, "result": self.handler(conn, cmd) if self.handler
                          else None}
                conn.execute("RELEASE handler")
            except Exception as exc:  # noqa: BLE001 - reported to the cloud, applied once
                conn.execute("ROLLBACK TO handler")
                conn.execute("RELEASE handler")
                result = {"ok": False, "error": str(exc)[:500]}
            packed = msgpack.packb({"id": cmd.id, "type": cmd.type, **result}, default=str)
            conn.execute("INSERT INTO inbox (id, kind, received_at, result) VALUES (?,?,?,?)",
                         (cmd.id, cmd.type, time.time(), packed))
            outbox.append("control", "cmd.result", packed)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.stats.commands_applied += 1
        log.info("applied command %s (%s): %s", cmd.id, cmd.type,
                 "ok" if result["ok"] else result.get("error"))
        if self.after_command is not None:
            self.after_command(cmd, result)

    def _publish(self, outbox: Outbox) -> None:
        now = time.monotonic()
        if self._reset.is_set():
            self._reset.clear()
            self._inflight = {s: [] for s in STREAMS}
            self._next = {}
        for stream in STREAMS:
            flights = self._inflight[stream]
            if flights and now - flights[0].sent_at > self.ack_timeout_s:
                self.stats.resends += 1
                log.info("no ack on %s for %.0fs: resending from the watermark", stream,
                         self.ack_timeout_s)
                self._inflight[stream] = []
                self._next.pop(stream, None)
        if self.linger_s and not self._full_batch_waiting(outbox):
            time.sleep(self.linger_s)  # let a partial batch fill; a full one goes at once
        for stream in STREAMS:  # priority order: control first, metrics last
            while len(self._inflight[stream]) < self.window and self.connected:
                after = self._next.get(stream, outbox.watermark(stream) + 1) - 1
                records = outbox.pending(stream, after=after, limit=self.batch_max_records,
                                         max_bytes=self.batch_max_bytes)
                if not records:
                    break
                if self.durable is not None:
                    try:
                        self.durable()
                    except Exception as exc:  # noqa: BLE001 - held back, tried again later
                        log.error("sync: records held back: the device cannot make its "
                                  "commits durable: %s", exc)
                        return
                wire = [WireRecord(r.seq, r.kind, r.payload, r.created_at) for r in records]
                payload = encode_batch(self.device_id, stream, after, wire,
                                       compress=self.compression,
                                       max_bytes=max(self.batch_max_bytes * 2, 1 << 20))
                if self.uplink_sealer is not None:
                    payload = self.uplink_sealer.seal(self.device_id, "batch", payload)
                info = self.client.publish(self.topics.up, payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    self._reset.set()
                    return
                self._inflight[stream].append(_Inflight(wire[-1].seq, batch_digest(wire),
                                                        time.monotonic()))
                self._next[stream] = wire[-1].seq + 1
                self.stats.published_batches += 1
                self.stats.published_records += len(wire)

    def _full_batch_waiting(self, outbox: Outbox) -> bool:
        """Whether some stream with room in its window has a full batch pending (a backlog
        drains without lingering between batches)."""
        for stream, last in outbox.last_seqs().items():
            if len(self._inflight.get(stream, ())) >= self.window:
                continue
            after = self._next.get(stream, outbox.watermark(stream) + 1) - 1
            if last - after >= self.batch_max_records:
                return True
        return False

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "broker": self.broker,
                "last_sync": self.last_sync, "resends": self.stats.resends,
                "rejected": dict(self.stats.rejected)}
