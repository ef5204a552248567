"""An MQTT client for the suite: publishes, and collects what arrives on its topics."""

from __future__ import annotations

import queue
import time
import uuid

from sync.mqtt import make_client


class Wire:
    def __init__(self, host: str, port: int, topics: list[str], *,
                 tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, username: str | None = None,
                 password: str | None = None) -> None:
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client = make_client(f"conformance-{uuid.uuid4().hex[:8]}", tls_ca=tls_ca,
                                  tls_cert=tls_cert, tls_key=tls_key, username=username,
                                  password=password)
        self.client.max_queued_messages_set(0)
        subscribed = queue.Queue[bool]()
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: subscribed.put(True)
        self.client.on_message = lambda c, u, m: self.inbox.put((m.topic, bytes(m.payload)))
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        subscribed.get(timeout=10)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def receive(self, timeout: float) -> tuple[str, bytes] | None:
        try:
            return self.inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def drain(self, seconds: float) -> list[tuple[str, bytes]]:
        end, out = time.monotonic() + seconds, []
        while (got := self.receive(end - time.monotonic())) is not None:
            out.append(got)
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
