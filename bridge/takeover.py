"""Replicas: answer and send what a replica that went away left behind.

A replica acknowledges a message, then answers it; if it is killed in between, or while its
reply waits in its outbox, nobody else would. Every replica therefore sweeps, every
`interval` seconds: the conversations whose last user message is still owed an answer
(older than `grace`, so the replica that received it has had its chance) and the queued
replies nobody here is sending. It takes each such conversation only if no live replica
owns it (bridge/store/pg/locks.py: the dead one's locks went with its connection), and then
hands it to its own replier or outbox, which check again under the lock.

Candidates come from the records the store applies (any replica's), not from a scan of
every conversation: a sweep costs what changed, not the size of the profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

from bridge.conversations import Conversation, Message
from bridge.errors import BridgeError
from bridge.ops.logs import get_logger, mask
from bridge.outbox import Outbox
from bridge.records import MessageAdded, Record
from bridge.replies import Replier
from bridge.store.base import Store

INTERVAL = 1.0
# How long queued replies must stay unowned before another replica sends them (seconds).
OUTBOX_GRACE = 3.0


class Takeover:
    """The sweep of one profile on one replica."""

    def __init__(
        self,
        store: Store,
        replier: Replier,
        outbox: Outbox,
        owed: Callable[[Conversation, int], Message | None],
        *,
        profile: str,
        grace: float = 1.0,
        outbox_grace: float = OUTBOX_GRACE,
        interval: float = INTERVAL,
    ) -> None:
        self._store = store
        self._replier = replier
        self._outbox = outbox
        self._owed = owed
        self._grace_ms = int(grace * 1000)
        self._interval = interval
        # Conversations that got a user message since they were last found answered.
        self._watch: set[str] = set(store.state.conversations)
        # The state those came from: a store that reloads (a restore, or a replica that fell
        # behind compaction) replaces it, and then every conversation is a candidate again.
        self._state = store.state
        # Conversations with queued replies nobody owned, since when (ms).
        self._orphaned: dict[str, float] = {}
        self._outbox_grace_ms = int(outbox_grace * 1000)
        self._task: asyncio.Task[None] | None = None
        self._log = get_logger(profile=profile)
        store.add_listener(self._seen)

    def _seen(self, records: Sequence[Record]) -> None:
        for record in records:
            if isinstance(record, MessageAdded) and record.message.role == "user":
                self._watch.add(record.key)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="takeover")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except BridgeError as exc:  # the database is away: next time
                self._log.debug("takeover_sweep_failed", error=str(exc))

    async def sweep(self) -> int:
        """One pass; returns how many conversations it took over."""
        taken = 0
        state = self._store.state
        if state is not self._state:
            self._state = state
            self._watch.update(state.conversations)
        owner = self._store.ownership
        now_ms = int(time.time() * 1000)
        for key in list(self._watch):
            resolved = state.resolve(key)
            conv = state.conversations.get(resolved)
            message = self._owed(conv, now_ms) if conv is not None else None
            if conv is None or message is None:
                self._watch.discard(key)
                continue
            if (
                self._replier.busy_with(resolved)
                or now_ms - (conv.last_user_message or 0) < self._grace_ms
            ):
                continue
            if not await owner.acquire(resolved):
                continue  # a live replica answers it
            try:
                await self._store.refresh()
                state = self._store.state  # taken afresh: a refresh may have reloaded it
                conv = state.conversations.get(resolved)
                message = self._owed(conv, now_ms) if conv is not None else None
                if message is not None and message.id and not self._replier.busy_with(resolved):
                    self._log.info("reply_taken_over", key=mask(resolved), message_id=message.id)
                    self._replier.enqueue(resolved, message.id, resolved)
                    taken += 1
                self._watch.discard(key)
            finally:
                await owner.release(resolved)
        orphans: dict[str, float] = {}
        for key in self._store.state.outbox_keys():
            if self._outbox.busy_with(key) or not await owner.acquire(key):
                continue
            try:
                # Unowned for a while, not just now: a replica that lost its connection
                # (the database restarted) may have sent a reply and still be retrying to
                # record that; sending it again at once would send it twice.
                since = self._orphaned.get(key, now_ms)
                orphans[key] = since
                if now_ms - since >= self._outbox_grace_ms:
                    self._log.info("outbox_taken_over", key=mask(key))
                    self._outbox.take_over(key)  # unsure: it may have been on the wire
                    taken += 1
            finally:
                await owner.release(key)
        self._orphaned = orphans
        return taken
