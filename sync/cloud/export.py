"""`edge-agent-cloud export --since T [--device D] > audit.jsonl`: every stored record, one
JSON object a line, for an auditor to check against a device.

Each line: device, epoch, stream, seq, kind, created_at (the device's clock), received_at
(when the cloud stored it), sha256 (of the payload: the per-record hash inside a batch's
digest, sync/PROTOCOL.md 3.1) and payload (base64). Records stored since T, in (device,
epoch, stream, seq) order, read a page at a time.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

PAGE = 1000


def records_since(store: Any, since: float, device: str | None = None
                  ) -> Iterator[dict[str, Any]]:
    where, args = "received_at >= ?", [since]
    if device is not None:
        where += " AND device = ?"
        args.append(device)  # type: ignore[arg-type]
    with store.tx() as c:
        keys = store._exec(c, f"SELECT DISTINCT device, epoch, stream FROM records WHERE"
                              f" {where} ORDER BY device, epoch, stream", args).fetchall()
    for dev, epoch, stream in keys:
        after = 0
        while True:
            with store.tx() as c:
                rows = store._exec(
                    c, "SELECT seq, kind, payload, created_at, received_at FROM records WHERE"
                       " device = ? AND epoch = ? AND stream = ? AND seq > ? AND"
                       f" received_at >= ? ORDER BY seq LIMIT {PAGE}",
                    (dev, epoch, stream, after, since)).fetchall()
            for seq, kind, payload, created, received in rows:
                data = bytes(payload)
                yield {"device": dev, "epoch": epoch, "stream": stream, "seq": int(seq),
                       "kind": kind, "created_at": created, "received_at": received,
                       "sha256": hashlib.sha256(data).hexdigest(),
                       "payload": base64.b64encode(data).decode()}
            if len(rows) < PAGE:
                break
            after = int(rows[-1][0])


def write_jsonl(store: Any, since: float, device: str | None, out: TextIO) -> int:
    n = 0
    for rec in records_since(store, since, device):
        out.write(json.dumps(rec) + "\n")
        n += 1
    return n


def cmd_export(cfg: Any, args: argparse.Namespace) -> int:
    from sync.cloud.wiring import store_of
    store = store_of(cfg)
    try:
        n = write_jsonl(store, args.since, args.device, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early (`| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        store.close()
    print(json.dumps({"records": n}) if args.json else f"{n} record(s)", file=sys.stderr)
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    from sync.cloud.views_cli import parse_since
    s = sub.add_parser("export", parents=[common], help="every record stored since T as JSON"
                       " lines (device, epoch, stream, seq, sha256, payload) on stdout")
    s.add_argument("--since", type=parse_since, required=True,
                   help="stored since: 1h, 2d, an ISO time or Unix seconds")
    s.add_argument("--device", help="only this device")
    s.set_defaults(handler=cmd_export)


__all__ = ["records_since", "register", "write_jsonl"]
