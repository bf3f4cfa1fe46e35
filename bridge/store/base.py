"""The store interface: the webhook, replier and outbox change state only through `commit`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from bridge.logs import get_logger
from bridge.records import Record
from bridge.state import State


class Store(ABC):
    """Owns one profile's `State`; `commit` makes records durable, then applies them.

    Readers use `state` directly (it is only ever changed on the event loop, between awaits);
    writers must go through `commit` so nothing reaches memory that is not also durable.
    """

    def __init__(self, state: State) -> None:
        self.state = state
        self._listeners: list[Callable[[Sequence[Record]], None]] = []

    def add_listener(self, callback: Callable[[Sequence[Record]], None]) -> None:
        """Call `callback(records)` after every commit, once its records are durable and
        applied: for what lives outside the store and must follow it (the media files of an
        erased conversation are deleted only once the erasure cannot be taken back)."""
        self._listeners.append(callback)

    def _committed(self, records: Sequence[Record]) -> None:
        for callback in self._listeners:
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

    async def snapshot(self) -> None:
        """Write a full snapshot now (a no-op where nothing is on disk)."""

    def _apply(self, records: Sequence[Record]) -> None:
        for record in records:
            self.state.apply(self.state.seq + 1, record)
