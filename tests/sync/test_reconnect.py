"""After the broker returns, a client made by sync.mqtt.make_client (the device's and the
cloud's) is back within the bound the README gives (5 s, plus slack for a loaded machine):
it took ~14 s when the backoff could grow to 60 s."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from support.broker import Broker

from sync.mqtt import RECONNECT_MAX_S, make_client


def test_a_lost_broker_is_found_again_within_the_bound(tmp_path: Path) -> None:
    broker = Broker(tmp_path).start()
    connected = threading.Event()
    client = make_client("reconnect-probe")
    client.on_connect = lambda *a: connected.set()
    try:
        client.connect_async("127.0.0.1", broker.port, keepalive=5)
        client.loop_start()
        assert connected.wait(10)
        connected.clear()
        broker.kill()
        time.sleep(16)  # unbounded, the waits would be 1, 2, 4, 8, then 16 s
        broker.start()
        back = time.monotonic()
        assert connected.wait(RECONNECT_MAX_S + 3), "not back within the bound"
        assert time.monotonic() - back <= RECONNECT_MAX_S + 2.5
    finally:
        client.loop_stop()
        client.disconnect()
        broker.kill()
