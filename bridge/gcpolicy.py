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
"""

from __future__ import annotations

import gc


def settle(*, collect: bool = True) -> None:
    """Collect young cycles (unless `collect` is False: nothing was collectable), then freeze
    every object alive now."""
    if collect:
        gc.collect(1)
    gc.freeze()


def frozen() -> int:
    """Objects hidden from the collector so far (for metrics and tests)."""
    return gc.get_freeze_count()
