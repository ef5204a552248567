"""The device's batches in flight on one stream, and the rules an ack applies to them.

Pure bookkeeping (no I/O): the publisher records what it sent, and asks what an ack
means. An ack counts only if it names (by digest) a batch in flight; it then clears records
up to the cloud's watermark, but never past the highest seq the device has sent.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class Flight:
    first: int
    last: int
    digest: str
    sent_at: float
    answered: bool = False
    chunk: int | None = None  # the piece's index, for a chunk of one record


@dataclass
class Window:
    flights: list[Flight] = field(default_factory=list)
    next_seq: int | None = None  # the next seq to send new; None: after the watermark
    partial: int | None = None  # the next piece of the record at next_seq, when chunked
    high: int = 0  # the highest seq sent in full since the window was last reset
    progress_at: float = 0.0  # when an ack last answered (or the window started)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=256))

    def sent(self, flight: Flight, *, complete_through: int | None) -> None:
        if not self.flights:
            self.progress_at = flight.sent_at
        self.flights.append(flight)
        if complete_through is not None:
            self.high = max(self.high, complete_through)

    def answer(self, digest: str, watermark: int
               ) -> tuple[Literal["ok", "duplicate", "unknown"], int]:
        """What an ack for `digest` carrying `watermark` means: ok and how far the device may
        clear; duplicate (a batch already cleared); unknown (no such batch: ignore)."""
        flight = next((f for f in self.flights if f.digest == digest), None) if digest \
            else None
        if flight is None:
            return ("duplicate" if digest and digest in self.recent else "unknown"), 0
        flight.answered = True
        return "ok", min(watermark, self.high)

    def busy(self) -> int:
        """The flights counted against the window: those no ack has answered yet (the
        answered ones wait only for a hole below them to fill)."""
        return sum(not f.answered for f in self.flights)

    def cleared(self, watermark: int, now: float) -> None:
        """Drop the flights the watermark covers (after an ack answered one)."""
        keep = []
        for f in self.flights:
            if f.last <= watermark:
                self.recent.append(f.digest)
            else:
                keep.append(f)
        self.flights = keep
        self.progress_at = now

    def overdue(self, now: float, timeout: float) -> list[Flight]:
        """Unanswered flights older than the timeout (lost on the way, or their ack was)."""
        return [f for f in self.flights if not f.answered and now - f.sent_at > timeout]

    def stalled(self, now: float, timeout: float) -> bool:
        """Every flight answered, yet none cleared and no ack for a timeout: the cloud lacks
        something below them that no flight covers."""
        return bool(self.flights) and all(f.answered for f in self.flights) and \
            now - self.progress_at > timeout

    def reset(self) -> None:
        self.flights, self.next_seq, self.partial, self.high = [], None, None, 0
