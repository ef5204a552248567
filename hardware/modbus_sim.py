"""A Modbus TCP sensor block for demos, served by pymodbus's own server.

    python -m hardware.modbus_sim --port 5020

Input register 0: vibration in mm/s x100; input register 1: spindle temperature x10.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import StartAsyncTcpServer


def context(vibration: int, temperature: int) -> ModbusServerContext:
    def block(first: list[int]) -> ModbusSequentialDataBlock:
        return ModbusSequentialDataBlock(  # type: ignore[no-untyped-call]
            1, first + [0] * (64 - len(first)))
    dev = ModbusDeviceContext(di=block([]), co=block([]), hr=block([]),
                              ir=block([vibration, temperature]))
    return ModbusServerContext(devices={1: dev}, single=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Modbus TCP sensor simulator")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--vibration", type=int, default=184)
    ap.add_argument("--temperature", type=int, default=412)
    args = ap.parse_args(argv)
    print(f"ready {args.port}", flush=True)
    asyncio.run(StartAsyncTcpServer(context(args.vibration, args.temperature),
                                    address=("127.0.0.1", args.port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
