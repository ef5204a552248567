"""Runs leased to runners: several cloud runners on one PostgreSQL database.

Each runner has an id. Before it drives a run it claims the run's lease row
(`run_lease_claim`: a fresh row, its own, or one whose lease has expired, taken with
SELECT ... FOR UPDATE SKIP LOCKED; committed without waiting for the disk, since a claim
the server loses fails the claimant's next fence and nothing else); every write of the
run's steps starts with `run_lease_check`, which locks that row (so writes to one run are
serialized by a row lock, and writes to different runs do not wait for each other), renews
the lease, and fails with `LeaseLost` when another runner took the run over; the write that
finishes the run deletes the row. A thread renews the leases of the runs this runner holds but is not writing (a run
waiting for a person, or sleeping until its retry), every third of the lease. A runner that
dies stops renewing: once its leases expire, the other runners' scan for orphans (every half
lease) finds its runs and takes them over, resuming from their last commit by the same rules
as a restart (a non-idempotent call whose intent has no result is an unknown outcome).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Mapping

from edge_agent.errors import ConfigError
from edge_agent.store.leases import Statement
from edge_agent.store.postgres import PgStore

log = logging.getLogger(__name__)
LEASE_S = 15.0  # how long a runner's silence lasts before its runs are taken over
_ORPHANS = (  # in flight, no live runner's lease, and something to do now
    "SELECT r.run_id FROM runs r LEFT JOIN run_leases l ON l.run_id = r.run_id"
    " WHERE r.status NOT IN ('completed', 'failed', 'cancelled') AND"
    " (l.run_id IS NULL OR l.expires_at < extract(epoch FROM clock_timestamp())) AND"
    " (r.status IN ('queued', 'running') OR r.cancel_requested = 1 OR NOT EXISTS"
    " (SELECT 1 FROM approvals a WHERE a.run_id = r.run_id AND a.status = 'pending'))"
    " ORDER BY r.priority DESC, r.created_at LIMIT 1000")


def lease_seconds(env: Mapping[str, str]) -> float:
    """`EDGE_AGENT_LEASE_S` from the environment, else LEASE_S."""
    text = env.get("EDGE_AGENT_LEASE_S")
    if text is None:
        return LEASE_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        from sync.config_reader import ConfigIssue
        raise ConfigError("environment", [ConfigIssue(
            "EDGE_AGENT_LEASE_S", "must be a number of seconds > 0", text)])
    return value


def runner_id(name: str) -> str:
    """This process's id among the runners: the config's device id, pid, a random tail."""
    return f"{name}/{os.getpid()}/{secrets.token_hex(3)}"


class RunLeases:
    shared = True

    def __init__(self, store: PgStore, owner: str, lease_s: float = LEASE_S) -> None:
        self.store, self.owner, self.lease_s = store, owner, float(lease_s)
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def start(self) -> RunLeases:
        self._renewer = threading.Thread(target=self._renew_loop, name="lease-renew",
                                         daemon=True)
        self._renewer.start()
        return self

    def claim(self, run_id: str) -> bool:
        ours = self.store.read(lambda c: c.execute(
            "SELECT run_lease_claim(?, ?, ?)", (run_id, self.owner, self.lease_s)).fetchone()[0])
        if not ours:
            log.debug("run %s is another runner's", run_id)
        return bool(ours)

    def fence(self, run_id: str) -> Statement | None:
        return ("SELECT run_lease_check(?, ?, ?)", (run_id, self.owner, self.lease_s))

    def release(self, run_id: str) -> Statement | None:
        return ("DELETE FROM run_leases WHERE run_id = ? AND owner = ?", (run_id, self.owner))

    def orphans(self) -> list[str]:
        return [r[0] for r in self.store.read(lambda c: c.execute(_ORPHANS).fetchall())]

    def renew(self) -> int:
        """Push back the expiry of every lease this runner holds and is not writing now."""
        return int(self.store.read(lambda c: c.execute(
            "UPDATE run_leases SET expires_at = extract(epoch FROM clock_timestamp()) + ?"
            " WHERE run_id IN (SELECT run_id FROM run_leases WHERE owner = ?"
            " FOR UPDATE SKIP LOCKED)", (self.lease_s, self.owner)).rowcount))

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("lease renewal failed: %s", exc)

    def close(self) -> None:
        """Stop renewing and hand every lease back, so other runners take over at once."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(5)
        try:
            self.store.read(lambda c: c.execute("DELETE FROM run_leases WHERE owner = ?",
                                                (self.owner,)))
        except Exception as exc:  # noqa: BLE001 - they expire anyway
            log.warning("could not hand the leases back (they expire in %.0fs): %s",
                        self.lease_s, exc)


__all__ = ["LEASE_S", "RunLeases", "lease_seconds", "runner_id"]
