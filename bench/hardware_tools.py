"""Tool-call overhead: each tool kind against the bare library call it wraps.

Run: .venv/bin/python -m bench.hardware_tools [--quick]
Serial runs against the pty simulator, Modbus against pymodbus's own TCP server on
loopback, commands against `true`. Prints one line per figure and a JSON line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import serial

from edge_agent.tools.registry import build_tool

RELAY = {"port": "tty", "send": "SET {channel} {state}",
         "expect": r"^OK (?P<channel>\d+) (?P<state>ON|OFF)$", "error": r"^ERR (?P<reason>.*)$"}


def timed(fn: Callable[[int], Any], n: int) -> dict[str, float]:
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    lat.sort()
    return {"per_s": n / total, "p50_ms": statistics.median(lat) * 1e3,
            "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1e3}


def show(name: str, r: dict[str, float]) -> None:
    print(f"{name:44s} {r['per_s']:8.0f}/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms")


def tool(kind: str, options: dict[str, Any], base: Path) -> Any:
    return build_tool("b", kind, description="", params={"type": "object"}, result_schema=None,
                      idempotent=True, timeout_s=5.0, options=options, base_dir=base)


def bench_serial(base: Path, n: int, out: dict[str, Any]) -> None:
    link, ledger = base / "tty", base / "ledger.jsonl"
    sim = subprocess.Popen([sys.executable, "-m", "hardware.simulator", "--link", str(link),
                            "--ledger", str(ledger)], stdout=subprocess.PIPE, text=True)
    try:
        assert sim.stdout is not None and sim.stdout.readline().startswith("ready")
        with serial.Serial(str(link), 115200, timeout=5) as raw:
            def bare(i: int) -> None:
                raw.write(f"SET {i % 8 + 1} ON\n".encode())
                raw.readline()
            out["serial_raw"] = timed(bare, n)
        show("serial: bare pyserial write+readline", out["serial_raw"])
        t = tool("serial", RELAY, base)
        out["serial_tool"] = timed(lambda i: t.call({"channel": i % 8 + 1, "state": "OFF"},
                                                    idempotency_key=str(i)), n)
        show("serial: tool call (validate, frame, match)", out["serial_tool"])
        rid = tool("serial", {**RELAY, "request_id": True}, base)
        out["serial_tool_request_id"] = timed(
            lambda i: rid.call({"channel": 1, "state": "ON"}, idempotency_key=f"r{i}"), n)
        show("serial: tool call with request ids", out["serial_tool_request_id"])
        tools = [tool("serial", RELAY, base) for _ in range(4)]
        start = time.perf_counter()
        threads = [threading.Thread(target=lambda k=k: [tools[k].call(
            {"channel": 2, "state": "ON"}, idempotency_key="x") for _ in range(n // 4)])
            for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        per_s = (n // 4 * 4) / (time.perf_counter() - start)
        out["serial_4_threads_per_s"] = per_s
        print(f"{'serial: 4 threads sharing one port':44s} {per_s:8.0f}/s")
        for x in [t, rid, *tools]:
            x.close()
    finally:
        sim.terminate()
        sim.wait(5)


def bench_modbus(base: Path, n: int, out: dict[str, Any]) -> None:
    from pymodbus.client import ModbusTcpClient
    from pymodbus.datastore import (
        ModbusDeviceContext,
        ModbusSequentialDataBlock,
        ModbusServerContext,
    )
    from pymodbus.server import ServerAsyncStop, StartAsyncTcpServer
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = ModbusServerContext(devices={1: ModbusDeviceContext(
        ir=ModbusSequentialDataBlock(1, [215] * 10))}, single=False)  # type: ignore[no-untyped-call]
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=lambda: loop.run_until_complete(
        StartAsyncTcpServer(ctx, address=("127.0.0.1", port))), daemon=True)
    th.start()
    time.sleep(0.5)
    try:
        client = ModbusTcpClient("127.0.0.1", port=port)
        client.connect()
        out["modbus_raw"] = timed(lambda i: client.read_input_registers(0, count=1,
                                                                        device_id=1), n)
        client.close()
        show("modbus tcp: bare pymodbus read", out["modbus_raw"])
        t = tool("modbus", {"host": "127.0.0.1", "port": port, "registers": {
            "temp": {"table": "input", "address": 0, "type": "int16", "scale": 0.1}}}, base)
        out["modbus_tool"] = timed(lambda i: t.call({"register": "temp"},
                                                    idempotency_key="k"), n)
        show("modbus tcp: tool call (declared, scaled)", out["modbus_tool"])
        t.close()
    finally:
        asyncio.run_coroutine_threadsafe(ServerAsyncStop(), loop).result(5)
        th.join(5)


def bench_command(base: Path, n: int, out: dict[str, Any]) -> None:
    out["command_raw"] = timed(lambda i: subprocess.run(["true"], capture_output=True,
                                                          check=True), n)
    show("command: subprocess.run, output captured", out["command_raw"])
    t = tool("command", {"argv": ["true"]}, base)
    out["command_tool"] = timed(lambda i: t.call({}, idempotency_key="k"), n)
    show("command: tool call", out["command_tool"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 100 if args.quick else 1000
    out: dict[str, Any] = {"n": n}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        bench_serial(base, n, out)
        bench_modbus(base, n, out)
        bench_command(base, n // 5, out)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
