"""Keep Python's cyclic garbage collector away from the conversation state.

A profile holds up to millions of message objects for days. CPython's full collections
traverse every tracked object, so with a large state each one stalls the event loop for
seconds, and webhook acknowledgements wait behind it. The state forms no reference cycles
(refcounting frees what retention and the message cap drop), so there is nothing for the
collector to find there: after loading, and again after each snapshot, everything alive is
moved to the permanent generation (`gc.freeze`) and later collections only look at objects
created since. Young garbage is collected first (cheap: only objects created since the last
collection). What a freeze cannot tell from state is a cycle still in use at that moment
that dies later (measured: the transports of connections open at the time, a few KB each):
it is never collected. Settling only at snapshots (every five minutes) keeps that to the
connections open at those moments.

Between two snapshots traffic adds objects of its own (messages, replies, the conversations
it decodes), and each full collection walks all of them: 65-75 ms after 20 s of heavy load.
So whatever survives a full collection is frozen too, right after it (`install`): the next
one walks only what survived since, about ten young collections' worth, a few milliseconds.
The price is the same as above, per full collection instead of per snapshot: cycles alive at
that moment that die later stay (connections open then). Full collections come every
ten or so young ones, so that is as often as traffic allocates, and nothing when idle.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import time

# The longest collection since start, in seconds, per generation (for /metrics: the loop
# watch shows stalls, this says which of them were the collector's).
longest = [0.0, 0.0, 0.0]
# The recent collections over LONG seconds, as (monotonic end, seconds, generation): the
# stall log (bridge/ops/stalltrace.py) names those that fell within a stall.
LONG = 0.005
recent: collections.deque[tuple[float, float, int]] = collections.deque(maxlen=32)
_started = 0.0


def settle(*, collect: bool = True) -> None:
    """Collect young cycles (unless `collect` is False: nothing was collectable), then freeze
    every object alive now."""
    if collect:
        gc.collect(1)
    gc.freeze()
    install()


def install() -> None:
    """Freeze what survives each full collection from now on (idempotent)."""
    if _after_collection not in gc.callbacks:
        gc.callbacks.append(_after_collection)


def uninstall() -> None:
    """Stop freezing and give every frozen object back to the collector: for a process that
    ran a bridge and goes on without one (the test suite, where frozen objects would hide
    referrers from `gc.get_referrers`, which Hypothesis relies on)."""
    with contextlib.suppress(ValueError):
        gc.callbacks.remove(_after_collection)
    gc.unfreeze()


def _after_collection(phase: str, info: dict[str, int]) -> None:
    global _started
    if phase == "start":
        _started = time.monotonic()
        return
    generation = info.get("generation", 0)
    ended = time.monotonic()
    took = ended - _started
    longest[generation] = max(longest[generation], took)
    if took > LONG:
        recent.append((ended, took, generation))
    if generation == 2:
        gc.freeze()


def frozen() -> int:
    """Objects hidden from the collector so far (for metrics and tests)."""
    return gc.get_freeze_count()
