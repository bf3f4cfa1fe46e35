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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bridge.config import ProfileConfig
from bridge.errors import BridgeError, CorruptStateError, StorageError, StorageUnavailableError
from bridge.ops import gcpolicy
from bridge.ops.eventlog import EventLog
from bridge.ops.logs import get_logger
from bridge.persistence import layout
from bridge.persistence.crypto import Keyring
from bridge.persistence.files import remove_stale_temps
from bridge.persistence.journal import Journal, keep_torn_tail, segment_path, set_aside
from bridge.persistence.keys import load_keyring
from bridge.persistence.lock import ProfileLock
from bridge.persistence.segments import (
    Commit,
    JournalDamage,
    JournalEnd,
    MissingSegment,
    replay_journal,
)
from bridge.persistence.snapshot import Progress, SnapshotInfo, read_snapshot, write_snapshot
from bridge.records import (
    OutboxUncertain,
    Record,
    SettingsChanged,
    encode,
    record_from_dict,
    settings_to_dict,
)
from bridge.state import State
from bridge.store.base import Store

ACCEPT_LOSS_ADVICE = (
    "refusing to start; see README 'Damaged journal', or start once with "
    "`bridge serve --accept-data-loss` to set the damaged part aside"
)

__all__ = ["DurableStore", "MissingSegment", "load_state", "replay"]


def replay(
    profile: ProfileConfig,
    keyring: Keyring,
    state: State,
    accept_loss: bool = False,
    info: SnapshotInfo | None = None,
) -> JournalEnd:
    """Load snapshot + journal into `state`; returns where appending continues.

    The segments from the one the snapshot names (or from 1, without a snapshot) must all be
    there and chained (segments.py). Each commit is applied whole: the journal holds only
    whole commits, so a crash never leaves half of one. With `accept_loss`, damage stops the
    replay instead of failing it, and the result says what to set aside. `info` receives the
    snapshot's format and sizes.
    """
    snapshot = layout.snapshot_path(profile.state_dir)
    has_snapshot = snapshot.exists()
    first = read_snapshot(snapshot, keyring, profile.slug, state, info) if has_snapshot else 1
    previous_seq = 0

    def apply(path: Path, commits: list[Commit]) -> None:
        nonlocal previous_seq
        for commit in commits:
            try:
                records = [(int(data["q"]), record_from_dict(data)) for data in commit]
            except (KeyError, TypeError, ValueError) as exc:
                raise CorruptStateError(f"{path}: malformed record ({exc!r})") from None
            for seq, record in records:
                if seq <= previous_seq:
                    raise CorruptStateError(f"{path}: records out of order (seq {seq})")
                previous_seq = seq
                try:
                    state.apply(seq, record)
                except Exception as exc:
                    raise CorruptStateError(
                        f"{path}: record seq {seq} cannot be applied ({exc!r})"
                    ) from None

    return replay_journal(
        layout.journal_dir(profile.state_dir),
        keyring,
        profile.slug,
        first,
        f"after {snapshot.name}" if has_snapshot else None,
        apply,
        accept_loss,
    )


def load_state(
    profile: ProfileConfig, attempts: int = 5, info: SnapshotInfo | None = None
) -> State:
    """The profile's current state, read-only: no lock taken, nothing written.

    Safe while the bridge runs: a record being appended right now is a torn tail and left
    out; a snapshot replaced or a segment rotated between two reads makes it start over. The
    cap and retention are the store's own (stored with the data), never `profile`'s."""
    keyring = load_keyring(profile, create=False)
    for attempt in range(attempts):
        state = State()
        try:
            replay(profile, keyring, state, info=info)
        except (FileNotFoundError, JournalDamage) as exc:
            if attempt == attempts - 1:
                if isinstance(exc, JournalDamage):
                    raise
                raise BridgeError(
                    f"profile {profile.slug!r}: store kept changing while read"
                ) from None
            time.sleep(0.05)
            continue
        except CorruptStateError:
            # A live rotate-key between reading the keys and reading the files: they are
            # sealed under a key newer than the keyring read. With the keys read again it
            # starts over; real damage stays damage and is reported as such.
            fresh = load_keyring(profile, create=False)
            if attempt == attempts - 1 or fresh.key_ids == keyring.key_ids:
                raise
            keyring = fresh
            continue
        return state
    raise AssertionError("unreachable")


@contextmanager
def _writing(path: Path | None) -> Iterator[None]:
    """Turn an OSError at start (full or read-only disk) into one line naming the file."""
    try:
        yield
    except OSError as exc:
        where = path or exc.filename
        raise StorageUnavailableError(f"cannot write {where}: {exc.strerror or exc}") from None


class DurableStore(Store):
    """A profile's state in memory, made durable by an encrypted journal and snapshots.

    `open()` takes the profile lock and loads; `commit()` journals, then applies; `snapshot()`
    checkpoints (retention first); `close()` snapshots and releases the lock.

    The service (`enforce_settings`) is the authority over the store's settings: at open it
    commits its configured cap and retention when the store holds others, and only it
    expires conversations by retention. `sessions-admin` opens the store without it and
    keeps the stored settings whatever its own environment says."""

    def __init__(
        self,
        profile: ProfileConfig,
        accept_data_loss: bool = False,
        *,
        enforce_settings: bool = True,
    ) -> None:
        super().__init__(State())
        self.profile = profile
        self._accept_data_loss = accept_data_loss
        self._enforce_settings = enforce_settings
        self._lock = ProfileLock(profile.state_dir, profile.slug)
        self.events = EventLog(profile.state_dir)
        self._journal: Journal | None = None
        self._keyring: Keyring | None = None
        self._snapshotting = asyncio.Lock()
        # Closed while an operator's write decides (commit_decided): commits wait at it.
        self._gate = asyncio.Event()
        self._gate.set()
        self._deciding = asyncio.Lock()
        # Ids of the keys the data on disk is sealed with (loaded with, or written since).
        self._sealed: set[bytes] = set()
        self._next_seq = 1
        self._log = get_logger(profile=profile.slug)

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            raise StorageError(f"profile {self.profile.slug!r}: store is not open")
        return self._journal

    async def open(self) -> None:
        """Take the lock, load, and get the journal ready to append.

        Damage to the journal refuses the start (JournalDamage, exit 2), unless the store was
        built with `accept_data_loss`: then the damaged part is set aside and logged. A disk
        that cannot be written is one line naming the file (exit 2), never a traceback."""
        state_dir = self.profile.state_dir
        with _writing(None):
            layout.create_profile_dir(state_dir)
        with _writing(layout.lock_path(state_dir)):
            self._lock.acquire()
        if self._lock.previous_unclean:
            # Whoever opens the store first after a crash tells: the next opener finds the
            # lock clean (the crash's consequences are journaled below).
            self.events.record("crashed", crashed_pid=self._lock.previous_pid)
        try:
            with _writing(self.profile.key_file or layout.key_path(state_dir)):
                self._keyring = load_keyring(self.profile, create=True)
            self._remove_stale_temps()
            started = time.monotonic()
            # Loading allocates millions of objects, each batch triggering collections that
            # traverse all the earlier ones; none of them form cycles.
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                end = replay(self.profile, self._keyring, self.state, self._accept_data_loss)
            except JournalDamage as exc:
                raise type(exc)(f"{exc}; {ACCEPT_LOSS_ADVICE}") from None
            finally:
                if gc_was_enabled:
                    gc.enable()
            gcpolicy.settle(collect=False)  # loading makes no garbage, only state
            directory = layout.journal_dir(state_dir)
            path = segment_path(directory, end.segment)
            with _writing(path):
                if end.damage is not None:
                    self._set_aside(end)
                elif end.size > end.valid_size:
                    # A crash in the middle of an append that was never acknowledged.
                    torn, aside = keep_torn_tail(path, end.valid_size)
                    self._log.warning(
                        "journal_torn_tail_cut", file=str(path), bytes=torn, kept=str(aside or "-")
                    )
                journal = Journal(directory, self._keyring, self.profile.slug)
                journal.start(end.segment, end.valid_size)
        except BaseException:
            self._lock.release(clean=False)
            raise
        self._journal = journal
        self._next_seq = self.state.seq + 1
        self._sealed = set(self._keyring.opened) | {self._keyring.active_id}
        try:
            if self._lock.previous_unclean:
                await self._mark_sends_uncertain()
            if self._enforce_settings:
                await self._adopt_configured_settings()
        except BaseException:
            self._journal = None
            try:
                await journal.close()
            finally:
                self._lock.release(clean=False)
            raise
        self._log.info(
            "store_opened",
            segment=end.segment,
            seconds=round(time.monotonic() - started, 3),
            conversations=len(self.state.conversations),
        )

    async def _mark_sends_uncertain(self) -> None:
        """The previous process died: any queued reply may have been on the wire. Say so
        durably, so the outbox asks Meta's status webhooks before sending it again, however
        often we restart."""
        items = [OutboxUncertain(i) for i in self.state.outbox if i not in self.state.uncertain]
        if items:
            await self.commit(items)
            self._log.warning("outbox_sends_uncertain_after_crash", replies=len(items))

    def _remove_stale_temps(self) -> None:
        """Temp files of snapshots and backups whose writer was killed: they would stay
        forever, each as large as the file it was writing."""
        state_dir = self.profile.state_dir
        for directory in (state_dir, layout.journal_dir(state_dir), layout.backups_dir(state_dir)):
            try:
                removed = remove_stale_temps(directory)
            except OSError as exc:  # a read-only disk fails later, with a clearer message
                self._log.warning("stale_temp_cleanup_failed", error=exc.strerror or str(exc))
                continue
            for path, size in removed:
                self._log.info("stale_temp_removed", file=str(path), bytes=size)

    def _set_aside(self, end: JournalEnd) -> None:
        """The operator accepted the loss: move what replay could not use out of the journal
        (each part logged with its file and byte range), never deleting it."""
        directory = layout.journal_dir(self.profile.state_dir)
        self._log.warning("journal_damage_accepted", damage=end.damage)
        # Later segments first: until the damaged one is cut, a crash here changes nothing
        # a second attempt would not redo.
        for part in sorted(end.set_aside, key=lambda p: -p.segment):
            path = segment_path(directory, part.segment)
            size = path.stat().st_size
            aside = set_aside(path, part.offset)
            self._log.warning(
                "journal_set_aside",
                file=str(path),
                from_byte=part.offset,
                to_byte=size,
                kept=str(aside),
            )

    async def _adopt_configured_settings(self) -> None:
        """Make the configured cap and retention the store's, through the journal, so that
        every reader (replay, sessions-admin) applies them from here on. Committed only
        here, before anything else can run, so no snapshot is in progress meanwhile."""
        configured = self.profile.store_settings
        stored = self.state.settings
        if stored == configured:
            return
        before = self.state.message_count()
        await self.commit([SettingsChanged(configured)])
        dropped = before - self.state.message_count()
        (self._log.warning if dropped else self._log.info)(
            "store_settings_changed",
            old=settings_to_dict(stored) if stored is not None else None,
            new=settings_to_dict(configured),
            messages_dropped=dropped,
        )

    @property
    def keyring(self) -> Keyring:
        """The keys in use; `keyring.opened` tells which of them the loaded data needed."""
        if self._keyring is None:
            raise StorageError(f"profile {self.profile.slug!r}: store is not open")
        return self._keyring

    @property
    def sealed_with(self) -> frozenset[bytes]:
        """Ids of the keys that what is on disk is sealed with: those the data was loaded
        with plus the active one, or only the active one after `rekey`."""
        return frozenset(self._sealed)

    async def rekey(self, keyring: Keyring, progress: Progress | None = None) -> None:
        """Re-encrypt everything under `keyring`'s active key: a snapshot under the new key
        replaces the old one and the journal continues in a new segment under it. Works
        while traffic goes on (the running bridge's `rotate-key`): commits sealed before the
        switch are in segments the snapshot makes obsolete."""
        self._keyring = keyring
        self.journal.use_keyring(keyring)
        self._sealed.add(keyring.active_id)
        await self.snapshot(progress)
        self._sealed = {keyring.active_id}

    async def commit(self, records: Sequence[Record]) -> None:
        if not records:
            return
        # The caller's list may change before the batch is applied: a tuple of it is queued.
        records = tuple(records)
        while not self._gate.is_set():  # an operator's write is deciding (commit_decided)
            await self._gate.wait()
        await self._enqueue(records)
        self._committed(records)

    async def commit_effective(self, records: Sequence[Record]) -> int:
        """Leave out the records that would change nothing only while nothing else is on its
        way into memory (no operator's write deciding, nothing queued or being written in the
        journal): then the state they are checked against is exactly the one they would be
        applied to, so a record left out is one whose application would be a no-op. Otherwise
        all of them are committed, as `commit` does."""
        if self._gate.is_set() and self.journal.idle:
            records = [r for r in records if self.state.changes(r)]
        await self.commit(records)
        return len(records)

    async def commit_decided(self, decide: Callable[[State], Sequence[Record]]) -> Sequence[Record]:
        """Commit what `decide` makes of the state with every earlier commit applied.

        For the operator's writes to a live store (delete, import, ...): new commits wait
        while the journal finishes what is queued, `decide` runs on the settled state, and
        its records take the next place in the journal; then the others go on. So a
        deletion takes exactly what was acknowledged before it, and a merge never restores
        a reply that a send just removed from the outbox. Commits wait for about one fsync.
        Returns the records (durable and applied); what `decide` raises, nothing committed.
        """
        async with self._deciding:
            self._gate.clear()
            try:
                await self.journal.settled()
                records = tuple(decide(self.state))
                done = self._enqueue(records) if records else None
            finally:
                self._gate.set()
            if done is not None:
                await done
                self._committed(records)
        return records

    def _enqueue(self, records: tuple[Record, ...]) -> asyncio.Future[None]:
        """Take sequence numbers and a place in the journal now (no await in between)."""
        # Sequence numbers are taken now, in call order, which is also journal order and apply
        # order. A failed batch leaves a gap; gaps are harmless, reuse would not be.
        first = self._next_seq
        self._next_seq += len(records)
        payloads = [encode(first + i, r) for i, r in enumerate(records)]
        state = self.state

        def apply() -> None:
            for i, record in enumerate(records):
                state.apply(first + i, record)

        return self.journal.submit(payloads, apply)

    async def snapshot(self, progress: Progress | None = None) -> None:
        """Retention, then a fuzzy snapshot; older journal segments go once it is durable.
        A failure is in the profile's event log too (the journal still holds everything)."""
        try:
            await self._snapshot(progress)
        except StorageError as exc:
            self.events.record("snapshot_failed", error=str(exc))
            raise

    async def _snapshot(self, progress: Progress | None) -> None:
        async with self._snapshotting:
            started = time.monotonic()
            now_ms = int(time.time() * 1000)
            expired = await self.expire_by_retention(now_ms, self._enforce_settings)
            if expired:
                self._log.info("retention_pruned", conversations=expired)
            for _ in self.state.prune_seen_steps(now_ms):
                await asyncio.sleep(0)  # a step is bounded; let requests in between
            segment = await self.journal.rotate()
            assert self._keyring is not None
            # The collector stays on: with the state frozen (gcpolicy) its collections walk
            # only what traffic made since, while switching it off for the snapshot's length
            # left all of that to one collection at the end (50 ms under heavy load).
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
            gcpolicy.settle()  # the state as of now: out of every later collection's way
            try:
                dropped = await self.journal.drop_before(segment)
            except OSError as exc:
                # Harmless: replay starts at the snapshot's segment; the next snapshot retries.
                dropped = 0
                self._log.warning("journal_drop_failed", error=exc.strerror or str(exc))
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
            await self.snapshot()  # waits for pending commits: they precede its rotation
        except BridgeError as exc:
            # The journal still holds everything; the next start replays it.
            self._log.error("final_snapshot_failed", error=str(exc))
        finally:
            try:
                await self._journal.close()
            finally:
                self._journal = None
                self._lock.release(clean=True)
