"""Device fixtures: the serial simulator process on a pty, pymodbus's own servers."""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path
from typing import Any

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)

# The hardware issue's serial contract example, as written.
SERIAL_CONTRACT = r'''
[tools.relay]
kind = "serial"
port = "/dev/ttyUSB0"
baudrate = 115200
terminator = "\n"
send = "SET {channel} {state}"
expect = '^OK (?P<channel>\d+) (?P<state>ON|OFF)$'
error = '^ERR (?P<reason>.*)$'
timeout_s = 2.0
idempotent = true
params = { type = "object", properties = { channel = { type = "integer", minimum = 1, maximum = 8 }, state = { enum = ["ON", "OFF"] } }, required = ["channel", "state"] }
'''


class SerialSim:
    def __init__(self, tmp: Path, fault: str = "none") -> None:
        self.link = tmp / "ttyRELAY"
        self.ledger = tmp / "device-ledger.jsonl"
        self.control = tmp / "device-control"
        self.control.write_text(fault + "\n")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hardware.simulator", "--link", str(self.link), "--ledger",
             str(self.ledger), "--control", str(self.control)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("ready"):
            raise RuntimeError(f"simulator did not start: {self.proc.stderr.read()}")

    def fault(self, mode: str) -> None:
        self.control.write_text(mode + "\n")
        time.sleep(0.3)  # it polls the control file every 0.2 s

    def ledger_lines(self) -> list[dict[str, Any]]:
        import json
        if not self.ledger.exists():
            return []
        return [json.loads(x) for x in self.ledger.read_text().splitlines() if x]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def modbus_context() -> ModbusServerContext:
    def block(first: list[int]) -> ModbusSequentialDataBlock:
        return ModbusSequentialDataBlock(1, first + [0] * (100 - len(first)))  # address 0 = 1
    # input registers: 21.5 C (scaled by 0.1) and -1 as int16; discrete input 0 is on
    dev = ModbusDeviceContext(di=block([1]), co=block([]), hr=block([]), ir=block([215, 0xFFFF]))
    return ModbusServerContext(devices={1: dev}, single=False)


class ModbusServer:
    """pymodbus's own server, TCP on loopback or RTU on a pty, in a thread."""

    def __init__(self, kind: str, *, port: int = 0, device: str = "") -> None:
        from pymodbus.server import StartAsyncSerialServer, StartAsyncTcpServer
        self.context = modbus_context()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()

        async def serve() -> None:
            self.ready.set()
            if kind == "tcp":
                await StartAsyncTcpServer(self.context, address=("127.0.0.1", port))
            else:
                await StartAsyncSerialServer(self.context, port=device, baudrate=19200,
                                             framer="rtu")
        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(serve()),
                                       daemon=True)
        self.thread.start()
        self.ready.wait(5)
        time.sleep(0.5)

    def stop(self) -> None:
        from pymodbus.server import ServerAsyncStop
        try:
            asyncio.run_coroutine_threadsafe(ServerAsyncStop(), self.loop).result(5)
        except Exception:  # noqa: BLE001 - already stopped
            pass
        self.thread.join(5)


class PtyBridge:
    """Two pseudo-terminals wired back to back: a null-modem cable for RTU tests."""

    def __init__(self) -> None:
        self.fds = []
        self.names = []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(slave)
            tty.setraw(master)
            self.fds.append(master)
            self.names.append(os.ttyname(slave))
            self._slaves = getattr(self, "_slaves", []) + [slave]
        self.running = True
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        a, b = self.fds
        while self.running:
            r, _, _ = select.select([a, b], [], [], 0.1)
            for fd in r:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                os.write(b if fd == a else a, data)

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        for fd in self.fds + self._slaves:
            try:
                os.close(fd)
            except OSError:
                pass
