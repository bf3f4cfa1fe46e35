"""Conversation ownership across replicas: session advisory locks on a dedicated connection.

A session-level advisory lock is held until released or until the session ends, and the
database ends it at once when the replica's connection dies (a kill -9 closes its socket),
so another replica can take over a conversation within seconds of its owner's death. The
locks are held on a connection of their own, never a pooled one: asyncpg's pool runs
`pg_advisory_unlock_all()` when a connection goes back to it (and PgBouncer's transaction
mode would hand the session to others: point replicas at PostgreSQL itself, or a session
pool). The lock id is a keyed hash of the conversation key, so `pg_locks` shows no phone
number; a collision of two conversations only serialises them. The hash key is the
profile's stored secret (secrets.py), the same on every replica whatever order they hold the
profile keys in: two replicas must never hold one conversation under two lock ids.

Losing the connection loses every lock: they are forgotten here too, and the replies under
way may overlap with another replica's for a moment. So a lock orders the work but does not
fence it: a reply is recorded only if no other went into its conversation meanwhile
(`Store.commit_if`, bridge/replies.py), and a send checks `still_holds` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import struct
from typing import Any

import asyncpg

from bridge.ops.logs import get_logger, mask
from bridge.ownership import Ownership

_INFO = b"whatsapp-bridge conversation lock v1"
CONNECT_TIMEOUT = 5.0


def legacy_lock_key(oldest_key: bytes, profile: str) -> bytes:
    """The lock hash key earlier versions derived from the last configured key."""
    return hmac.new(oldest_key, _INFO + profile.encode(), hashlib.sha256).digest()


class ConversationLocks(Ownership):
    """`acquire` is `pg_try_advisory_lock` (never waits: the one connection serves every
    conversation); re-entrant within this process by counting."""

    shared = True

    def __init__(self, database_url: str, profile: str, lock_key: bytes) -> None:
        self._url = database_url
        self._profile = profile
        self._key = lock_key
        self._conn: Any = None
        self._io = asyncio.Lock()
        self._held: dict[str, int] = {}
        self._log = get_logger(profile=profile)
        # Whether the last attempt to reach the database failed: an outage is said once,
        # not once per conversation the sweeps try meanwhile.
        self._failing = False

    def _lock_id(self, key: str) -> int:
        digest = hmac.new(self._key, key.encode(), hashlib.sha256).digest()
        return int(struct.unpack(">q", digest[:8])[0])

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            if self._conn is not None:
                # The session ended: the database released every lock it held.
                self._log.warning("conversation_locks_lost", held=len(self._held))
                self._held.clear()
                self._conn.terminate()  # its socket is dead; the object must still let go
                self._conn = None
            self._conn = await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT)
        return self._conn

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    async def acquire(self, key: str) -> bool:
        async with self._io:
            try:
                conn = await self._connection()
                if key in self._held:
                    self._held[key] += 1
                    return True
                taken = bool(
                    await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_id(key))
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                if not self._failing:
                    self._failing = True
                    self._log.warning("conversation_lock_failed", key=mask(key), error=str(exc))
                return False
            if self._failing:
                self._failing = False
                self._log.info("conversation_locks_available_again")
            if taken:
                self._held[key] = 1
            return taken

    async def still_holds(self, key: str) -> bool:
        if key in self._held and self._conn is not None and not self._conn.is_closed():
            return True
        self._log.warning("conversation_lock_lost", key=mask(key))
        return False

    async def release(self, key: str) -> None:
        async with self._io:
            count = self._held.get(key)
            if count is None:
                return  # lost with the connection meanwhile
            if count > 1:
                self._held[key] = count - 1
                return
            del self._held[key]
            with contextlib.suppress(
                OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError
            ):
                if self._conn is not None and not self._conn.is_closed():
                    await self._conn.execute("SELECT pg_advisory_unlock($1)", self._lock_id(key))

    async def close(self) -> None:
        async with self._io:
            self._held.clear()
            if self._conn is not None:
                with contextlib.suppress(
                    OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError
                ):
                    await asyncio.wait_for(self._conn.close(), 5)
                self._conn = None
