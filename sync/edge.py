"""The device side of sync: ships the outbox, moves watermarks on the cloud's acks, applies
downlink commands exactly once. Protocol 2 (sync/PROTOCOL.md).

Threads: paho's network thread only queues what arrives and sets an event; one publisher
thread owns the sync's SQLite connection and does all the work, waking on `notify()`, on
arrivals, or on a timer (never a busy loop). Only the cloud's ack after its commit moves a
watermark, and only an ack naming a batch in flight counts (sync.flights). A batch not
answered within `ack_timeout_s`, or in flight at a reconnect, is sent again; nothing else is.
A record larger than a batch goes in chunks; one above `max_record_bytes` as a stub. The
publisher never dies: an unexpected error is logged, counted, shown in `status()` and
retried with backoff.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import paho.mqtt.client as mqtt

from sync.acks import decode_ack
from sync.chunks import DEFAULT_MAX_RECORD_BYTES, piece, stub_of
from sync.envelope import (
    COMMAND_TYPES,
    MAX_BATCH_BYTES,
    Chunk,
    Command,
    EnvelopeError,
    WireRecord,
    batch_digest,
    decode_command,
    encode_batch,
)
from sync.flights import Flight, Window
from sync.mqtt import Topics, connect_properties, make_client, user_properties
from sync.outbox import STREAMS, Outbox, Record, epoch
from sync.signing import Opener, Sealer, SealError, check_bound

log = logging.getLogger(__name__)
Handler = Callable[[sqlite3.Connection, Command], dict[str, Any]]
MAX_PIECE_BYTES = 1 << 20  # a chunk's piece (and a batch's payloads) stay well under the
# cloud's 4 MiB message limit whatever batch_max_bytes says
MAX_BACKOFF_S = 30.0


@dataclass
class EdgeSyncStats:
    published_batches: int = 0
    published_records: int = 0
    acked_records: int = 0
    resends: int = 0
    digest_mismatches: int = 0  # acks naming no batch in flight (ignored)
    acks_duplicate: int = 0
    conflicts: int = 0  # records the cloud held under their seq with other content
    chunks: int = 0
    stubbed: int = 0
    errors: int = 0
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
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
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
        self.max_record_bytes = max_record_bytes
        self.piece_bytes = max(1, min(batch_max_bytes, MAX_PIECE_BYTES))
        self.stats = EdgeSyncStats()
        self.epoch = ""  # read by the publisher thread when it starts
        self.healthy = True
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.connected = False
        self.last_sync: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._arrivals: queue.SimpleQueue[tuple[str, bytes, dict[str, str]]] = \
            queue.SimpleQueue()
        self._reset = threading.Event()
        self._windows: dict[str, Window] = {s: Window() for s in STREAMS}
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
        while self.connected and time.monotonic() < end and any(
                w.flights for w in self._windows.values()):
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
        conn: sqlite3.Connection | None = None
        failures = 0
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self.open_conn()
                    self.epoch = epoch(conn)
                    outbox = Outbox(conn, limits=self.outbox_limits)
                self._wake.wait(timeout=min(1.0, self.ack_timeout_s / 2))
                self._wake.clear()
                self._arrived(conn, outbox)
                if self.connected:
                    self._publish(outbox)
                failures = 0
                self.healthy = True
            except _NotSent:
                self._reset.set()  # the connection went: sent again once it is back
            except Exception as exc:  # noqa: BLE001 - the publisher must never die
                failures += 1
                self.stats.errors += 1
                self.healthy = False
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                self.last_error_at = time.time()
                log.error("sync: publisher error (%d in a row), retrying: %s\n%s", failures,
                          self.last_error, traceback.format_exc(limit=8))
                for w in self._windows.values():
                    w.reset()  # what was in flight is sent again
                if conn is not None and conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        conn.close()
                        conn = None
                self._stop.wait(min(MAX_BACKOFF_S, 0.5 * 2 ** min(failures - 1, 8)))
        if conn is not None:
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
            ack = decode_ack(payload, STREAMS)
        except EnvelopeError as exc:
            self.stats.rejected[f"ack:{exc.reason}"] += 1
            log.warning("rejected an ack: %s", exc)
            return
        if ack.version != 2 or ack.epoch != self.epoch:
            self.stats.rejected["ack:wrong_epoch"] += 1
            log.warning("ignored an ack for epoch %r (this database is epoch %s)", ack.epoch,
                        self.epoch)
            return
        window = self._windows[ack.stream]
        verdict, upto = window.answer(ack.digest, ack.watermark)
        if verdict == "duplicate":
            self.stats.acks_duplicate += 1
            return
        if verdict == "unknown":
            self.stats.digest_mismatches += 1
            self.stats.rejected["ack:unknown_digest"] += 1
            log.warning("ignored an ack on %s naming no batch in flight (digest %r)",
                        ack.stream, ack.digest[:16])
            return
        if ack.conflicts:
            self.stats.conflicts += ack.conflicts
            log.error("the cloud holds %d record(s) of a batch on %s under their seq with other"
                      " content (quarantined there)", ack.conflicts, ack.stream)
        before = outbox.watermark(ack.stream)
        new = outbox.ack(ack.stream, upto)
        self.stats.acked_records += max(0, new - before)
        window.cleared(new, time.monotonic())
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
        refusal = None  # answered with it, applied never (and never later: the inbox)
        if sealed is not None and self.opener is not None:
            now = self.opener.clock()
            if sealed.expired(now):
                refusal = SealError("expired")
            elif self.opener.too_early(sealed, now):
                refusal = SealError("future", f"issued {sealed.ahead_s(now):.0f}s ahead of"
                                    f" this device's clock (limit {self.opener.max_skew_s:g}s)")
        if refusal is not None:
            self.stats.rejected[f"cmd:{refusal.reason}"] += 1
            log.warning("rejected a command: %s (%s): %s", cmd.id, cmd.type, refusal)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM inbox WHERE id = ?", (cmd.id,)).fetchone():
                conn.execute("ROLLBACK")
                self.stats.commands_duplicate += 1
                return
            try:
                conn.execute("SAVEPOINT handler")
                if refusal is not None:
                    raise refusal
                result: dict[str, Any] = {"ok": True, "result": self.handler(conn, cmd)
                                          if self.handler else None}
                conn.execute("RELEASE handler")
            except Exception as exc:  # noqa: BLE001 - reported to the cloud, applied once
                conn.execute("ROLLBACK TO handler")
                conn.execute("RELEASE handler")
                result = {"ok": False, "error": str(exc)[:500]}
                answer = getattr(exc, "answer", None)  # a refusal that says why (`stale`)
                if isinstance(answer, dict):
                    result.update(answer)
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
        if self._reset.is_set():  # reconnected: what no ack answered may be lost
            self._reset.clear()
            for w in self._windows.values():
                for f in w.flights:
                    if not f.answered:
                        f.sent_at = float("-inf")
        for stream, w in self._windows.items():
            for f in w.overdue(now, self.ack_timeout_s):
                if not self.connected:
                    return
                self.stats.resends += 1
                self._resend(outbox, stream, w, f)
            if w.stalled(now, self.ack_timeout_s):
                self.stats.resends += 1
                log.info("%s: every batch answered but the watermark stays at %d: sending"
                         " again from it", stream, outbox.watermark(stream))
                w.reset()
        if self.linger_s and not self._full_batch_waiting(outbox):
            time.sleep(self.linger_s)  # let a partial batch fill; a full one goes at once
        for stream in STREAMS:  # priority order: control first, metrics last
            w = self._windows[stream]
            while w.busy() < self.window and self.connected:
                if not self._send_next(outbox, stream, w):
                    break

    def _send_next(self, outbox: Outbox, stream: str, w: Window) -> bool:
        start = w.next_seq if w.next_seq is not None else outbox.watermark(stream) + 1
        records = outbox.pending(stream, after=start - 1, limit=self.batch_max_records,
                                 max_bytes=self.piece_bytes)
        if not records:
            return False
        if not self._durable_ok():
            return False
        head = records[0]
        if len(head.payload) > self.max_record_bytes:
            self.stats.stubbed += 1
            log.warning("%s: record %d of %d bytes is larger than %d: sent as a stub (the"
                        " data stays on the device)", stream, head.seq, len(head.payload),
                        self.max_record_bytes)
            wire = [stub_of(_wire(head))]
        elif len(head.payload) > self.piece_bytes:
            # go on with the record in pieces, unless it was dropped meanwhile
            index = w.partial if w.partial is not None and head.seq == w.next_seq else 0
            chunk, data = piece(head.payload, self.piece_bytes, index)
            self._send(outbox, stream, w, [WireRecord(head.seq, head.kind, data,
                                                      head.created_at)], chunk)
            self.stats.chunks += 1
            if index + 1 < chunk.count:
                w.partial, w.next_seq = index + 1, head.seq
            else:
                w.partial, w.next_seq = None, head.seq + 1
            return True
        else:
            wire = [_wire(r) for r in records]
        self._send(outbox, stream, w, wire, None)
        w.next_seq = wire[-1].seq + 1
        return True

    def _send(self, outbox: Outbox, stream: str, w: Window, wire: list[WireRecord],
              chunk: Chunk | None, flight: Flight | None = None) -> None:
        payload = encode_batch(self.device_id, stream, outbox.floor(stream), wire,
                               epoch=self.epoch, chunk=chunk, compress=self.compression,
                               max_bytes=MAX_BATCH_BYTES)
        if self.uplink_sealer is not None:
            payload = self.uplink_sealer.seal(self.device_id, "batch", payload)
        info = self.client.publish(self.topics.up, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise _NotSent(mqtt.error_string(info.rc))
        digest, now = batch_digest(wire, chunk), time.monotonic()
        if flight is None:
            complete = None if chunk is not None and chunk.index + 1 < chunk.count \
                else wire[-1].seq
            w.sent(Flight(wire[0].seq, wire[-1].seq, digest, now,
                          chunk=None if chunk is None else chunk.index),
                   complete_through=complete)
        else:
            flight.digest, flight.sent_at = digest, now
        self.stats.published_batches += 1
        self.stats.published_records += len(wire)

    def _resend(self, outbox: Outbox, stream: str, w: Window, f: Flight) -> None:
        """The same batch again (same records, so the same digest), unless its records
        were dropped meanwhile under the stream's bound (then the flight goes)."""
        if f.chunk is not None:
            rec = outbox.record(stream, f.first)
            if rec is None:
                w.flights.remove(f)
                return
            chunk, data = piece(rec.payload, self.piece_bytes, f.chunk)
            self._send(outbox, stream, w, [WireRecord(rec.seq, rec.kind, data,
                                                      rec.created_at)], chunk, f)
            return
        records = [r for r in outbox.pending(stream, after=f.first - 1,
                                             limit=f.last - f.first + 1) if r.seq <= f.last]
        if not records:
            w.flights.remove(f)
            return
        wire = [stub_of(_wire(r)) if len(r.payload) > self.max_record_bytes else _wire(r)
                for r in records]
        self._send(outbox, stream, w, wire, None, f)

    def _durable_ok(self) -> bool:
        if self.durable is None:
            return True
        try:
            self.durable()
        except Exception as exc:  # noqa: BLE001 - held back, tried again later
            log.error("sync: records held back: the device cannot make its commits"
                      " durable: %s", exc)
            return False
        return True

    def _full_batch_waiting(self, outbox: Outbox) -> bool:
        """Whether some stream with room in its window has a full batch pending (a backlog
        drains without lingering between batches)."""
        for stream, last in outbox.last_seqs().items():
            w = self._windows.get(stream)
            if w is None or w.busy() >= self.window:
                continue
            after = (w.next_seq if w.next_seq is not None
                     else outbox.watermark(stream) + 1) - 1
            if last - after >= self.batch_max_records:
                return True
        return False

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "broker": self.broker,
                "last_sync": self.last_sync, "resends": self.stats.resends,
                "healthy": self.healthy, "last_error": self.last_error,
                "errors": self.stats.errors, "epoch": self.epoch,
                "conflicts": self.stats.conflicts, "stubbed": self.stats.stubbed,
                "rejected": dict(self.stats.rejected)}


class _NotSent(Exception):
    """paho refused a publish (the connection just went): not an error of the publisher."""


def _wire(r: Record) -> WireRecord:
    return WireRecord(r.seq, r.kind, r.payload, r.created_at)
