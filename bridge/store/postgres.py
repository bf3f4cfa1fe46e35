"""The PostgreSQL store: any number of replicas share a profile through one database.

The database holds the profile's change records (bridge/records.py) as a log in commit
order, sealed with the profile's key (bridge/store/pg/sealing.py). Each replica keeps the
whole `State` in memory as the file store does, built by replaying the log at start and
kept current by following its tail: its own commits bring in every record committed before
them, and a poll brings in the rest. The database is the authority; memory is a cache that
is never ahead of it.

`commit` returns once the transaction holding the records has committed: the webhook's 200
comes after it. Commits waiting together share one transaction (group commit), so the round
trips are paid once per batch. A profile's commits are serialised by the row lock on its
`head` (the last seq handed out), so seq order is commit order and following the tail by
seq misses nothing. Exactly once across replicas: each inbound message id's keyed hash is
inserted with `ON CONFLICT DO NOTHING RETURNING` in the same transaction as its record; a
message whose hash was already there (another replica recorded it) is left out of the commit
and reported to the caller (`commit_new`), never checked first and inserted later.

The database down: commits fail with StorageError (503, Meta retries), the poll keeps
trying, and the pool reconnects by itself when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bridge.config import ProfileConfig
from bridge.errors import (
    BridgeError,
    ConfigError,
    CorruptStateError,
    StorageError,
    StorageUnavailableError,
)
from bridge.ops.logs import get_logger
from bridge.persistence.crypto import DecryptError, Keyring
from bridge.persistence.keys import parse_keys
from bridge.persistence.snapshot import ID_LEN, LENGTH, MAGIC, read_snapshot, write_snapshot
from bridge.records import (
    MessageAdded,
    ModeChanged,
    OutboxQueued,
    Record,
    SettingsChanged,
    decode,
    encode,
    settings_to_dict,
)
from bridge.seen import SEEN_TTL_MS
from bridge.state import State
from bridge.store.base import Store
from bridge.store.pg.locks import ConversationLocks
from bridge.store.pg.schema import current_version, latest_version, migrate
from bridge.store.pg.sealing import MissingKeyError, Sealer, sealed_key_id
from bridge.store.pg.secrets import ProfileSecrets, load_secrets, read_secrets

POLL_SECONDS = 0.5
LOAD_CHUNK = 5000
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 15.0

# What a lost or refused connection raises in asyncpg: the database is unavailable now,
# which is worth a 503 and a retry, never a crash.
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    TimeoutError,
)


def describe_url(url: str) -> str:
    """host:port/database of a URL, for messages (never its password)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path or ''}"


async def connect(url: str) -> Any:
    """One connection of its own (sessions-admin, a restore); the database unreachable is one
    line (StorageUnavailableError), never a traceback."""
    try:
        return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    except DB_ERRORS as exc:
        raise StorageUnavailableError(
            f"cannot connect to the database {describe_url(url)}: {exc}"
        ) from None


def configured_keyring(profile: ProfileConfig) -> Keyring:
    """The profile's configured key: in this mode a replica never generates one (two
    replicas would each make their own), so a missing key is one line and exit 2."""
    if profile.key:
        return Keyring(parse_keys(profile.key, "BRIDGE_KEY"))
    if profile.key_file is not None:
        try:
            return Keyring(parse_keys(profile.key_file.read_text(), str(profile.key_file)))
        except OSError as exc:
            raise ConfigError(f"cannot read key file {profile.key_file}: {exc.strerror}") from None
    raise ConfigError(
        f"profile {profile.slug!r}: the postgres store needs a configured encryption key "
        "(BRIDGE_KEY or BRIDGE_KEY_FILE, the same for every replica); it never generates one"
    )


@dataclass(slots=True)
class _Pending:
    """One caller's commit waiting for the writer (no records: a catch-up only)."""

    records: tuple[Record, ...]
    future: asyncio.Future[frozenset[str]]
    decide: Callable[[State], Sequence[Record]] | None = None
    kept: list[tuple[int, Record]] = field(default_factory=list)
    # Run in the transaction, on the settled state (`run_locked`).
    inside: Callable[[Any, State], Awaitable[None]] | None = None
    # The records go in only if this holds on the settled state (`commit_if`).
    unchanged: Callable[[State], bool] | None = None
    refused: bool = False

    @property
    def alone(self) -> bool:
        """A decision, or work under the lock: in a transaction of its own."""
        return self.decide is not None or self.inside is not None


class PostgresStore(Store):
    """A profile's state kept in PostgreSQL, cached whole in memory (see the module doc)."""

    def __init__(
        self,
        profile: ProfileConfig,
        database_url: str,
        *,
        enforce_settings: bool = True,
        poll_seconds: float = POLL_SECONDS,
        pool_size: int = 4,
    ) -> None:
        super().__init__(State())
        self.profile = profile
        self.database_url = database_url
        self._enforce_settings = enforce_settings
        self._poll_seconds = poll_seconds
        self._pool_size = pool_size
        self._pool: Any = None
        self._sealer: Sealer | None = None
        self._applied = 0  # the last seq applied to `state`
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._closing = False
        self._writing = False  # the writer is in a transaction
        self._log = get_logger(profile=profile.slug)
        self._down_since: float | None = None
        self._snapshot_upto = 0  # the seq the newest snapshot we know covers
        self._missing_keys: set[bytes] = set()  # logged once each

    @property
    def keyring(self) -> Keyring:
        if self._sealer is None:
            raise StorageError(f"profile {self.profile.slug!r}: store is not open")
        return self._sealer.keyring

    @property
    def sealer(self) -> Sealer:
        if self._sealer is None:
            raise StorageError(f"profile {self.profile.slug!r}: store is not open")
        return self._sealer

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise StorageError(f"profile {self.profile.slug!r}: store is not open")
        return self._pool

    # -- start and stop -------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, migrate the schema, check the key, load the log; then follow it."""
        keyring = configured_keyring(self.profile)
        self._sealer = Sealer(keyring, self.profile.slug)
        where = describe_url(self.database_url)
        try:
            self._pool = await asyncpg.create_pool(
                self.database_url,
                # No floor to maintain: asyncpg would log a traceback for every failed
                # attempt to restore it while the database is away.
                min_size=0,
                max_size=self._pool_size,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
            )
        except DB_ERRORS as exc:
            # Exit 1, not 2: the database may be back in a moment, let systemd retry.
            raise StorageError(f"cannot connect to the database {where}: {exc}") from None
        started = time.monotonic()
        try:
            async with self._pool.acquire() as conn:
                await migrate(conn)
                await self._check_key(conn)
                secrets = await load_secrets(conn, self.sealer)
                self._sealer = Sealer(keyring, self.profile.slug, secrets.seen)
                await self._load(conn)
        except BaseException as exc:
            await self._pool.close()
            self._pool = None
            if isinstance(exc, DB_ERRORS):
                raise StorageError(f"cannot reach the database {where}: {exc}") from None
            if isinstance(exc, MissingKeyError):
                # Restarting will not help until the operator adds the key: exit 2.
                raise ConfigError(f"{exc} (refusing to start)") from None
            raise
        self.ownership = ConversationLocks(self.database_url, self.profile.slug, secrets.locks)
        self._writer = asyncio.create_task(self._write_loop(), name="pg-writer")
        self._poller = asyncio.create_task(self._poll_loop(), name="pg-poll")
        if self._enforce_settings:
            await self._adopt_configured_settings()
        self._log.info(
            "store_opened",
            store="postgres",
            database=where,
            seq=self._applied,
            seconds=round(time.monotonic() - started, 3),
            conversations=len(self.state.conversations),
        )

    async def _check_key(self, conn: Any) -> None:
        """A new profile is created with its key check and secrets (secrets.py); an
        existing one must open with the configured key."""
        await conn.execute(
            "INSERT INTO bridge_profiles (slug, key_check, secrets) VALUES ($1, $2, $3) "
            "ON CONFLICT (slug) DO NOTHING",
            self.profile.slug,
            self.sealer.key_check(),
            ProfileSecrets.generate().seal(self.sealer),
        )
        check = await conn.fetchval(
            "SELECT key_check FROM bridge_profiles WHERE slug = $1", self.profile.slug
        )
        self.sealer.verify_key_check(check)

    async def _load(self, conn: Any) -> None:
        """The snapshot, then the log after it, in chunks."""
        row = await conn.fetchrow(
            "SELECT upto, sealed FROM bridge_snapshots WHERE profile = $1", self.profile.slug
        )
        if row is not None:
            load_snapshot(bytes(row["sealed"]), self.sealer, self.state)
            # The row's `upto` is the authority (a restored snapshot is sealed before the
            # seq it takes is known: `replace_database_state`).
            self._applied = int(row["upto"])
            self._snapshot_upto = self._applied
        while True:
            rows = await conn.fetch(
                "SELECT seq, sealed FROM bridge_records WHERE profile = $1 AND seq > $2 "
                "ORDER BY seq LIMIT $3",
                self.profile.slug,
                self._applied,
                LOAD_CHUNK,
            )
            if not rows:
                return
            self._apply_rows(rows)

    async def _adopt_configured_settings(self) -> None:
        """As the file store does: the configured cap and retention become the store's."""
        configured = self.profile.store_settings
        if self.state.settings == configured:
            return
        await self.commit([SettingsChanged(configured)])
        self._log.info("store_settings_changed", new=settings_to_dict(configured))

    async def close(self) -> None:
        if self._pool is None:
            return
        self._closing = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._writer is not None:
            self._wake.set()
            while self._queue or self._writing:  # accepted commits finish, not dropped
                await asyncio.sleep(0.005)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        with contextlib.suppress(*DB_ERRORS):
            await asyncio.wait_for(self._pool.close(), 10)
        self._pool = None

    # -- commits --------------------------------------------------------------------------

    async def commit(self, records: Sequence[Record]) -> None:
        await self.commit_new(records)

    async def commit_new(self, records: Sequence[Record]) -> frozenset[str]:
        if not records:
            return frozenset()
        return await self._submit(_Pending(tuple(records), self._future()))

    async def commit_effective(self, records: Sequence[Record]) -> int:
        """Every record: this replica's memory may be behind what others committed (a reply
        another replica sent and this one has not followed yet), so "changes nothing here"
        is never certain, and a status left out could be one that moves that reply."""
        await self.commit(records)
        return len(records)

    async def commit_decided(self, decide: Callable[[State], Sequence[Record]]) -> Sequence[Record]:
        """`decide` runs in the writer, inside the transaction, on the state with every
        record committed before it (by any replica) applied."""
        pending = _Pending((), self._future(), decide=decide)
        await self._submit(pending)
        return tuple(r for _, r in pending.kept)

    async def commit_if(
        self, records: Sequence[Record], unchanged: Callable[[State], bool]
    ) -> bool:
        """`unchanged` is checked in the writer, inside the transaction, on the state with
        every record committed before it (by any replica) applied; unlike a decision, the
        plain commits queued after it share its transaction."""
        if not records:
            return False
        pending = _Pending(tuple(records), self._future(), unchanged=unchanged)
        await self._submit(pending)
        return not pending.refused

    async def run_locked(self, inside: Callable[[Any, State], Awaitable[None]]) -> None:
        """`inside(conn, state)` runs in the writer, in a transaction holding the profile's
        head lock, on the state with every committed record applied: nothing can commit
        meanwhile (the media sweep: bridge/store/pg/media.py)."""
        await self._submit(_Pending((), self._future(), inside=inside))

    async def refresh(self) -> None:
        """Bring in what other replicas committed, now."""
        await self._submit(_Pending((), self._future()))

    def _future(self) -> asyncio.Future[frozenset[str]]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, pending: _Pending) -> frozenset[str]:
        if self._writer is None:
            raise StorageError(f"profile {self.profile.slug!r}: store is not open")
        self._queue.append(pending)
        self._wake.set()
        return await asyncio.shield(pending.future)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue, []
                self._writing = True
                try:
                    # A decision runs alone in its transaction, after what was queued
                    # before it.
                    for group in _groups(batch):
                        await self._run(group)
                finally:
                    self._writing = False

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            dropped = await self._write(batch)
        except BaseException as exc:
            # The database's failures are StorageError (503); a decision's own error is
            # its caller's, as it is.
            error = _storage_error(exc, self.database_url) if isinstance(exc, DB_ERRORS) else exc
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
                    pending.future.exception()  # a caller that went away: not "never retrieved"
            if not isinstance(exc, Exception):
                raise
            if isinstance(exc, DB_ERRORS):
                self._note_down(_storage_error(exc, self.database_url))
            elif isinstance(exc, MissingKeyError) and exc.key_id not in self._missing_keys:
                # Every commit and poll meets it until the key is configured: said once.
                self._missing_keys.add(exc.key_id)
                self._log.error(
                    "encryption_key_missing", key_id=exc.key_id.decode(), error=str(exc)
                )
            return
        self._note_up()
        for pending, ids in zip(batch, dropped, strict=True):
            if not pending.future.done():
                pending.future.set_result(ids)

    def _note_down(self, error: BridgeError) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._log.error("database_unavailable", error=str(error))

    def _note_up(self) -> None:
        if self._down_since is not None:
            self._log.info(
                "database_available_again",
                after_seconds=round(time.monotonic() - self._down_since, 1),
            )
            self._down_since = None

    async def _write(self, batch: list[_Pending]) -> list[frozenset[str]]:
        """One transaction for the whole batch; returns each caller's dropped ids."""
        slug = self.profile.slug
        decide = batch[0].decide if len(batch) == 1 else None
        inside = batch[0].inside if len(batch) == 1 else None
        if decide is None and inside is None and not any(p.records for p in batch):
            async with self.pool.acquire() as conn:
                await self._catch_up(conn)
            return [frozenset() for _ in batch]
        async with self.pool.acquire() as conn:
            # A reload (after a restore, or behind compaction) before the profile's lock is
            # taken, so the other replicas' commits do not wait for it.
            await self._check_pruned(conn)
            async with conn.transaction():
                # The row lock on the profile's head serialises its commits across replicas.
                row = await conn.fetchrow(
                    "SELECT head, pruned FROM bridge_profiles WHERE slug = $1 FOR UPDATE", slug
                )
                if row is None:
                    raise StorageError(f"profile {slug!r} is not in the database")
                head = int(row["head"])
                # Others' commits: in memory before deciding (`pruned` read with the lock:
                # no second round trip while holding it).
                await self._catch_up(conn, int(row["pruned"]))
                self._applied = max(self._applied, head)
                if decide is not None:
                    batch[0].records = tuple(decide(self.state))
                # A condition leads its group (`_groups`): every commit before it is applied.
                first = batch[0]
                if first.unchanged is not None and not first.unchanged(self.state):
                    first.records, first.refused = (), True
                if inside is not None:
                    await inside(conn, self.state)
                    return [frozenset()]
                dropped = await self._insert(conn, batch, head)
        # Committed: apply in seq order, then tell the listeners.
        for pending in batch:
            for number, record in pending.kept:
                self.state.apply(number, record)
            self._applied = max(self._applied, pending.kept[-1][0] if pending.kept else 0)
            if pending.kept:
                self._committed([r for _, r in pending.kept])
        return dropped

    async def _insert(self, conn: Any, batch: list[_Pending], head: int) -> list[frozenset[str]]:
        """Claim the inbound message ids and insert the records, in one statement (the
        profile's row lock is held meanwhile: round trips there are what limits it).

        Every record gets a seq after `head` and is sealed with it; the keyed hash of each
        inbound message id is inserted `ON CONFLICT DO NOTHING RETURNING`, and a message's
        record, and the keyword reaction right after it, are inserted only if its hash was
        (a copy another replica recorded, or an earlier one in this batch, is left out: its
        seqs stay a gap). Returns each caller's left-out ids, and sets each caller's `kept`
        records."""
        sealer = self.sealer
        seen: dict[bytes, int] = {}  # hash -> received ms, first occurrences
        seqs: list[int] = []
        sealed: list[bytes] = []
        guards: list[bytes | None] = []
        slots: list[tuple[_Pending, Record, str | None, bytes | None]] = []
        seq = head
        for pending in batch:
            reacting: bytes | None = None  # the guard of the inbound message just before
            for record in pending.records:
                message_id = _inbound_id(record)
                guard: bytes | None = None
                if message_id is None and reacting is not None and _reaction(record):
                    guard = reacting  # a keyword's reaction stands or falls with its message
                elif message_id is None:
                    reacting = None
                elif pending.decide is not None:
                    # An operator's decided write (an import) was decided on the settled
                    # state, which already left out what the store holds: its ids are
                    # remembered, never claimed against (an erased message's id stays
                    # seen, and importing it back is what the operator asked for).
                    assert isinstance(record, MessageAdded)
                    seen.setdefault(sealer.seen_hash(message_id), record.at_ms)
                    reacting = None
                else:
                    digest = sealer.seen_hash(message_id)
                    if digest in seen:
                        guard = b""  # a second copy in this batch: matches no claimed hash
                    else:
                        assert isinstance(record, MessageAdded)
                        seen[digest] = record.at_ms
                        guard = digest
                    reacting = guard
                seq += 1
                seqs.append(seq)
                sealed.append(sealer.seal("records", str(seq), encode(seq, record)))
                guards.append(guard)
                slots.append((pending, record, message_id, guard))
        rows = await conn.fetch(
            "WITH claimed AS ("
            " INSERT INTO bridge_seen (profile, id_hash, received_ms)"
            " SELECT $1, h, r FROM unnest($2::bytea[], $3::bigint[]) AS t(h, r)"
            " ON CONFLICT (profile, id_hash) DO NOTHING RETURNING id_hash"
            "), kept AS ("
            " INSERT INTO bridge_records (profile, seq, sealed)"
            " SELECT $1, s, b FROM unnest($4::bigint[], $5::bytea[], $6::bytea[]) AS t(s, b, g)"
            " WHERE g IS NULL OR g IN (SELECT id_hash FROM claimed)"
            "), moved AS ("
            " UPDATE bridge_profiles SET head = $7 WHERE slug = $1"
            ") SELECT id_hash FROM claimed",
            self.profile.slug,
            list(seen),
            list(seen.values()),
            seqs,
            sealed,
            guards,
            seq,
        )
        claimed = {bytes(row["id_hash"]) for row in rows}
        left_out: dict[int, set[str]] = {id(p): set() for p in batch}
        for pending in batch:
            pending.kept = []
        for number, (pending, record, message_id, guard) in zip(seqs, slots, strict=True):
            if guard is not None and guard not in claimed:
                if message_id is not None:
                    left_out[id(pending)].add(message_id)
                continue  # or the left-out message's keyword reaction: its recorder made it
            pending.kept.append((number, record))
        return [frozenset(left_out[id(p)]) for p in batch]

    async def _catch_up(self, conn: Any, pruned: int | None = None) -> None:
        """Apply what other replicas committed since this one last looked (`pruned`: the
        profile's, when the caller has just read it)."""
        await self._check_pruned(conn, pruned)
        rows = await conn.fetch(
            "SELECT seq, sealed FROM bridge_records WHERE profile = $1 AND seq > $2 ORDER BY seq",
            self.profile.slug,
            self._applied,
        )
        self._apply_rows(rows)

    async def _check_pruned(self, conn: Any, pruned: int | None = None) -> None:
        """Records this replica has not applied were compacted away (it fell behind by more
        than a snapshot interval): load the snapshot and the log again, into a new State
        (readers take `store.state` afresh each time). `pruned` is read unless given."""
        if pruned is None:
            pruned = await conn.fetchval(
                "SELECT pruned FROM bridge_profiles WHERE slug = $1", self.profile.slug
            )
        if pruned is None or pruned <= self._applied:
            return
        self._log.warning("store_reloaded_behind_compaction", applied=self._applied, pruned=pruned)
        state = State()
        self.state, old = state, self.state
        applied, self._applied = self._applied, 0
        try:
            await self._load(conn)
        except BaseException:
            self.state, self._applied = old, applied
            raise

    def _apply_rows(self, rows: Sequence[Any]) -> None:
        """Apply records read from the log (committed by any replica), in seq order."""
        applied: list[Record] = []
        for row in rows:
            seq = int(row["seq"])
            if seq <= self._applied:
                continue
            try:
                # A key this replica lacks raises MissingKeyError (503, logged once).
                number, record = decode(self.sealer.open("records", str(seq), bytes(row["sealed"])))
            except (DecryptError, ValueError, KeyError, TypeError) as exc:
                raise CorruptStateError(
                    f"profile {self.profile.slug!r}: record seq {seq} in the database cannot be "
                    f"read ({exc})"
                ) from None
            if number != seq:
                raise CorruptStateError(f"profile {self.profile.slug!r}: record seq {seq} moved")
            self.state.apply(seq, record)
            self._applied = seq
            applied.append(record)
        if applied:
            self._committed(applied, others=True)

    # -- following the log ----------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            if self._queue:
                continue  # a commit under way catches up anyway
            with contextlib.suppress(BridgeError):
                await self.refresh()

    # -- housekeeping ---------------------------------------------------------------------

    async def snapshot(self) -> None:
        """Retention (the service only), and forgetting seen ids past Meta's retry window."""
        now_ms = int(time.time() * 1000)
        expired = await self.expire_by_retention(now_ms, self._enforce_settings)
        if expired:
            self._log.info("retention_pruned", conversations=expired)
        self.state.prune_seen(now_ms)
        try:
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "DELETE FROM bridge_seen WHERE profile = $1 AND received_ms < $2",
                    self.profile.slug,
                    now_ms - SEEN_TTL_MS,
                )
            await self._compact()
        except DB_ERRORS as exc:
            raise _storage_error(exc, self.database_url) from None

    async def _compact(self) -> None:
        """Write the state as a snapshot covering every record applied so far, and delete
        the records the previous snapshot covered (one interval of slack, for replicas a
        little behind; one further behind reloads: `_check_pruned`). This is also what
        makes an erasure leave the database: the erased conversation's records go.

        A fuzzy snapshot, as the file store's: written in slices while commits go on, which
        is safe because replay after `upto` skips what a conversation already holds."""
        upto = self._applied
        if upto <= self._snapshot_upto:
            return  # nothing new since the last one
        data = await dump_snapshot(self.state, self.sealer, upto)
        slug = self.profile.slug
        async with self.pool.acquire() as conn, conn.transaction():
            previous = await conn.fetchval(
                "SELECT upto FROM bridge_snapshots WHERE profile = $1 FOR UPDATE", slug
            )
            if previous is not None and previous >= upto:
                self._snapshot_upto = int(previous)
                return  # another replica wrote a newer one
            await _put_snapshot(conn, slug, upto, data)
            if previous is not None:
                await conn.execute(
                    "DELETE FROM bridge_records WHERE profile = $1 AND seq <= $2", slug, previous
                )
                await conn.execute(
                    "UPDATE bridge_profiles SET pruned = greatest(pruned, $2) WHERE slug = $1",
                    slug,
                    previous,
                )
        self._snapshot_upto = upto
        self._log.info("snapshot_written", store="postgres", upto=upto, bytes=len(data))


async def read_database_state(
    profile: ProfileConfig, database_url: str, keyring: Keyring | None = None
) -> State:
    """A profile's current state from the database, read-only (sessions-admin, while
    replicas run): nothing is created, migrated or written."""
    keyring = keyring or configured_keyring(profile)
    store = PostgresStore(profile, database_url, enforce_settings=False)
    store._sealer = Sealer(keyring, profile.slug)
    where = describe_url(database_url)
    conn = await connect(database_url)
    try:
        version = await current_version(conn)
        if version > latest_version():
            raise ConfigError(
                f"the database's schema is version {version}, this tool knows up to "
                f"{latest_version()}: upgrade it"
            )
        check = (
            await conn.fetchval(
                "SELECT key_check FROM bridge_profiles WHERE slug = $1", profile.slug
            )
            if version
            else None
        )
        if check is None:
            raise BridgeError(f"no profile {profile.slug!r} in the database {where}")
        store.sealer.verify_key_check(check)
        secrets = (
            await read_secrets(conn, store.sealer)
            if version >= 2
            else ProfileSecrets.legacy(keyring, profile.slug)
        )
        store._sealer = Sealer(keyring, profile.slug, secrets.seen)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await store._load(conn)  # one snapshot of the database: no compaction between
    except DB_ERRORS as exc:
        raise StorageUnavailableError(f"database {where}: {exc}") from None
    finally:
        await conn.close()
    return store.state


async def replace_database_state(
    profile: ProfileConfig,
    database_url: str,
    state: State,
    keep: Callable[[State], Awaitable[None]],
) -> int:
    """Make `state` (an archive's) the profile's whole state, live: `sessions-admin restore`.

    One transaction, under the locks compaction and commits take (the snapshot row, then
    the head row, in `_compact`'s order: no deadlock with it): the current state, exact as
    of the lock, goes to `keep` (the pre-restore archive) before anything changes; then
    `state` becomes the snapshot at `upto`, every record goes, and `head = pruned = upto`.
    Conversations carry their seqs and replay skips a record at or below its
    conversation's, so `upto` is above every seq in the archive as well as above the head.
    Each replica sees `pruned` beyond what it applied at its next poll and reloads
    (`_check_pruned`). Seen ids' keyed hashes already there stay: a message received after
    the backup that Meta delivers again must not be recorded twice. A kill at any moment
    leaves the old state or the new one (the database rolls back an open transaction).
    Returns `upto`. Replicas' commits wait while `keep` writes."""
    store = PostgresStore(profile, database_url, enforce_settings=False)
    store._sealer = sealer = Sealer(configured_keyring(profile), profile.slug)
    slug = profile.slug
    where = describe_url(database_url)
    # The slow parts outside the locks: the archive's snapshot sealed (its `upto` is the
    # row's, set below), and the current state loaded from a consistent read.
    data = await dump_snapshot(state, sealer, state.seq)
    seen = list(state.seen.items())
    conn = await connect(database_url)
    try:
        await migrate(conn)
        check = await conn.fetchval("SELECT key_check FROM bridge_profiles WHERE slug = $1", slug)
        if check is None:
            raise BridgeError(f"no profile {slug!r} in the database {where}")
        sealer.verify_key_check(check)
        secrets = await load_secrets(conn, sealer)  # the seen ids' hash key
        store._sealer = sealer = Sealer(sealer.keyring, slug, secrets.seen)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await store._load(conn)
        async with conn.transaction():
            await conn.execute(
                "SELECT upto FROM bridge_snapshots WHERE profile = $1 FOR UPDATE", slug
            )
            head = int(
                await conn.fetchval(
                    "SELECT head FROM bridge_profiles WHERE slug = $1 FOR UPDATE", slug
                )
            )
            await store._catch_up(conn)  # what was committed since the read: now exact
            await keep(store.state)
            upto = max(head, state.seq) + 1
            await _put_snapshot(conn, slug, upto, data)
            await conn.execute("DELETE FROM bridge_records WHERE profile = $1", slug)
            await conn.execute(
                "UPDATE bridge_profiles SET head = $2, pruned = $2 WHERE slug = $1", slug, upto
            )
            if seen:
                await conn.execute(
                    "INSERT INTO bridge_seen (profile, id_hash, received_ms) "
                    "SELECT $1, h, r FROM unnest($2::bytea[], $3::bigint[]) AS t(h, r) "
                    "ON CONFLICT DO NOTHING",
                    slug,
                    [sealer.seen_hash(i) for i, _ in seen],
                    [at for _, at in seen],
                )
    except DB_ERRORS as exc:
        raise StorageUnavailableError(f"database {where}: {exc}") from None
    finally:
        await conn.close()
    return upto


async def dump_snapshot(state: State, sealer: Sealer, upto: int) -> bytes:
    """The file store's snapshot format (sealed frames, bound to the profile), as bytes;
    `upto` goes where the file store names its journal segment."""
    with tempfile.TemporaryDirectory(prefix="bridge-pg-") as directory:
        path = Path(directory) / "snapshot"
        await write_snapshot(path, state, sealer.keyring, sealer.profile, upto)
        return path.read_bytes()


def snapshot_key_id(data: bytes) -> bytes:
    """The key `dump_snapshot`'s bytes were sealed with (its first frame's: one writer
    seals every frame with its active key)."""
    start = len(MAGIC) + ID_LEN + LENGTH.size
    return sealed_key_id(data[start:])


def load_snapshot(data: bytes, sealer: Sealer, state: State) -> int:
    """Load `dump_snapshot`'s bytes into an empty `state`; returns the seq it covers.
    MissingKeyError when they are sealed with a key the sealer lacks."""
    kid = snapshot_key_id(data)
    if len(data) > len(MAGIC) + ID_LEN + LENGTH.size and kid not in sealer.keyring.key_ids:
        raise MissingKeyError(sealer.profile, kid)
    with tempfile.TemporaryDirectory(prefix="bridge-pg-") as directory:
        path = Path(directory) / "snapshot"
        path.write_bytes(data)
        return read_snapshot(path, sealer.keyring, sealer.profile, state)


async def _put_snapshot(conn: Any, slug: str, upto: int, data: bytes) -> None:
    """The profile's snapshot (one row a profile), covering the records up to `upto`."""
    await conn.execute(
        "INSERT INTO bridge_snapshots (profile, upto, sealed) VALUES ($1, $2, $3) "
        "ON CONFLICT (profile) DO UPDATE SET upto = EXCLUDED.upto, "
        "sealed = EXCLUDED.sealed, written_at = now()",
        slug,
        upto,
        data,
    )


def _groups(batch: list[_Pending]) -> list[list[_Pending]]:
    """Consecutive plain commits share a transaction; each decision gets its own, and a
    conditional commit leads one (the plain ones after it may join)."""
    groups: list[list[_Pending]] = []
    for pending in batch:
        leads = pending.alone or pending.unchanged is not None
        if leads or not groups or groups[-1][0].alone:
            groups.append([pending])
        else:
            groups[-1].append(pending)
    return groups


def _reaction(record: Record) -> bool:
    """A record the Ingestor commits right after an inbound message as its consequence (a
    keyword's mode change and automatic reply, bridge/keywords.py): left out with it."""
    if isinstance(record, MessageAdded):
        return record.message.role == "assistant"
    return isinstance(record, ModeChanged | OutboxQueued)


def _inbound_id(record: Record) -> str | None:
    if isinstance(record, MessageAdded) and record.message.role == "user":
        return record.message.id
    return None


def _storage_error(exc: BaseException, url: str) -> BridgeError:
    if isinstance(exc, BridgeError):
        return exc
    detail = str(exc) or type(exc).__name__
    return StorageError(f"database {describe_url(url)} unavailable: {detail}")
