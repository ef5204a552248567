"""`edge-agent-cloud approve|reject --device D RUN_ID [--approval ID]`: answer the gate the
cloud saw (sync.cloud.decisions). Prints the command id; with --wait, the device's answer
(exit 0 confirmed, 1 refused (`stale`, nothing pending...), 2 no answer in time)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sync.cloud.decisions import DecisionError


def cmd_decide(cfg: Any, args: argparse.Namespace, patch: dict[str, Any] | None) -> int:
    from sync.cloud.decisions import decide
    from sync.cloud.wiring import store_of
    store = store_of(cfg)
    try:
        out = decide(cfg, store, args.device, args.run_id, args.approval,
                     args.command == "approve", note=args.note, patch=patch, by=args.by,
                     expires_in_s=args.expires_in, wait_s=args.timeout if args.wait else 0.0)
    finally:
        store.close()
    if not args.wait:
        print(json.dumps(out) if args.json else out["command_id"])
        return 0
    print(json.dumps(out) if args.json else
          f"{out['command_id']}\n{out['state']}: {out['result']}")
    if out["state"] == "sent":
        raise DecisionError(f"no confirmation within {args.timeout:g}s (the device may be "
                            "offline; the command waits in its session)", 2)
    return 0 if out["state"] == "confirmed" else 1


ERRORS: tuple[type[Exception], ...] = (DecisionError,)
__all__ = ["ERRORS", "cmd_decide"]
