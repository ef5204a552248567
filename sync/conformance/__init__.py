"""A conformance suite for sync/PROTOCOL.md that any peer can run over a broker.

`python -m sync.conformance --broker HOST:PORT --play device` plays a device against the
cloud under test; `--play cloud --device ID` plays the cloud against a device under test.
Each rule checked is a `Check` with the spec section it comes from; the exit status is 0
when every check passed.
"""

from sync.conformance.checks import Check, Report

__all__ = ["Check", "Report"]
