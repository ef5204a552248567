"""Modbus TCP and RTU through pymodbus, limited to declared registers.

A register is declared with a table (coil, discrete, holding, input), an address, a data
type (bool, int16, uint16, int32, uint32, float32) and a scale; writes only where
`writable`. A name that is not declared cannot be reached at all.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from hardware.errors import (
    BadReply,
    DeviceGone,
    DeviceRejected,
    DeviceTimeout,
    HardwareError,
    NotDeclared,
)

TABLES = ("coil", "discrete", "holding", "input")
TYPES = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}


@dataclass(frozen=True)
class Register:
    name: str
    table: str
    address: int
    type: str = "uint16"
    scale: float = 1.0
    writable: bool = False

    def __post_init__(self) -> None:
        if self.table not in TABLES:
            raise ValueError(f"table must be one of {', '.join(TABLES)} (got {self.table!r})")
        if self.type not in TYPES:
            raise ValueError(f"type must be one of {', '.join(TYPES)} (got {self.type!r})")
        if self.table in ("coil", "discrete") and self.type != "bool":
            raise ValueError(f"{self.table} registers are bool (got {self.type!r})")
        if self.writable and self.table not in ("coil", "holding"):
            raise ValueError(f"{self.table} registers cannot be written")


class ModbusDevice:
    def __init__(self, registers: Mapping[str, Register], *, transport: str, host: str = "",
                 port: int | str = 502, baudrate: int = 19200, unit: int = 1,
                 timeout_s: float = 2.0) -> None:
        self.registers = dict(registers)
        self.unit = unit
        self._lock = threading.Lock()
        if transport == "tcp":
            self.client: Any = ModbusTcpClient(host, port=int(port), timeout=timeout_s,
                                               retries=0)
        elif transport == "rtu":
            self.client = ModbusSerialClient(str(port), baudrate=baudrate, timeout=timeout_s,
                                             retries=0)
        else:
            raise ValueError(f"transport must be tcp or rtu (got {transport!r})")

    def _reg(self, name: str) -> Register:
        reg = self.registers.get(name)
        if reg is None:
            raise NotDeclared(f"register {name!r} is not declared (declared: "
                              f"{', '.join(sorted(self.registers))})")
        return reg

    def _connected(self) -> None:
        if not self.client.connected and not self.client.connect():
            raise DeviceGone(f"cannot connect to the Modbus device ({self.client})")

    def read(self, name: str) -> Any:
        reg = self._reg(name)
        with self._lock:
            self._connected()
            try:
                if reg.table == "coil":
                    rr = self.client.read_coils(reg.address, count=1, device_id=self.unit)
                elif reg.table == "discrete":
                    rr = self.client.read_discrete_inputs(reg.address, count=1,
                                                          device_id=self.unit)
                elif reg.table == "holding":
                    rr = self.client.read_holding_registers(reg.address, count=TYPES[reg.type],
                                                            device_id=self.unit)
                else:
                    rr = self.client.read_input_registers(reg.address, count=TYPES[reg.type],
                                                          device_id=self.unit)
            except ModbusException as exc:
                raise self._translate(exc, f"read of {name}") from exc
        if rr.isError():
            raise DeviceRejected(f"Modbus read of {name}: device answered {rr}",
                                 fields={"exception_code": getattr(rr, "exception_code", None)})
        if reg.type == "bool":
            return bool(rr.bits[0])
        raw = self.client.convert_from_registers(rr.registers, self._dtype(reg.type))
        return raw * reg.scale if reg.scale != 1.0 else raw

    def write(self, name: str, value: Any) -> Any:
        reg = self._reg(name)
        if not reg.writable:
            raise NotDeclared(f"register {name!r} is not declared writable")
        try:
            raw: Any = bool(value)
            if reg.table != "coil":
                scaled = value / reg.scale if reg.scale != 1.0 else value
                scaled = round(scaled) if reg.type != "float32" else float(scaled)
                raw = self.client.convert_to_registers(scaled, self._dtype(reg.type))
        except (TypeError, ValueError, OverflowError, struct.error) as exc:
            raise HardwareError(f"Modbus write of {name}: {value!r} does not fit "
                                f"{reg.type} ({exc})", kind="invalid_args") from exc
        with self._lock:
            self._connected()
            try:  # once connected, the request may reach the device whatever fails next
                if reg.table == "coil":
                    rr = self.client.write_coil(reg.address, raw, device_id=self.unit)
                else:
                    rr = self.client.write_registers(reg.address, raw, device_id=self.unit)
            except ModbusException as exc:
                err = self._translate(exc, f"write of {name}")
                err.effect_may_have_happened = True
                raise err from exc
        if rr.isError():
            raise DeviceRejected(f"Modbus write of {name}: device answered {rr}",
                                 fields={"exception_code": getattr(rr, "exception_code", None)})
        return value

    def _translate(self, exc: ModbusException, what: str) -> HardwareError:
        """pymodbus errors as ours; the link is closed so the next call starts clean."""
        self.client.close()
        if isinstance(exc, ConnectionException):
            return DeviceGone(f"Modbus device went away during {what}: {exc}")
        if isinstance(exc, ModbusIOException):
            return DeviceTimeout(f"Modbus {what}: no reply within the timeout")
        return BadReply(f"Modbus {what}: {exc}")

    def _dtype(self, name: str) -> Any:
        return getattr(self.client.DATATYPE, name.upper())

    def close(self) -> None:
        self.client.close()
