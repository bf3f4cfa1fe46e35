"""`restore`: replace a profile's store with an archive, the state replaced kept first."""

from __future__ import annotations

import argparse
import asyncio
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from admin import archives, database
from admin import media as admin_media
from admin.backups import check_archive, write_archive
from admin.store import resolve_profile
from bridge.config import ProfileConfig
from bridge.errors import BridgeError, ProfileLockedError
from bridge.persistence import layout
from bridge.persistence.files import fsync_dir, fsync_file, secure_dir
from bridge.persistence.journal import create_segment, list_segments, segment_path
from bridge.persistence.keys import load_keyring
from bridge.persistence.lock import ProfileLock
from bridge.persistence.snapshot import write_snapshot
from bridge.state import State
from bridge.store.postgres import configured_keyring


@contextmanager
def exclusive(profile: ProfileConfig) -> Iterator[None]:
    """Hold the profile lock for `restore`, the one write that needs the bridge stopped:
    it replaces the store's files, which a running bridge holds open."""
    lock = ProfileLock(profile.state_dir, profile.slug)
    try:
        lock.acquire()
    except ProfileLockedError as exc:
        raise BridgeError(
            f"restore replaces the whole store, so it needs the bridge stopped: {exc}; stop it "
            f"first (e.g. systemctl stop whatsapp-bridge@{profile.slug}); nothing was changed"
        ) from None
    try:
        yield
    finally:
        lock.release()


def cmd_restore(args: argparse.Namespace) -> int:
    """Replace the store with an archive. The current files are kept in backups/ first.

    Every step leaves a store that starts, so a kill at any point is harmless: the new
    snapshot names a journal segment that exists before the snapshot is renamed into place
    (an empty segment after the old ones is a rotation that did not happen, for the old
    store), and the old segments go only once the new snapshot is durable."""
    profile = resolve_profile(args)
    url = database.database_of(profile)
    if url:
        return _restore_database(profile, url, args.archive)
    state = check_archive(profile, args.archive)
    with exclusive(profile):
        try:
            keep = _restore(profile, state, args.archive)
        except OSError as exc:
            raise BridgeError(
                f"restore failed: cannot write {exc.filename or profile.state_dir}: "
                f"{exc.strerror or exc} (the store is as it was, or already restored: "
                "either starts)"
            ) from None
    print(
        f"restored profile {profile.slug!r} from {args.archive}: "
        f"{len(state.conversations)} conversations (previous store kept in {keep})"
    )
    return 0


def _restore_database(profile: ProfileConfig, url: str, archive: Path) -> int:
    """Restore into the PostgreSQL store, live: replicas keep running and reload the
    restored state within a poll (bridge/store/postgres.py `replace_database_state`). The
    state replaced, exact as of the restore, is kept first as an archive in
    `backups/pre-restore-<time>/`."""
    state = check_archive(profile, archive)
    keep = layout.backups_dir(profile.state_dir) / f"pre-restore-{archives.stamp()}"
    kept = keep / archives.archive_name(profile.slug)

    async def keep_current(current: State) -> None:
        try:
            secure_dir(keep)
            await write_archive(profile, current, kept)
        except OSError as exc:
            raise BridgeError(
                f"restore failed: cannot keep the current state in {keep}: "
                f"{exc.strerror or exc}; nothing was changed"
            ) from None

    # The archive's media files go into the database first, so that the restored state never
    # names a file the database lacks; unmarked, so no sweep takes them before the swap.
    keyring = configured_keyring(profile)
    names = list(state.media_files)
    media = admin_media.upload_to_database(
        profile, url, keyring, names, admin_media.companion(archive), record=False
    )
    database.restore(profile, url, state, keep_current)
    admin_media.mark_recorded(profile, url, keyring, names)
    print(
        f"restored profile {profile.slug!r} from {archive}: "
        f"{len(state.conversations)} conversations, {media.files} media file(s) (previous "
        f"state kept in {kept}); the running replicas reload it within a second"
    )
    if media.missing:
        print(
            f"{media.missing} media file(s) the archive's state names were not beside it "
            f"({admin_media.companion(archive)}/): those messages keep their text, not the file"
        )
    return 0


def _restore(profile: ProfileConfig, state: State, archive: Path) -> Path:
    keyring = load_keyring(profile, create=False)
    journal = layout.journal_dir(profile.state_dir)
    segments = list_segments(journal)
    keep = layout.backups_dir(profile.state_dir) / f"pre-restore-{archives.stamp()}"
    secure_dir(keep)
    snapshot = layout.snapshot_path(profile.state_dir)
    for path in [snapshot, *(segment_path(journal, s) for s in segments)]:
        if path.exists():
            copy = keep / path.name
            shutil.copy2(path, copy)
            fsync_file(copy)  # the originals go below: their copies must be on disk first
    fsync_dir(keep)
    admin_media.restore_media(profile, archive, keep)
    # The new snapshot continues in a segment after every existing one: an empty newest
    # segment is reused, else a new one is created, and made durable, before the snapshot
    # that names it exists.
    newest = max(segments, default=0)
    if newest and segment_path(journal, newest).stat().st_size == 0:
        next_segment = newest
    else:
        next_segment = newest + 1
        create_segment(journal, next_segment)
    asyncio.run(write_snapshot(snapshot, state, keyring, profile.slug, next_segment))
    for s in segments:  # older than the snapshot's segment: no longer read
        if s < next_segment:
            segment_path(journal, s).unlink()
    fsync_dir(journal)
    return keep
