"""Device I/O: serial line protocols, Modbus, GPIO, commands, and device simulators.

Imports nothing of ours. Every failure is a `hardware.errors.HardwareError` carrying its
`kind` and whether a retry can help. Modules: `serial_line` (request/response lines, one
lock per port, reopen after the device comes back), `modbus` (declared registers over TCP
or RTU), `gpio` (declared lines through libgpiod, or a simulated chip where no chip
exists), `command` (a fixed argv, no shell), `simulator` and `modbus_sim` (devices for
tests and the demo).
"""
