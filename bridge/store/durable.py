"""The durable store: journal + snapshots, encrypted, one owning process per profile.

`commit` returns once the records are fsynced in the journal and applied to memory, so the
webhook acknowledges only what a `kill -9` cannot take back. Start-up loads the snapshot and
replays the journal after it. `load_state` reads the same files without the lock and without
writing, for the admin tool while the bridge runs.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Sequence

from bridge.config import ProfileConfig
from bridge.errors import BridgeError, CorruptStateError, StorageError
from bridge.logs import get_logger
from bridge.persistence import layout
from bridge.persistence.crypto import Keyring
from bridge.persistence.journal import Journal, list_segments, read_segment, segment_path
from bridge.persistence.keys import load_keyring
from bridge.persistence.lock import ProfileLock
from bridge.persistence.snapshot import Progress, read_snapshot, write_snapshot
from bridge.records import ConversationDeleted, Record, decode, encode
from bridge.state import State
from bridge.store.base import Store

DAY_MS = 24 * 3600 * 1000


def replay(
    profile: ProfileConfig, keyring: Keyring, state: State, strict_start: bool
) -> tuple[int, int]:
    """Load snapshot + journal into `state`; returns (last segment, its valid size).

    `strict_start`: the segment the snapshot names must exist (a reader racing a snapshot
    that just deleted it retries instead of silently missing its records).
    """
    snapshot = layout.snapshot_path(profile.state_dir)
    first = read_snapshot(snapshot, keyring, profile.slug, state) if snapshot.exists() else 0
    directory = layout.journal_dir(profile.state_dir)
    segments = [s for s in list_segments(directory) if s >= first]
    if strict_start and first and (not segments or segments[0] != first):
        raise FileNotFoundError(segment_path(directory, first))
    last, size = (first or 1), 0
    previous_seq = 0
    for i, segment in enumerate(segments):
        path = segment_path(directory, segment)
        payloads, size = read_segment(path, keyring, profile.slug, segment, i == len(segments) - 1)
        for payload in payloads:
            try:
                seq, record = decode(payload)
            except (KeyError, TypeError, ValueError) as exc:
                raise CorruptStateError(f"{path}: malformed record ({exc!r})") from None
            if seq <= previous_seq:
                raise CorruptStateError(f"{path}: records out of order (seq {seq})")
            previous_seq = seq
            state.apply(seq, record)
        last = segment
    return last, size


def load_state(profile: ProfileConfig, attempts: int = 5) -> State:
    """The profile's current state, read-only: no lock taken, nothing written."""
    keyring = load_keyring(profile, create=False)
    for attempt in range(attempts):
        state = State(profile.max_messages)
        try:
            replay(profile, keyring, state, strict_start=True)
        except FileNotFoundError:
            # The running bridge replaced the snapshot and dropped a segment meanwhile.
            if attempt == attempts - 1:
                raise BridgeError(
                    f"profile {profile.slug!r}: store kept changing while read"
                ) from None
            time.sleep(0.05)
            continue
        return state
    raise AssertionError("unreachable")


class DurableStore(Store):
    def __init__(self, profile: ProfileConfig) -> None:
        super().__init__(State(profile.max_messages))
        self.profile = profile
        self._lock = ProfileLock(profile.state_dir, profile.slug)
        self._journal: Journal | None = None
        self._keyring: Keyring | None = None
        self._snapshotting = asyncio.Lock()
        self._next_seq = 1
        self._log = get_logger(profile=profile.slug)

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            raise BridgeError(f"profile {self.profile.slug!r}: store is not open")
        return self._journal

    async def open(self) -> None:
        layout.create_profile_dir(self.profile.state_dir)
        self._lock.acquire()
        try:
            self._keyring = load_keyring(self.profile, create=True)
            started = time.monotonic()
            # Loading allocates millions of objects, each batch triggering collections that
            # traverse all the earlier ones; none of them form cycles.
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                segment, size = replay(self.profile, self._keyring, self.state, strict_start=False)
            finally:
                if gc_was_enabled:
                    gc.enable()
            journal = Journal(
                layout.journal_dir(self.profile.state_dir), self._keyring, self.profile.slug
            )
            journal.start(segment, size)
        except BaseException:
            self._lock.release()
            raise
        self._journal = journal
        self._next_seq = self.state.seq + 1
        self._log.info(
            "store_opened",
            segment=segment,
            seconds=round(time.monotonic() - started, 3),
            conversations=len(self.state.conversations),
        )

    async def rekey(self, keyring: Keyring, progress: Progress | None = None) -> None:
        """Re-encrypt everything under `keyring`'s active key: a snapshot under the new key
        replaces the old one and the journal continues in a new segment under it."""
        self._keyring = keyring
        self.journal.use_keyring(keyring)
        await self.snapshot(progress)

    async def commit(self, records: Sequence[Record]) -> None:
        if not records:
            return
        first = self._next_seq
        self._next_seq += len(records)
        payloads = [encode(first + i, r) for i, r in enumerate(records)]
        state = self.state

        def apply() -> None:
            for i, record in enumerate(records):
                state.apply(first + i, record)

        await self.journal.append(payloads, apply)

    async def snapshot(self, progress: Progress | None = None) -> None:
        """Retention, then a fuzzy snapshot; older journal segments go once it is durable."""
        async with self._snapshotting:
            started = time.monotonic()
            now_ms = int(time.time() * 1000)
            expired = self.state.expired_keys(now_ms, self.profile.retention_days * DAY_MS)
            if expired:
                await self.commit([ConversationDeleted(k) for k in expired])
                self._log.info("retention_pruned", conversations=len(expired))
            self.state.prune_seen(now_ms)
            segment = await self.journal.rotate()
            assert self._keyring is not None
            # Slicing keeps each step short, but a full GC triggered by the many short-lived
            # dicts would traverse the whole state at once; nothing here makes cycles.
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                size = await write_snapshot(
                    layout.snapshot_path(self.profile.state_dir),
                    self.state,
                    self._keyring,
                    self.profile.slug,
                    segment,
                    progress,
                )
            except OSError as exc:
                raise StorageError(f"snapshot failed: {exc.strerror or exc}") from None
            finally:
                if gc_was_enabled:
                    gc.enable()
            dropped = self.journal.drop_before(segment)
            self._log.info(
                "snapshot_written",
                conversations=len(self.state.conversations),
                messages=self.state.message_count(),
                bytes=size,
                segments_dropped=dropped,
                seconds=round(time.monotonic() - started, 3),
            )

    async def close(self) -> None:
        if self._journal is None:
            return
        try:
            await self.snapshot()
        except BridgeError as exc:
            # The journal still holds everything; the next start replays it.
            self._log.error("final_snapshot_failed", error=str(exc))
        finally:
            await self._journal.close()
            self._journal = None
            self._lock.release()
