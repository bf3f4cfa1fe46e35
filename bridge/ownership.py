"""Who produces and sends a conversation's replies.

With one process per profile (the file store) that process owns every conversation. With
replicas sharing a profile (the PostgreSQL store) each conversation is owned by at most one
replica at a time, which is what keeps replies one per message and in order: the replier
holds a conversation while it decides and records a reply, the outbox while it sends. An
owner that dies loses its conversations at once (bridge/store/pg/locks.py).
"""

from __future__ import annotations


class Ownership:
    """The sole owner: every conversation is this process's."""

    shared = False  # True where other processes may own conversations

    async def acquire(self, key: str) -> bool:
        """Take conversation `key` (re-entrant: each success needs its `release`); False if
        another process holds it now."""
        return True

    async def still_holds(self, key: str) -> bool:
        """Whether this process still holds `key` (taken before): before each irreversible
        step, since a lock can be lost with its connection. A lost lock is not taken again
        here, even if it is free: another process may have owned the conversation meanwhile,
        and what it did is known only after a new `acquire` and a refresh of the store."""
        return True

    async def release(self, key: str) -> None:
        """Give back one `acquire` of `key`."""

    async def close(self) -> None:
        """Give back everything (at shutdown)."""


SOLE = Ownership()
