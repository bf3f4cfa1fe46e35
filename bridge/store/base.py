"""The store interface: the webhook, replier and outbox change state only through `commit`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from bridge.ops.logs import get_logger
from bridge.ownership import SOLE, Ownership
from bridge.records import Record
from bridge.state import State

DAY_MS = 24 * 3600 * 1000


class Store(ABC):
    """Owns one profile's `State`; `commit` makes records durable, then applies them.

    Readers use `state` directly (it is only ever changed on the event loop, between awaits);
    writers must go through `commit` so nothing reaches memory that is not also durable.
    """

    def __init__(self, state: State) -> None:
        self.state = state
        # Who may produce and send each conversation's replies (bridge/ownership.py).
        self.ownership: Ownership = SOLE
        self._listeners: list[Callable[[Sequence[Record]], None]] = []
        self._followers: list[Callable[[Sequence[Record]], None]] = []

    def add_listener(self, callback: Callable[[Sequence[Record]], None]) -> None:
        """Call `callback(records)` after every commit, once its records are durable and
        applied: for what lives outside the store and must follow it (the media files of an
        erased conversation are deleted only once the erasure cannot be taken back)."""
        self._listeners.append(callback)

    def add_follower(self, callback: Callable[[Sequence[Record]], None]) -> None:
        """Call `callback(records)` for records another process committed (a replica's,
        brought in by a shared store), after the listeners: what this process did not
        do itself, and cannot know more of than the records say."""
        self._followers.append(callback)

    def _committed(self, records: Sequence[Record], *, others: bool = False) -> None:
        for callback in [*self._listeners, *(self._followers if others else ())]:
            try:
                callback(records)
            except Exception as exc:  # the commit itself succeeded: never report otherwise
                get_logger().error("commit_listener_failed", exc_info=exc)

    async def open(self) -> None:
        """Load what a previous run left; called once before serving."""

    async def close(self) -> None:
        """Flush and release; called once at shutdown, after the last commit."""

    @abstractmethod
    async def commit(self, records: Sequence[Record]) -> None:
        """Make `records` durable, then apply them in order; StorageError if that failed."""

    async def commit_new(self, records: Sequence[Record]) -> frozenset[str]:
        """`commit`, for a store that other processes write too (PostgresStore): user
        messages whose id the store already holds (another replica recorded them) are left
        out, and their ids returned, with the reaction that directly follows each (a
        keyword's mode change and automatic reply: bridge/keywords.py). A store with one
        writer has none: the Ingestor deduplicates in memory before committing."""
        await self.commit(records)
        return frozenset()

    async def refresh(self) -> None:
        """Bring `state` up to what other processes committed (nothing to do with one
        writer)."""

    async def commit_effective(self, records: Sequence[Record]) -> int:
        """Commit `records` but those that would change nothing (`State.changes`), where
        that is certain; returns how many were committed (durable and applied). For status
        webhooks: most report a state the reply is already at or name a message that is not
        ours, and a record that changes nothing need not cost a journal write. Here commits
        apply at once, so the state they are checked against is the one they would meet."""
        records = [r for r in records if self.state.changes(r)]
        await self.commit(records)
        return len(records)

    async def commit_decided(self, decide: Callable[[State], Sequence[Record]]) -> Sequence[Record]:
        """Commit the records `decide` makes of the state with every earlier commit applied
        (an operator's write on a live store: see DurableStore); returns them once durable
        and applied. Here commits apply at once, so the state is always settled."""
        records = tuple(decide(self.state))
        await self.commit(records)
        return records

    async def commit_if(
        self, records: Sequence[Record], unchanged: Callable[[State], bool]
    ) -> bool:
        """Commit `records` only if `unchanged(state)` holds on the state with every earlier
        commit applied, by any process; returns whether they were committed. For a write
        decided on what was read a while ago (a reply, decided while the assistant thought):
        with replicas, another may have committed what makes it wrong meanwhile, even one
        that held the conversation's lock (a lock goes with its connection, and the owner
        learns so only later)."""
        records = tuple(records)
        return bool(await self.commit_decided(lambda state: records if unchanged(state) else ()))

    async def snapshot(self) -> None:
        """Write a full snapshot now (a no-op where nothing is on disk)."""

    async def expire_by_retention(self, now_ms: int, enforce: bool) -> int:
        """Erase the conversations idle longer than the stored retention; returns how many.
        Only the service expires (`enforce`; sessions-admin's `prune` is explicit). Decided
        from memory, applied in commit order: each erasure is bounded to the messages seen
        now, so one being acknowledged meanwhile is not erased with them."""
        settings = self.state.settings
        if not enforce or settings is None:
            return 0
        expired = self.state.expired(now_ms, settings.retention_days * DAY_MS)
        if expired:
            await self.commit(expired)
        return len(expired)

    def _apply(self, records: Sequence[Record]) -> None:
        for record in records:
            self.state.apply(self.state.seq + 1, record)
