"""The seen-set: message ids already recorded, kept past Meta's redelivery horizon.

Meta redelivers an unacknowledged delivery for up to 7 days, so every inbound wamid is
remembered for 8 (`SEEN_TTL_MS`) from the time we received it. At a few hundred thousand ids
a day the set holds millions, and anything that walks it in one go (pruning, copying it for a
snapshot) stalls the event loop in proportion: 19 ms at 1.25 million ids.

So the ids live in one dict (one lookup per message: id -> receive time), and besides it in
per-day buckets: the ids received on each UTC day, in order. Pruning drops whole days (an id
is forgotten between 8 and 9 days after it came, never earlier) and deletes their ids from the
dict in steps of `STEP` (`prune_steps`, a generator the caller yields to the loop between);
a snapshot cuts its frames from the buckets in steps of the same size (`frames`). No step
grows with the set. A bucket is append-only, so a step can pick up where the last one ended
while ids keep coming; an id erased meanwhile is simply no longer in the dict and skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

SEEN_TTL_MS = 8 * 24 * 3600 * 1000
DAY_MS = 24 * 3600 * 1000
STEP = 20_000  # ids per step: about 2 ms of work


class SeenSet:
    """Message id -> receive time (ms), with per-day buckets for bounded pruning."""

    __slots__ = ("_days", "_times")

    def __init__(self) -> None:
        self._times: dict[str, int] = {}
        self._days: dict[int, list[str]] = {}

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._times

    def __len__(self) -> int:
        return len(self._times)

    def __iter__(self) -> Iterator[str]:
        return iter(self._times)

    def __getitem__(self, message_id: str) -> int:
        return self._times[message_id]

    def keys(self) -> Iterable[str]:
        return self._times.keys()

    def items(self) -> Iterable[tuple[str, int]]:
        return self._times.items()

    def get(self, message_id: str) -> int | None:
        return self._times.get(message_id)

    def add(self, message_id: str, at_ms: int) -> None:
        """Remember `message_id` as received at `at_ms`, unless it is already known: the first
        receipt counts, whichever day's bucket holds it."""
        if message_id not in self._times:
            self._times[message_id] = at_ms
            self._bucket(at_ms // DAY_MS).append(message_id)

    def setdefault(self, message_id: str, at_ms: int) -> int:
        """`add`, answering the receive time kept (as a dict's `setdefault`)."""
        self.add(message_id, at_ms)
        return self._times[message_id]

    def _bucket(self, day: int) -> list[str]:
        bucket = self._days.get(day)
        if bucket is None:
            bucket = self._days[day] = []
        return bucket

    def pop(self, message_id: str) -> int | None:
        """Forget an id (its bucket keeps the name until the day is pruned; it is skipped)."""
        return self._times.pop(message_id, None)

    def update(self, times: Mapping[str, int]) -> None:
        """Add ids with their receive times (a snapshot's frame: usually all of one day)."""
        if not times:
            return
        values = times.values()
        first, last = min(values) // DAY_MS, max(values) // DAY_MS
        known = self._times
        if first == last and not any(k in known for k in times):
            known.update(times)
            self._bucket(first).extend(times)
            return
        for message_id, at_ms in times.items():
            self.add(message_id, at_ms)

    def prune_steps(self, now_ms: int) -> Iterator[int]:
        """Forget the days received before the horizon, `STEP` ids at a time; yields after each
        step how many ids it dropped (the caller lets the event loop in between)."""
        cutoff = now_ms - SEEN_TTL_MS
        for day in sorted(d for d in self._days if (d + 1) * DAY_MS <= cutoff):
            bucket = self._days[day]
            times = self._times
            for start in range(0, len(bucket), STEP):
                dropped = 0
                for message_id in bucket[start : start + STEP]:
                    at = times.get(message_id)
                    if at is not None and at < cutoff:
                        del times[message_id]
                        dropped += 1
                yield dropped
            del self._days[day]

    def prune(self, now_ms: int) -> int:
        """`prune_steps` in one go (tools, tests); returns how many ids were dropped."""
        return sum(self.prune_steps(now_ms))

    def frames(self) -> Iterator[dict[str, int]]:
        """The ids with their times, oldest day first, `STEP` ids per dict: for a snapshot,
        which yields to the event loop between two."""
        for day in sorted(self._days):
            bucket = self._days.get(day)
            start = 0
            while bucket is not None and start < len(bucket):
                times = self._times
                chunk = {}
                for message_id in bucket[start : start + STEP]:
                    at = times.get(message_id)
                    if at is not None:
                        chunk[message_id] = at
                start += STEP
                if chunk:
                    yield chunk
                bucket = self._days.get(day)  # pruned meanwhile: nothing more to write

    def days(self) -> dict[int, int]:
        """Ids per bucket (UTC day number): for tests and diagnostics."""
        return {day: len(bucket) for day, bucket in sorted(self._days.items())}
