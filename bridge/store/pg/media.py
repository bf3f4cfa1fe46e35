"""Media files in the database, so every replica can read what any of them fetched.

A file is kept as its frames exactly as sealed on disk (bridge/media/store.py): AES-GCM
with associated data binding profile, name and index, so the database holds nothing
readable and a frame moved to another row fails to open. Each replica's `media/` directory
is a cache: a file is uploaded (one transaction: whole or absent) before the record naming
it is committed, and fetched into the cache by a replica that lacks it.

Which files are still wanted is the state's business (`State.media_files`). The sweep runs
in the writer, inside a transaction holding the profile's head lock with every committed
record applied (`PostgresStore.run_locked`), so no record naming a file can commit while it
decides. It deletes a file no message names once a committed record named it (`recorded`:
the uploading replica marks it after its commit, and the sweep marks every wanted file);
one never recorded is an upload whose record may still be on its way, or one a replica
killed between upload and commit left: it goes after `grace`.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from bridge.errors import StorageError
from bridge.media.store import MediaFileError, MediaStore
from bridge.ops.logs import get_logger
from bridge.state import State

if TYPE_CHECKING:
    from bridge.store.postgres import PostgresStore


class NotInDatabaseError(MediaFileError):
    """The database holds no file of that name (never uploaded, or swept)."""


# An upload's record is committed right after it (seconds, bounded by the commit's own
# timeouts); an unrecorded file older than this is an orphan.
GRACE_SECONDS = 3600.0
# Frames per round trip, either way (each up to 1 MiB: a few MiB in memory at a time).
BATCH = 4


class DatabaseMedia:
    """The shared copy of one profile's media files (bridge/media/store.py: SharedMedia).

    `pool` gives the connection pool at each use (a store's, opened later than this is
    built). `replica`, the store of a running replica, sweeps under its head lock
    (`PostgresStore.run_locked`); without one (sessions-admin, reading) `sweep` is refused."""

    def __init__(
        self,
        slug: str,
        database_url: str,
        pool: Callable[[], Any],
        replica: PostgresStore | None = None,
        grace_seconds: float = GRACE_SECONDS,
    ) -> None:
        self._slug = slug
        self._url = database_url
        self._pool = pool
        self._replica = replica
        self._grace = datetime.timedelta(seconds=grace_seconds)
        self._log = get_logger(profile=slug)

    @classmethod
    def of(cls, store: PostgresStore, grace_seconds: float = GRACE_SECONDS) -> DatabaseMedia:
        """A replica's: its store's pool, swept under its store's lock."""
        return cls(store.profile.slug, store.database_url, lambda: store.pool, store, grace_seconds)

    def _unavailable(self, exc: BaseException) -> StorageError:
        from bridge.store.postgres import describe_url

        detail = str(exc) or type(exc).__name__
        return StorageError(f"database {describe_url(self._url)}: {detail}")

    async def upload(self, files: MediaStore, name: str) -> None:
        from bridge.store.postgres import DB_ERRORS

        loop = asyncio.get_running_loop()
        frames = files.frames(name)
        try:
            async with self._pool().acquire() as conn, conn.transaction():
                # A retry after a failed commit uploads the same name again: replace it.
                await conn.execute(
                    "DELETE FROM bridge_media WHERE profile = $1 AND name = $2", self._slug, name
                )
                await conn.execute(
                    "INSERT INTO bridge_media (profile, name, frames, bytes) VALUES ($1, $2, 0, 0)",
                    self._slug,
                    name,
                )
                count = size = 0
                while batch := await loop.run_in_executor(None, _take, frames, BATCH):
                    await conn.executemany(
                        "INSERT INTO bridge_media_frames (profile, name, idx, frame) "
                        "VALUES ($1, $2, $3, $4)",
                        [(self._slug, name, count + i, f) for i, f in enumerate(batch)],
                    )
                    count += len(batch)
                    size += sum(len(f) for f in batch)
                await conn.execute(
                    "UPDATE bridge_media SET frames = $3, bytes = $4 "
                    "WHERE profile = $1 AND name = $2",
                    self._slug,
                    name,
                    count,
                    size,
                )
        except DB_ERRORS as exc:
            raise self._unavailable(exc) from None
        finally:
            frames.close()

    async def fetch(self, files: MediaStore, name: str) -> None:
        from bridge.store.postgres import DB_ERRORS

        loop = asyncio.get_running_loop()
        installer = files.installer(name)
        try:
            async with self._pool().acquire() as conn, conn.transaction(readonly=True):
                frames = await conn.fetchval(
                    "SELECT frames FROM bridge_media WHERE profile = $1 AND name = $2",
                    self._slug,
                    name,
                )
                if not frames:
                    raise NotInDatabaseError(f"media file {name}: not in the database")
                expected = 0
                cursor = conn.cursor(
                    "SELECT idx, frame FROM bridge_media_frames "
                    "WHERE profile = $1 AND name = $2 ORDER BY idx",
                    self._slug,
                    name,
                    prefetch=BATCH,
                )
                async for row in cursor:
                    if row["idx"] != expected:
                        raise MediaFileError(f"media file {name}: frame {expected} missing")
                    await loop.run_in_executor(None, installer.add, bytes(row["frame"]))
                    expected += 1
                if expected != frames:
                    raise MediaFileError(f"media file {name}: {expected} of {frames} frames")
            await loop.run_in_executor(None, installer.finish)
        except BaseException as exc:
            await loop.run_in_executor(None, installer.abort)
            if isinstance(exc, DB_ERRORS):
                raise self._unavailable(exc) from None
            raise
        self._log.info("media_fetched_from_database", frames=expected)

    async def recorded(self, name: str) -> None:
        from bridge.store.postgres import DB_ERRORS

        try:
            async with self._pool().acquire() as conn:
                await conn.execute(
                    "UPDATE bridge_media SET recorded = true WHERE profile = $1 AND name = $2",
                    self._slug,
                    name,
                )
        except DB_ERRORS as exc:
            raise self._unavailable(exc) from None

    async def sweep(self) -> int:
        """Delete the files no message names. The rows are listed first, without the lock;
        under it, on the settled state, only the listed files no record names are deleted
        (a file listed as recorded was named by a record committed before the listing, so
        the settled state holds it; one uploaded after the listing waits for the next
        sweep). The head lock, which stops the profile's commits, is held for one DELETE of
        a few names, and not at all when there is nothing to delete."""
        from bridge.store.postgres import DB_ERRORS

        replica = self._replica
        if replica is None:
            raise StorageError("media files in the database are swept by a replica only")
        try:
            async with self._pool().acquire() as conn:
                listed = await conn.fetch(
                    "SELECT name, recorded, created_at < now() - $2::interval AS old "
                    "FROM bridge_media WHERE profile = $1",
                    self._slug,
                    self._grace,
                )
        except DB_ERRORS as exc:
            raise self._unavailable(exc) from None
        removed: list[str] = []

        async def inside(conn: Any, state: State) -> None:
            wanted = state.media_files
            unwanted = [
                str(r["name"])
                for r in listed
                if r["name"] not in wanted and (r["recorded"] or r["old"])
            ]
            named = [str(r["name"]) for r in listed if r["name"] in wanted and not r["recorded"]]
            if named:  # named by a committed record: an erasure may free it at once
                await conn.execute(
                    "UPDATE bridge_media SET recorded = true "
                    "WHERE profile = $1 AND name = ANY($2::text[])",
                    self._slug,
                    named,
                )
            if unwanted:
                rows = await conn.fetch(
                    "DELETE FROM bridge_media WHERE profile = $1 AND name = ANY($2::text[]) "
                    "RETURNING name",
                    self._slug,
                    unwanted,
                )
                removed.extend(str(row["name"]) for row in rows)

        state = replica.state  # not settled: only to skip the lock when nothing is to do
        if any(
            (r["name"] not in state.media_files and (r["recorded"] or r["old"]))
            or (r["name"] in state.media_files and not r["recorded"])
            for r in listed
        ):
            await replica.run_locked(inside)
        if removed:
            self._log.info("media_removed_from_database", files=len(removed))
        return len(removed)


def _take(frames: Iterator[bytes], n: int) -> list[bytes]:
    batch: list[bytes] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) >= n:
            break
    return batch
