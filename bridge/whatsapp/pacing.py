"""WhatsApp's pair rate limit: how fast one business number may write to one user.

Meta allows about one message every six seconds to the same user, with short bursts above
that; past it a send fails with 131056 ((business account, consumer account) pair rate
limit hit). A long reply split into parts, or replies to a user who writes fast, would run
into it, so each recipient gets a token bucket: `burst` messages at once, then one per
`interval`. A 131056 empties the recipient's bucket, so the retry waits out a whole
interval instead of hammering Meta.
"""

from __future__ import annotations

import asyncio
import time

PAIR_INTERVAL = 6.0  # seconds per message to one user, sustained
PAIR_BURST = 4  # messages to one user that may go out back to back
_PRUNE_AT = 10_000  # recipients remembered before idle ones are forgotten


class PairPacer:
    """Token buckets per recipient; `wait(to)` returns when one more message may go."""

    def __init__(self, interval: float = PAIR_INTERVAL, burst: int = PAIR_BURST) -> None:
        self._interval = interval
        self._burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # to -> (tokens, as of monotonic)
        # Pruning walks every bucket, so it runs only once the table has doubled since the
        # last prune: with more recipients active than _PRUNE_AT (a busy number), pruning at
        # every send walked them all each time (a fifth of the bridge's CPU under load).
        self._prune_at = _PRUNE_AT

    def _tokens(self, to: str, now: float) -> float:
        tokens, since = self._buckets.get(to, (self._burst, now))
        return min(self._burst, tokens + (now - since) / self._interval)

    async def wait(self, to: str) -> None:
        while True:
            now = time.monotonic()
            tokens = self._tokens(to, now)
            if tokens >= 1.0:
                self._buckets[to] = (tokens - 1.0, now)
                self._prune(now)
                return
            await asyncio.sleep((1.0 - tokens) * self._interval)

    def remembered(self) -> int:
        """How many recipients have a bucket (for tests: idle ones are forgotten)."""
        return len(self._buckets)

    def exhaust(self, to: str) -> None:
        """Meta said 131056 for `to`: nothing more to them for a whole interval."""
        self._buckets[to] = (0.0, time.monotonic())

    def _prune(self, now: float) -> None:
        """Forget recipients whose bucket is full again (as good as never seen)."""
        if len(self._buckets) > self._prune_at:
            full = [t for t in self._buckets if self._tokens(t, now) >= self._burst]
            for to in full:
                del self._buckets[to]
            self._prune_at = max(_PRUNE_AT, 2 * len(self._buckets))
