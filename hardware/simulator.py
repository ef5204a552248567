"""A serial device simulator on a pseudo-terminal: an 8-channel relay board with
temperature sensors, for tests and the demo.

    python -m hardware.simulator --link /tmp/relay --ledger /tmp/ledger.jsonl

Protocol (one line each way): `SET <ch> <ON|OFF>` -> `OK <ch> <state>`, `GET <ch>` ->
`OK <ch> <state>`, `TEMP <n>` -> `TEMP <n> <celsius>`, `DUMP` -> the states then `END`,
anything else -> `ERR <reason>`. A `#<id> ` prefix makes a request idempotent: a repeated id
is answered from memory and not executed again. Every executed SET is appended to the
ledger (one JSON object per line), so tests can prove exactly-once from the device's side.

Faults (`--fault` at start, or one line written to the `--control` file at run time):
`slow SECONDS`, `garbage`, `partial`, `silence`, `disconnect SECONDS` (the pty is closed
and a new one appears behind the same link, as udev does after USB re-enumeration), `none`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import sys
import time
import tty
from pathlib import Path


class RelayBoard:
    def __init__(self, ledger: Path | None, seed: int = 0) -> None:
        self.relays = dict.fromkeys(range(1, 9), "OFF")
        self.ledger = ledger
        self.replies: dict[str, str] = {}
        self.rnd = random.Random(seed)

    def handle(self, line: str) -> str:
        rid = None
        if line.startswith("#") and " " in line:
            rid, line = line[1:].split(" ", 1)
            if rid in self.replies:
                return f"#{rid} {self.replies[rid]}"
        reply = self._execute(line.strip(), rid)
        if rid is not None:
            self.replies[rid] = reply
            return f"#{rid} {reply}"
        return reply

    def _execute(self, line: str, rid: str | None) -> str:
        parts = line.split()
        if not parts:
            return "ERR empty"
        cmd = parts[0].upper()
        if cmd == "SET" and len(parts) == 3:
            ch, state = parts[1], parts[2].upper()
            if not ch.isdigit() or int(ch) not in self.relays:
                return f"ERR no channel {ch}"
            if state not in ("ON", "OFF"):
                return f"ERR bad state {state}"
            self.relays[int(ch)] = state
            if self.ledger is not None:
                with open(self.ledger, "a") as f:
                    f.write(json.dumps({"cmd": "SET", "channel": int(ch), "state": state,
                                        "id": rid, "ts": time.time()}) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            return f"OK {ch} {state}"
        if cmd == "GET" and len(parts) == 2 and parts[1].isdigit() \
                and int(parts[1]) in self.relays:
            return f"OK {parts[1]} {self.relays[int(parts[1])]}"
        if cmd == "TEMP" and len(parts) == 2 and parts[1].isdigit():
            return f"TEMP {parts[1]} {20 + int(parts[1]) * 1.5 + self.rnd.uniform(0, 0.4):.1f}"
        if cmd == "DUMP":
            return "\n".join(f"RELAY {c} {s}" for c, s in self.relays.items()) + "\nEND"
        return f"ERR unknown command {parts[0][:20]}"


class Simulator:
    def __init__(self, link: Path, board: RelayBoard, fault: str = "none",
                 control: Path | None = None) -> None:
        self.link = link
        self.board = board
        self.fault = fault
        self.control = control
        self.master = -1

    def open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        name = os.ttyname(slave)
        os.close(slave)  # the client opens it by name
        tmp = self.link.with_name(self.link.name + ".tmp")
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(name)
        os.replace(tmp, self.link)
        self.master = master

    def read_fault(self) -> None:
        if self.control is not None and self.control.exists():
            text = self.control.read_text().strip()
            if text:
                self.fault = text

    def serve(self) -> None:
        self.open_pty()
        print(f"ready {self.link}", flush=True)
        buf = b""
        while True:
            r, _, _ = select.select([self.master], [], [], 0.2)
            self.read_fault()
            if self.fault.startswith("disconnect"):
                self.disconnect()
                buf = b""
                continue
            if not r:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                data = b""
            if not data:
                time.sleep(0.05)
                continue
            buf += data
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                self.respond(raw.decode(errors="replace").rstrip("\r"))

    def respond(self, line: str) -> None:
        fault = self.fault.split()
        kind = fault[0] if fault else "none"
        if kind == "silence":
            return
        if kind == "slow":
            time.sleep(float(fault[1]) if len(fault) > 1 else 1.0)
        reply = self.board.handle(line)
        if kind == "garbage":
            out = bytes(self.board.rnd.randrange(128, 256) for _ in range(12)) + b"\n"
        elif kind == "partial":
            out = reply.encode()[: max(1, len(reply) // 2)]
        else:
            out = reply.encode() + b"\n"
        try:
            os.write(self.master, out)
        except OSError:
            pass

    def disconnect(self) -> None:
        parts = self.fault.split()
        pause = float(parts[1]) if len(parts) > 1 else 1.0
        os.close(self.master)
        self.link.unlink(missing_ok=True)
        time.sleep(pause)
        self.fault = "none"
        if self.control is not None:
            self.control.write_text("none\n")
        self.open_pty()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="serial relay board and sensor simulator")
    ap.add_argument("--link", required=True, type=Path, help="stable path to the pty")
    ap.add_argument("--ledger", type=Path, help="append executed commands here")
    ap.add_argument("--fault", default="none")
    ap.add_argument("--control", type=Path, help="a file whose one line sets the fault")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    sim = Simulator(args.link, RelayBoard(args.ledger, args.seed), args.fault, args.control)
    try:
        sim.serve()
    finally:
        args.link.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
