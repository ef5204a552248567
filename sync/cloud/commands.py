"""The life of a command on the cloud, kept in the fleet store's `commands` table.

    queued     for a device the cloud has never seen: held here, published when the
               device first comes online (the broker keeps nothing for a client it never met)
    sent       published (QoS 1); the broker's session holds it for a known device
    confirmed  the device applied it (its `cmd.result` said ok)
    failed     the device refused it or its handler failed (the result says why)
    expired    its expiry passed before the device answered (the sweep marks it), or the
               device answered `expired`

Every command ends: `queued` and `sent` end in one of the three others, at the latest at
expiry. The rules are the pure functions below; `Commands` performs the writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

STATES = ("queued", "sent", "confirmed", "failed", "expired")
OPEN = ("queued", "sent")


@dataclass(frozen=True)
class NewCommand:
    cid: str
    device: str
    type: str
    args: Any
    expires_at: float


def initial_state(device_seen: bool) -> str:
    return "sent" if device_seen else "queued"


def answered_state(current: str, result: Any) -> str | None:
    """The state a device's result moves a command to; None: the result changes nothing
    (a command already ended keeps its end; an expired one only gains the answer)."""
    if current not in OPEN:
        return None
    if not isinstance(result, dict):
        return "failed"
    if result.get("ok"):
        return "confirmed"
    return "expired" if str(result.get("error", "")).startswith("expired") else "failed"


class Commands:
    """The commands table through a fleet store (its transactions and dialect)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def _x(self, c: Any, sql: str, args: Sequence[Any] = ()) -> Any:
        return self.store._exec(c, sql, args)

    def add(self, commands: Iterable[NewCommand], now: float | None = None
            ) -> dict[str, str]:
        """Record commands in one transaction; returns id -> state (sent, or queued for a
        device never seen). An id recorded already keeps its row."""
        now = time.time() if now is None else now
        states: dict[str, str] = {}
        with self.store.tx() as c:
            seen: dict[str, bool] = {}
            for cmd in commands:
                if cmd.device not in seen:
                    seen[cmd.device] = self._x(c, "SELECT 1 FROM devices WHERE device = ?",
                                               (cmd.device,)).fetchone() is not None
                state = initial_state(seen[cmd.device])
                self._x(c, "INSERT INTO commands (id, device, type, args, state, created_at,"
                           " expires_at, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                           " ON CONFLICT (id) DO NOTHING",
                        (cmd.cid, cmd.device, cmd.type, json.dumps(cmd.args), state, now,
                         cmd.expires_at, now if state == "sent" else None))
                states[cmd.cid] = state
        return states

    def answer(self, device: str, results: Sequence[tuple[str, Any]],
               now: float | None = None) -> list[bool]:
        """Devices' results, in one transaction; per result, whether it answered a command
        sent to that device (the one whose stream carried it)."""
        now = time.time() if now is None else now
        out = []
        with self.store.tx() as c:
            for cid, result in results:
                row = self._x(c, "SELECT state FROM commands WHERE id = ? AND device = ?",
                              (cid, device)).fetchone()
                if row is None:
                    out.append(False)
                    continue
                state = answered_state(row[0], result)
                if state is None:  # ended already: an expired one keeps the late answer
                    if row[0] != "expired":
                        out.append(False)
                        continue
                    state = "expired"
                self._x(c, "UPDATE commands SET state = ?, confirmed_at = ?, result = ? WHERE"
                           " id = ? AND device = ?",
                        (state, now, json.dumps(result, default=str), cid, device))
                out.append(True)
        return out

    def expire_due(self, now: float | None = None) -> int:
        """Mark every open command whose expiry has passed `expired`; returns how many."""
        now = time.time() if now is None else now
        with self.store.tx() as c:
            cur = self._x(c, "UPDATE commands SET state = 'expired', confirmed_at = ? WHERE"
                             " state IN ('queued', 'sent') AND expires_at IS NOT NULL AND"
                             " expires_at <= ?", (now, now))
            return int(cur.rowcount or 0)

    def take_queued(self, device: str, now: float | None = None
                    ) -> list[tuple[str, str, Any, float]]:
        """The unexpired commands queued for `device`, now marked `sent`: (id, type, args,
        expires_at). Each is taken by one caller only (several workers see the status)."""
        now = time.time() if now is None else now
        taken = []
        with self.store.tx() as c:
            rows = self._x(c, "SELECT id, type, args, expires_at FROM commands WHERE device = ?"
                              " AND state = 'queued' ORDER BY created_at", (device,)).fetchall()
            for cid, ctype, args, expires in rows:
                if expires is not None and float(expires) <= now:
                    continue  # the sweep marks it expired
                cur = self._x(c, "UPDATE commands SET state = 'sent', sent_at = ? WHERE id = ?"
                                 " AND state = 'queued'", (now, cid))
                if cur.rowcount:
                    taken.append((cid, ctype, json.loads(args),
                                  float(expires) if expires is not None else now + 86400))
        return taken

    def listing(self, device: str | None = None, state: str | None = None,
             limit: int = 1000) -> list[dict[str, Any]]:
        """Commands, newest first."""
        where, args = [], []
        if device is not None:
            where.append("device = ?")
            args.append(device)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        sql = ("SELECT id, device, type, state, created_at, sent_at, expires_at, confirmed_at,"
               " result FROM commands" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY created_at DESC, id LIMIT ?")
        with self.store.tx() as c:
            rows = self._x(c, sql, (*args, limit)).fetchall()
        return [{"id": r[0], "device": r[1], "type": r[2], "state": r[3], "created_at": r[4],
                 "sent_at": r[5], "expires_at": r[6], "answered_at": r[7],
                 "result": json.loads(r[8]) if r[8] else None} for r in rows]


__all__ = ["OPEN", "STATES", "Commands", "NewCommand", "answered_state", "initial_state"]
