"""Device I/O: serial line protocols, Modbus, GPIO, commands, and device simulators.

Imports nothing of ours.
"""
