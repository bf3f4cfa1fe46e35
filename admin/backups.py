"""`backup`: a consistent encrypted archive of a profile's state, read back whole before
older archives are pruned (admin/archives.py names and prunes them); the archive reader
that `verify` and `restore` share."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from admin import archives, database, render
from admin import media as admin_media
from admin.arguments import UsageError
from admin.store import read_state, resolve_profile
from bridge.config import ProfileConfig
from bridge.errors import BridgeError, CorruptStateError
from bridge.ops.eventlog import EventLog
from bridge.persistence import layout
from bridge.persistence.files import secure_dir
from bridge.persistence.keys import load_keyring
from bridge.persistence.snapshot import SnapshotInfo, read_snapshot, write_snapshot
from bridge.state import State


def cmd_backup(args: argparse.Namespace) -> int:
    """A consistent archive of the current state (snapshot + journal as of now), encrypted
    with the profile's active key, in the snapshot format so `verify`/`restore` read it.
    Checked by reading it back before older archives are pruned; a failure of any step is
    exit 1, one line, and a `backup_failed` event in the profile's event log."""
    if args.keep < 1:
        raise UsageError("--keep must be at least 1")
    profile = resolve_profile(args)
    target_dir = args.to or layout.backups_dir(profile.state_dir)
    try:
        path, size, summary = write_checked_archive(profile, target_dir)
        removed = archives.prune(target_dir, profile.slug, args.keep, path)
    except BridgeError as exc:
        EventLog(profile.state_dir).record("backup_failed", error=str(exc))
        raise
    except OSError as exc:
        error = BridgeError(f"backup to {target_dir} failed: {exc.strerror or exc}")
        EventLog(profile.state_dir).record("backup_failed", error=str(error))
        raise error from None
    if args.json:
        render.emit_json(
            {
                "path": str(path),
                "bytes": size,
                "conversations": summary["conversations"],
                "media_files": summary["media_files"],
                "media_missing": summary["media_missing"],
                "verified": True,
                "removed": [str(p) for p in removed],
            }
        )
    else:
        print(path)  # alone on stdout, for scripts
        if summary["media_missing"]:
            print(
                f"{summary['media_missing']} media file(s) were erased or dropped while the "
                "backup ran",
                file=sys.stderr,
            )
        for old in removed:
            print(f"removed old archive {old}", file=sys.stderr)
    return 0


def write_checked_archive(
    profile: ProfileConfig, target_dir: Path
) -> tuple[Path, int, dict[str, int]]:
    """Write the archive atomically, then read it back whole and compare what it holds with
    what was written: a disk or a mount that returns other bytes than it took must not go
    unnoticed until the day of a restore. Returns (path, size, summary)."""
    if target_dir == layout.backups_dir(profile.state_dir):
        secure_dir(target_dir)  # inside the profile directory: ours
    else:
        archives.backup_dir(target_dir)
    archives.remove_stale_temps(target_dir, profile.slug)
    path = target_dir / archives.archive_name(profile.slug)
    size, summary = asyncio.run(write_archive(profile, read_state(profile), path))
    return path, size, summary


async def write_archive(
    profile: ProfileConfig, state: State, path: Path
) -> tuple[int, dict[str, int]]:
    """`state` as the archive `path` (and its media beside it), read back and compared;
    returns (size, summary). The file at `path` is set aside as `.bad` if it reads back
    wrong."""
    keyring = load_keyring(profile, create=False)
    # The media first: an archive under its name always has its media beside it.
    url = database.database_of(profile)
    # In a thread: fetching what the local cache lacks from the database runs a loop of its own.
    media_files, media_missing = await asyncio.to_thread(
        admin_media.backup_media, profile, state, path, (url, keyring) if url else None
    )
    size = await write_snapshot(
        path, state, keyring, profile.slug, 0, render.terminal_progress("backup")
    )
    written = state_summary(state)
    del state  # the read-back below needs the memory (when the caller keeps no reference)
    problem: str | None = None
    try:
        check = State()
        read_snapshot(path, keyring, profile.slug, check)
    except CorruptStateError as exc:
        problem = str(exc)
    else:
        if state_summary(check) != written:
            problem = f"it holds {state_summary(check)} instead of {written}"
        del check
    if problem is not None:
        bad = archives.set_aside_bad(path)
        raise BridgeError(
            f"backup {path} failed its check, kept as {bad} and no older archive was "
            f"removed: {problem}"
        )
    return size, {**written, "media_files": media_files, "media_missing": media_missing}


def check_archive(profile: ProfileConfig, path: Path, info: SnapshotInfo | None = None) -> State:
    """The archive's state, decrypted and parsed whole (CorruptStateError naming the file
    when it does not read); a path that is no file is a usage mistake."""
    if not path.is_file():
        raise UsageError(f"no such archive: {path}")
    state = State()  # the archive's own settings come with it
    read_snapshot(path, load_keyring(profile, create=False), profile.slug, state, info)
    return state


def state_summary(state: State) -> dict[str, int]:
    """The counts an archive must read back with, and that `verify` reports."""
    return {
        "conversations": len(state.conversations),
        "messages": state.message_count(),
        "outbox": len(state.outbox),
        "seen_ids": len(state.seen),
    }
