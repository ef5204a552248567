"""An ingest worker: shared subscription, store, then ack; quarantine what is malformed.

Several workers share the fleet's traffic through MQTT 5 shared subscriptions
(`$share/<group>/<prefix>/+/up`). Each batch is committed before its ack is published, so
an ack always means "stored"; it names the batch by digest and carries the watermark the
store computed (sync/PROTOCOL.md, section 5). A worker killed mid-batch acks nothing for
it; the device resends and the store keeps each (device, epoch, stream, seq) once.
Protocol 1 batches are answered with protocol 1 acks.

The effects of a batch (remote tools, handed-off steps) run on the process's bounded pools
(sync/cloud/work.py), never in this thread: an ack never waits on them, and a device over
its share is answered `busy`. Every command sent has a state in the store
(sync/cloud/commands.py); commands queued for a device never seen go out when it first
comes online.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any

import msgpack
import paho.mqtt.client as mqtt

from sync.acks import encode_ack
from sync.cloud.batches import Stored
from sync.cloud.commands import Commands, NewCommand
from sync.cloud.device_keys import DeviceKeys
from sync.cloud.docs import CloudDocs, decode_summaries
from sync.cloud.handoffs import HandoffServer, busy_answer
from sync.cloud.store import CloudStore
from sync.cloud.work import FairQueue, Limits, Work
from sync.documents import CollectionRules, DocumentError, Version
from sync.envelope import (
    Batch,
    Command,
    EnvelopeError,
    decode_batch,
    encode_command,
)
from sync.mqtt import Topics, device_of, make_client, publish_properties
from sync.outbox import STREAMS
from sync.signing import DEFAULT_TTL_S, Sealer

log = logging.getLogger(__name__)

# Kinds that act only when the control stream carries them (sync/PROTOCOL.md, section 2)
CONTROL_KINDS = frozenset({"cmd.result", "tool.request", "handoff.request", "doc.version",
                           "doc.summary", "deploy.result", "deploy.health"})

MAX_STATUS_BYTES = 4096
MAX_QUEUED = 1000  # messages received and not yet handled, per worker
BUSY_TTL_S = 600.0  # a `busy` answer is of use only while the request is open


class IngestWorker:
    def __init__(self, store: CloudStore, *, host: str, port: int, prefix: str = "edge",
                 group: str = "ingest", worker_id: str | None = None, protocol: str = "5",
                 tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, username: str | None = None,
                 password: str | None = None, otlp_endpoint: str | None = None,
                 tools: dict[str, Any] | None = None,
                 collections: Mapping[str, CollectionRules] | None = None,
                 sealer: Sealer | None = None, uplink: DeviceKeys | None = None,
                 listen: bool = True, handoffs: Mapping[str, Any] | None = None,
                 work: Work | None = None, limits: Limits | None = None) -> None:
        self.store = store
        # False: a sender only (the CLI): it must never join the shared subscription, where
        # the broker would hand it batches that nobody processes
        self.listen = listen
        self.uplink = uplink  # None: batches taken as the broker delivers them
        self.sealer = sealer  # None: downlink sent unsigned (insecure = true)
        self.docs = CloudDocs(store, collections)
        self.prefix = prefix
        self.group = group
        self.protocol = protocol
        self.otlp_endpoint = otlp_endpoint
        self.tools = dict(tools or {})  # remote tools the cloud executes: name -> callable
        self._own_work = work is None
        # the process's bounded pools, shared by its workers (its own, of `limits`, if none)
        self.work = work or Work(limits)
        self.handoffs = HandoffServer(self, handoffs or {}, worker_id or "cloud",
                                      pool=self.work.handoffs)
        self.host, self.port = host, port
        self.rejected: Counter[str] = Counter()
        self.batches = 0
        self.conflicts = 0  # records resent under a seq the store holds with other content
        self.stubs = 0
        self.connected = threading.Event()
        # bounded, and served round-robin by device: a device that sends much waits behind
        # itself; a full queue holds up the client's network thread, so the broker holds
        # (and in the end drops) what comes faster than it is stored; devices resend it
        self._queue: FairQueue[mqtt.MQTTMessage] = FairQueue(MAX_QUEUED)
        self._thread = threading.Thread(target=self._work, name="ingest", daemon=True)
        self.client = make_client(worker_id or f"ingest-{uuid.uuid4().hex[:8]}",
                                  protocol=protocol, tls_ca=tls_ca, tls_cert=tls_cert,
                                  tls_key=tls_key, username=username, password=password)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, msg: self._queue.put(
            device_of(msg.topic, self.prefix) or "", msg)
        self.client.on_disconnect = lambda *a: self.connected.clear()

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self._thread.start()

    def shutdown(self) -> None:
        self._queue.close()
        self._thread.join(5)
        if self._own_work:
            self.work.shutdown()
        if "_otlp" in self.__dict__:  # what is queued is still sent; no new retry waits
            self.__dict__["_otlp"].shutdown()
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the ingest worker: %s", reason)
            return
        share = f"$share/{self.group}/" if self.protocol == "5" else ""
        if self.listen:
            client.subscribe([(f"{share}{self.prefix}/+/up", 1),
                              (f"{self.prefix}/+/status", 1)])
        self.connected.set()

    def _work(self) -> None:
        while (msg := self._queue.get()) is not None:
            try:
                self.handle(msg.topic, bytes(msg.payload))
            except Exception:
                log.exception("ingest: failed on a message from %s", msg.topic)

    def handle(self, topic: str, payload: bytes) -> None:
        device = device_of(topic, self.prefix)
        if device is None:
            self._reject(None, topic, "bad_topic", topic, payload)
            return
        if topic.endswith("/status"):
            self._status(device, topic, payload)
            return
        try:
            if self.uplink is not None:  # sealed by the device's own key
                payload = self.uplink.open(device, payload)
            batch = decode_batch(payload, topic_device=device, streams=STREAMS)
        except EnvelopeError as exc:
            self._reject(device, topic, exc.reason, str(exc), payload)
            return
        stored = self.store.store_batch(batch)
        if stored.bad_chunk:
            self._reject(device, topic, "bad_chunk", stored.bad_chunk, payload)
        self.conflicts += stored.conflicts
        self.stubs += stored.stubs
        if batch.stream == "control":  # before the ack: nothing acked is lost (idempotent,
            # so a resend applies again what a worker killed after its commit had not)
            self._documents(device, stored.new if batch.chunk else batch.records)
        self.batches += 1
        ack = self._ack(batch, stored)
        if self.sealer is not None and batch.version >= 2:  # a protocol 1 device reads plain acks
            ack = self.sealer.seal(device, "ack", ack)
        self.client.publish(Topics(self.prefix, device).ack, ack, qos=1)
        if batch.stream == "control":
            self._effects(device, stored.new)
        else:
            for r in stored.new:
                if r.kind in CONTROL_KINDS:  # stored, never acted on; shown to operators
                    self._reject(device, topic, "wrong_stream", f"{r.kind} record {r.seq}"
                                 f" on the {batch.stream} stream: stored, not acted on",
                                 r.payload)
        if batch.stream in ("traces", "metrics") and self.otlp_endpoint:
            for r in stored.new:
                if r.kind in ("otlp.traces", "otlp.metrics"):
                    self._export(r.payload, "traces" if r.kind == "otlp.traces" else "metrics")

    @staticmethod
    def _ack(batch: Batch, stored: Stored) -> bytes:
        """Protocol 2: the batch's digest and the watermark. Protocol 1: the watermark, and
        the digest only when the watermark covers the batch."""
        if batch.version == 1:
            return encode_ack(batch.stream, stored.watermark,
                              batch.digest if stored.watermark >= batch.last else "")
        return encode_ack(batch.stream, stored.watermark, batch.digest, epoch=batch.epoch,
                          conflicts=stored.conflicts)

    def _documents(self, device: str, records: Any) -> None:
        """Apply the device's document versions; answer its summary with what differs."""
        versions: list[Version] = []
        summaries = None
        for r in records:
            try:
                if r.kind == "doc.version":
                    versions.append(Version.decode(msgpack.unpackb(r.payload, raw=False)))
                elif r.kind == "doc.summary":
                    summaries = decode_summaries(msgpack.unpackb(r.payload, raw=False))
            except (DocumentError, ValueError, TypeError, msgpack.UnpackException) as exc:
                self.rejected["bad_document"] += 1
                log.warning("ingest: unreadable %s from %s: %s", r.kind, device, exc)
        if versions:
            self.docs.apply(device, versions)
        if summaries is not None:
            for payload in self.docs.differences(device, summaries):
                log.info("anti-entropy: %s differs from the cloud in %s (%d bucket(s))",
                         device, payload["collection"], len(payload["buckets"]))
                self.send_command(device, "doc_sync", payload)

    def write_doc(self, device: str, collection: str, key: str, changes: dict[str, Any],
                  expires_in_s: float | None = None) -> tuple[str, Version]:
        """A cloud write to a device's document: stored here, then sent down."""
        version = self.docs.write(device, collection, key, changes)
        return self.send_command(device, "doc_update", {"version": version.encode()},
                                 expires_in_s=expires_in_s), version

    def _status(self, device: str, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        try:
            if len(payload) > MAX_STATUS_BYTES:
                raise ValueError("too large")
            status = json.loads(payload)
            state = status["state"]
            if state not in ("online", "offline"):
                raise ValueError(f"state {state!r}")
        except (ValueError, KeyError, TypeError) as exc:
            self._reject(device, topic, "bad_status", str(exc), payload)
            return
        self.store.seen(device, state == "online", status)
        if state == "online":  # what waited for it: commands queued before it was ever
            self._send_queued(device)  # seen, results of hand-offs it has not confirmed
            self.handoffs.resend(device)
            from sync.cloud.deployments import device_online
            device_online(self.store, device)  # type: ignore[arg-type]

    def _effects(self, device: str, records: Any) -> None:
        """Side effects once, for the records a batch stored: results confirm commands (one
        transaction), requests go to the pools; the refused are answered `busy` together."""
        results: list[tuple[str, Any]] = []
        answers: list[dict[str, Any]] = []
        for r in records:
            if r.kind == "cmd.result":
                result = self._result(device, r.payload)
                if result is not None:
                    results.append(result)
            elif r.kind in ("tool.request", "handoff.request"):
                answer = (self._remote_tool(device, r.payload) if r.kind == "tool.request"
                          else self.handoffs.request(device, r.payload))
                if answer is not None:
                    answers.append(answer)
            elif r.kind in ("deploy.result", "deploy.health"):
                self._deployment(device, r.kind, r.payload)
        if results:
            for (cid, _), ok in zip(results, Commands(self.store).answer(device, results),
                                    strict=True):
                if not ok:
                    self.rejected["foreign_result"] += 1
                    log.warning("ingest: %s sent a result for command %s, which waits for no"
                                " result from it", device, cid[:64])
        if answers:
            self.send_commands(device, "tool_result", answers, expires_in_s=BUSY_TTL_S)

    def _result(self, device: str, payload: bytes) -> tuple[str, Any] | None:
        try:
            result = msgpack.unpackb(payload, raw=False)
            return str(result["id"]), dict(result)
        except (ValueError, KeyError, TypeError, AttributeError,
                msgpack.UnpackException) as exc:
            self.rejected["bad_result"] += 1
            log.warning("ingest: unreadable command result from %s: %s", device, exc)
            return None

    def _deployment(self, device: str, kind: str, payload: bytes) -> None:
        """A device's answer to a deployment, or its health while baking."""
        from sync.cloud import deployments
        try:
            (deployments.record_result if kind == "deploy.result"
             else deployments.record_health)(self.store, device, payload)  # type: ignore[arg-type]
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            self.rejected["bad_deploy_record"] += 1
            log.warning("ingest: unreadable %s from %s: %s", kind, device, exc)

    def _remote_tool(self, device: str, payload: bytes) -> dict[str, Any] | None:
        """Queue a device's remote tool request on the tool pool, if this worker serves that
        tool; the `busy` answer to send when the pool refuses it."""
        try:
            req = msgpack.unpackb(payload, raw=False)
            name, key, args = str(req["tool"]), str(req["key"]), dict(req["args"])
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            log.warning("ingest: unreadable tool request from %s: %s", device, exc)
            return None
        fn = self.tools.get(name)
        if fn is None:
            return None  # another service answers it, or the device falls back on its timeout
        due = req.get("timeout_at")
        if isinstance(due, int | float) and due and time.time() > float(due):
            # the device has stopped waiting (fallback, or an unknown outcome a person
            # answers): running it now would be an effect nobody expects
            self.rejected["late_tool_request"] += 1
            log.warning("ingest: %s's request %s for %s came after its timeout; not run",
                        device, key[:64], name)
            return None

        def call() -> None:
            try:
                answer: dict[str, Any] = {"key": key, "ok": True, "result": fn(**args)}
            except Exception as exc:  # noqa: BLE001 - reported to the device as the tool's error
                answer = {"key": key, "ok": False, "error": str(exc)[:500]}
            self.send_command(device, "tool_result", answer)
        if self.work.tools.submit(device, call):
            return None
        return busy_answer(key, "remote tool calls")

    def _export(self, payload: bytes, signal: str = "traces") -> None:
        """Queue for the exporter's thread: gzip, OTEL_EXPORTER_OTLP_* headers, retries of
        429/503 with backoff (sync/otlp.py); the ingest never waits on the collector."""
        from sync.otlp import OtlpHttpExporter
        exporter = self.__dict__.get("_otlp")
        if exporter is None:
            exporter = self.__dict__["_otlp"] = OtlpHttpExporter(self.otlp_endpoint)
        (exporter if signal == "traces" else exporter.metrics)(payload)

    def _reject(self, device: str | None, topic: str, reason: str, detail: str,
                payload: bytes) -> None:
        self.rejected[reason] += 1
        log.warning("quarantined a payload on %s: %s", topic, detail[:200])
        self.store.quarantine(device=device, topic=topic, reason=reason, detail=detail,
                              payload=payload)

    def send_command(self, device: str, ctype: str, args: dict[str, Any],
                     traceparent: str | None = None, wait_s: float = 0.0,
                     expires_in_s: float | None = None, resend: str | None = None) -> str:
        """Record and publish a command (QoS 1); the device confirms on its control stream.
        It expires after `expires_in_s` (default 24 h): the broker drops it, the device
        answers "expired", the cloud's sweep marks it expired. For a device never seen it
        is recorded `queued` and published when the device first comes online. `resend`:
        publish again the recorded command of that id (the device applies each id once)."""
        cid = resend or uuid.uuid4().hex
        ttl = expires_in_s or DEFAULT_TTL_S
        if resend is None:
            state = self.store.add_command(cid, device, ctype, args,
                                           expires_at=time.time() + ttl)
            if state == "queued":
                log.info("command %s (%s) queued for %s, never seen yet", cid, ctype, device)
                return cid
        self._publish(device, cid, ctype, args, ttl, traceparent, wait_s)
        return cid

    def send_commands(self, device: str, ctype: str, many: list[dict[str, Any]],
                      expires_in_s: float) -> list[str]:
        """Several commands of one type, recorded in one transaction, then published."""
        expires = time.time() + expires_in_s
        new = [NewCommand(uuid.uuid4().hex, device, ctype, args, expires) for args in many]
        states = Commands(self.store).add(new)
        for cmd in new:
            if states[cmd.cid] == "sent":
                self._publish(device, cmd.cid, ctype, cmd.args, expires_in_s)
        return [c.cid for c in new]

    def _send_queued(self, device: str) -> int:
        """Publish what was queued for a device that has come online (each id by one
        worker); what expired meanwhile is left to the sweep."""
        now = time.time()
        taken = Commands(self.store).take_queued(device, now)
        for cid, ctype, args, expires_at in taken:
            self._publish(device, cid, ctype, args, max(1.0, expires_at - now))
        if taken:
            log.info("sent %d command(s) queued for %s", len(taken), device)
        return len(taken)

    def _publish(self, device: str, cid: str, ctype: str, args: dict[str, Any], ttl: float,
                 traceparent: str | None = None, wait_s: float = 0.0) -> None:
        payload = encode_command(Command(cid, ctype, args, time.time()))
        if self.sealer is not None:
            payload = self.sealer.seal(device, ctype, payload, msg_id=cid, ttl_s=ttl)
        props = publish_properties(self.protocol, ttl, **({"traceparent": traceparent}
                                                          if traceparent else {}))
        info = self.client.publish(Topics(self.prefix, device).cmd, payload, qos=1,
                                   properties=props)
        if wait_s:
            info.wait_for_publish(wait_s)
