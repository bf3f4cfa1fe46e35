"""The sessions-admin commands; each returns the process exit code."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from admin import archives, database, render, writer
from admin import media as admin_media
from admin.seedfile import load_seed_file
from bridge.config import ProfileConfig, StoreSettings, load_settings
from bridge.control.protocol import MAX_REQUEST
from bridge.control.writes import conversation_key, import_arguments
from bridge.conversations import Conversation, Message
from bridge.errors import BridgeError, ConfigError, CorruptStateError, ProfileLockedError
from bridge.eventlog import EventLog
from bridge.persistence import layout
from bridge.persistence.files import fsync_dir, secure_dir
from bridge.persistence.journal import list_segments, segment_path
from bridge.persistence.keys import load_keyring
from bridge.persistence.lock import ProfileLock
from bridge.persistence.snapshot import SnapshotInfo, read_snapshot, write_snapshot
from bridge.records import settings_from_dict
from bridge.state import State
from bridge.store.durable import load_state
from bridge.store.postgres import configured_keyring

DAY_MS = 24 * 3600 * 1000
IMPORT_PART = 1024 * 1024  # bytes of conversations per request to a running bridge


class UsageError(ConfigError):
    """Bad arguments: exit code 2."""


# -- profiles and stores ----------------------------------------------------------------------


def resolve_profile(args: argparse.Namespace) -> ProfileConfig:
    """The profile named by --profile, from the TOML file or the environment."""
    selected = (args.profile,) if args.profile else ()
    settings = load_settings(config_path=args.config, selected=selected, var_dir=args.var_dir)
    profile = settings.profiles[0]
    if database.use_settings(settings, profile):
        return profile  # in the database (admin/database.py)
    if not profile.state_dir.is_dir():
        raise BridgeError(
            f"no store for profile {profile.slug!r} at {profile.state_dir} (has the bridge run "
            "with this profile? is --var-dir right?)"
        )
    return profile


def read_state(profile: ProfileConfig, info: SnapshotInfo | None = None) -> State:
    """Snapshot + journal as of now; no lock taken, nothing written."""
    url = database.database_of(profile)
    state = database.read_state(profile, url) if url else load_state(profile, info=info)
    report_settings(profile, state)
    return state


def report_settings(profile: ProfileConfig, state: State) -> None:
    """The store's cap and retention are the bridge's, stored with the data; a different
    value given to this command (env or TOML) is not applied: say so, in one line."""
    report_stored_settings(profile, state.settings)


def report_stored_settings(profile: ProfileConfig, stored: StoreSettings | None) -> None:
    if stored is None:
        return
    names = ("max_messages", "retention_days")
    given = [
        f"{name}={getattr(profile, name)}"
        for name in names
        if name in profile.explicit and getattr(profile, name) != getattr(stored, name)
    ]
    if given:
        ours = ", ".join(f"{name}={getattr(stored, name)}" for name in names)
        print(
            f"sessions-admin: warning: profile {profile.slug!r} stores {ours} with its data "
            f"(the bridge's settings); using those, not {', '.join(given)} given to this command",
            file=sys.stderr,
        )


def report_result_settings(profile: ProfileConfig, result: dict[str, Any]) -> None:
    """`report_settings` for the settings an operation's result names (the store's own, as
    the bridge or the store opened here has them)."""
    stored = result.get("settings")
    report_stored_settings(profile, settings_from_dict(stored) if stored else None)


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


def check_timeout(args: argparse.Namespace) -> float:
    """--timeout of a write: how long a running bridge may stay silent."""
    timeout = float(args.timeout)
    if not 0 < timeout <= 86400:
        raise UsageError("--timeout must be more than 0 seconds (and at most a day)")
    return timeout


def parse_since(text: str, now_ms: int) -> int:
    """`7d`, `24h`, `30m` ago, or an ISO date/time (UTC), as ms since the epoch."""
    match = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if match:
        unit = {"d": DAY_MS, "h": 3600_000, "m": 60_000}[match.group(2)]
        return now_ms - int(match.group(1)) * unit
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r}: use 7d, 24h, 30m or a date like 2026-11-01") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def now_ms() -> int:
    return int(time.time() * 1000)


def seed_entry(conv: Conversation) -> list[Any]:
    """One `[key, conversation]` pair of the seed's sessions.json, without internal fields."""
    data = conv.to_seed()
    data.pop("seq", None)
    data.pop("appended", None)
    return [conv.key, data]


# -- read commands ----------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    profile = resolve_profile(args)
    state = read_state(profile)
    views = sorted(state.views(), key=lambda v: v.last_activity, reverse=True)
    if args.since:
        cutoff = parse_since(args.since, now_ms())
        views = [v for v in views if v.last_activity >= cutoff]
    if args.limit is not None:
        if args.limit < 0:
            raise UsageError("--limit must be 0 or more")
        views = views[: args.limit]
    if args.json:
        render.emit_json([render.conversation_summary(v) for v in views])
    elif views:
        print(render.list_table(views))
    else:
        print(f"no conversations in profile {profile.slug!r}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    profile = resolve_profile(args)
    state = read_state(profile)
    key = conversation_key(state, args.key)
    view = state.get(key)
    if view is None:
        raise BridgeError(f"no conversation {key!r} in profile {profile.slug!r}")
    if args.json:
        render.emit_json(
            {**render.conversation_summary(view), "messages": [m.to_dict() for m in view.messages]}
        )
    else:
        print(render.conversation_text(view))
    return 0


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def profile_stats(profile: ProfileConfig) -> dict[str, Any]:
    state = read_state(profile)
    roles = {"user": 0, "assistant": 0}
    for conv in state.conversations.values():
        for message in conv.messages:
            roles[message.role] = roles.get(message.role, 0) + 1
    activity = [c.last_activity for c in state.conversations.values()]
    url = database.database_of(profile)
    snapshot = layout.snapshot_path(profile.state_dir)
    snapshot_age = round(time.time() - snapshot.stat().st_mtime) if snapshot.exists() else None
    settings = state.settings
    stats = {
        "profile": profile.slug,
        # The store's own, set by the bridge (None: not stored yet, nothing capped).
        "max_messages": settings.max_messages if settings else None,
        "retention_days": settings.retention_days if settings else None,
        "conversations": len(state.conversations),
        "messages": sum(roles.values()),
        "by_role": roles,
        "oldest_activity": min(activity, default=None),
        "newest_activity": max(activity, default=None),
        "outbox": len(state.outbox),
        "seen_ids": len(state.seen),
        "media_files": len(state.media_files),
        "media_pending": len(state.media_jobs),
        "media_bytes": _dir_size(layout.media_dir(profile.state_dir)),
        "store_bytes": _dir_size(profile.state_dir) - _dir_size(profile.state_dir / "backups"),
        "snapshot_bytes": snapshot.stat().st_size if snapshot.exists() else 0,
        "snapshot_age_seconds": snapshot_age,
        "journal_bytes": _dir_size(layout.journal_dir(profile.state_dir)),
        "running": layout.lock_holder(profile.state_dir) is not None,
        # Business hours as configured for this profile: open or closed now, or always.
        "hours": profile.hours.describe(datetime.now(tz=UTC))
        if profile.hours is not None
        else "always",
        "hours_spec": profile.hours.spec if profile.hours is not None else None,
    }
    if url:  # the sizes are the database's; "running" is not known from here
        stats.update(database.stats(profile, url, state), running=False)
    return stats


def _stats_text(stats: dict[str, Any]) -> str:
    age = stats["snapshot_age_seconds"]
    rows = [
        ("profile", stats["profile"] + (" (running)" if stats["running"] else " (stopped)")),
        ("conversations", stats["conversations"]),
        (
            "messages",
            f"{stats['messages']} (user {stats['by_role']['user']}, "
            f"assistant {stats['by_role']['assistant']})",
        ),
        ("oldest activity", render.when(stats["oldest_activity"])),
        ("newest activity", render.when(stats["newest_activity"])),
        ("outbox", f"{stats['outbox']} repl{'y' if stats['outbox'] == 1 else 'ies'} waiting"),
        ("store on disk", f"{stats['store_bytes']:,} bytes"),
        (
            "snapshot",
            f"{stats['snapshot_bytes']:,} bytes, "
            + (f"{age} s old" if age is not None else "none yet"),
        ),
        ("journal", f"{stats['journal_bytes']:,} bytes"),
        (
            "media",
            f"{stats['media_files']} file(s), {stats['media_bytes']:,} bytes"
            + (f", {stats['media_pending']} to fetch" if stats["media_pending"] else ""),
        ),
        (
            "business hours",
            f"{stats['hours']} now ({stats['hours_spec']})"
            if stats["hours_spec"]
            else "always open (no hours configured)",
        ),
        (
            "keeps",
            f"{stats['max_messages']} messages a conversation, idle ones "
            f"{stats['retention_days']} days"
            if stats["max_messages"] is not None
            else "not set yet (set by the bridge at its next start)",
        ),
    ]
    return "\n".join(f"{k + ':':<17}{v}" for k, v in rows)


def cmd_stats(args: argparse.Namespace) -> int:
    if args.all_profiles:
        settings = load_settings(config_path=args.config, var_dir=args.var_dir)
        root = settings.var_dir / "profiles"
        slugs = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        configured = {p.slug: p for p in settings.profiles}
        profiles = [
            configured.get(s)
            or replace(settings.profiles[0], slug=s, state_dir=root / s, key=None, key_file=None)
            for s in slugs
        ]
    else:
        profiles = [resolve_profile(args)]
    all_stats = [profile_stats(p) for p in profiles]
    if args.json:
        render.emit_json(all_stats if args.all_profiles else all_stats[0])
    else:
        print("\n\n".join(_stats_text(s) for s in all_stats) or "no profiles")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    profile = resolve_profile(args)
    state = read_state(profile)
    if args.key is not None:
        key = conversation_key(state, args.key)
        conv = state.conversations.get(key)
        if conv is None:
            raise BridgeError(f"no conversation {key!r} in profile {profile.slug!r}")
        convs = [conv]
    else:
        convs = list(state.conversations.values())
    render.emit_json([seed_entry(c) for c in convs])
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Copy the profile between its file store and a database (admin/database.py)."""
    selected = (args.profile,) if args.profile else ()
    settings = load_settings(config_path=args.config, selected=selected, var_dir=args.var_dir)
    return database.cmd_migrate(args, settings.profiles[0])


# -- write commands ---------------------------------------------------------------------------


def import_parts(conversations: list[tuple[str, list[Message]]]) -> list[dict[str, Any]]:
    """The `import` operation's requests: about IMPORT_PART bytes of conversations each, so a
    large file reaches a running bridge in parts it takes one at a time (each conversation
    whole in one part). A conversation too large for any request is refused before anything
    is sent."""
    parts: list[dict[str, Any]] = []
    batch: list[tuple[str, list[Message]]] = []
    size = 0
    for key, messages in conversations:
        encoded = len(orjson.dumps(import_arguments([(key, messages)])))
        if encoded > MAX_REQUEST - 1024:
            raise BridgeError(
                f"conversation {key!r} is {encoded:,} bytes, too large to send to a running "
                "bridge; stop the bridge and import again (nothing was imported)"
            )
        if batch and size + encoded > IMPORT_PART:
            parts.append(import_arguments(batch))
            batch, size = [], 0
        batch.append((key, messages))
        size += encoded
    if batch:
        parts.append(import_arguments(batch))
    return parts


def cmd_import(args: argparse.Namespace) -> int:
    profile = resolve_profile(args)
    timeout = check_timeout(args)
    conversations = load_seed_file(args.file)  # checked whole before anything is written
    results = writer.perform(profile, "import", import_parts(conversations), timeout)
    counts = {
        name: sum(int(r[name]) for r in results)
        for name in ("conversations", "messages", "skipped_expired", "over_cap")
    }
    stored = results[-1]["settings"] if results else None
    if results:
        report_result_settings(profile, results[-1])
    if args.json:
        render.emit_json({"imported": counts, "file": str(args.file)})
        return 0
    print(
        f"imported {counts['messages']} new message(s) into {counts['conversations']} "
        f"conversation(s) of profile {profile.slug!r} from {args.file}"
    )
    if counts["skipped_expired"]:
        print(
            f"skipped {counts['skipped_expired']} conversation(s) idle for more than the "
            f"retention period ({stored['retention_days'] if stored else None} days, stored "
            "with the data: the bridge's retention_days sets it when it starts)"
        )
    if counts["over_cap"]:
        print(
            f"left out the oldest {counts['over_cap']} message(s) beyond the store's cap of "
            f"{stored['max_messages'] if stored else None} per conversation"
        )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    profile = resolve_profile(args)
    (result,) = writer.perform(profile, "delete", [{"key": args.key}], check_timeout(args))
    report_result_settings(profile, result)
    print(f"deleted conversation {result['key']} from profile {profile.slug!r}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    if args.older_than < 1:
        raise UsageError("--older-than must be at least 1 day")
    profile = resolve_profile(args)
    (result,) = writer.perform(
        profile, "prune", [{"older_than_days": args.older_than}], check_timeout(args)
    )
    report_result_settings(profile, result)
    if args.json:
        render.emit_json({"deleted": result["deleted"]})
    else:
        print(
            f"pruned {result['deleted']} conversation(s) idle for more than {args.older_than} days"
        )
    return 0


# -- backups and keys -------------------------------------------------------------------------


def _stamp() -> str:
    return datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%S%fZ")


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
    written = _summary(state)
    del state  # the read-back below needs the memory (when the caller keeps no reference)
    problem: str | None = None
    try:
        check = State()
        read_snapshot(path, keyring, profile.slug, check)
    except CorruptStateError as exc:
        problem = str(exc)
    else:
        if _summary(check) != written:
            problem = f"it holds {_summary(check)} instead of {written}"
        del check
    if problem is not None:
        bad = archives.set_aside_bad(path)
        raise BridgeError(
            f"backup {path} failed its check, kept as {bad} and no older archive was "
            f"removed: {problem}"
        )
    return size, {**written, "media_files": media_files, "media_missing": media_missing}


def _check_archive(profile: ProfileConfig, path: Path, info: SnapshotInfo | None = None) -> State:
    if not path.is_file():
        raise UsageError(f"no such archive: {path}")
    state = State()  # the archive's own settings come with it
    read_snapshot(path, load_keyring(profile, create=False), profile.slug, state, info)
    return state


def _summary(state: State) -> dict[str, int]:
    return {
        "conversations": len(state.conversations),
        "messages": state.message_count(),
        "outbox": len(state.outbox),
        "seen_ids": len(state.seen),
    }


def cmd_verify(args: argparse.Namespace) -> int:
    """Decrypt and parse everything; any problem is exit 1 with the file and the cause."""
    profile = resolve_profile(args)
    keyring = load_keyring(profile, create=False)
    info = SnapshotInfo()
    if args.archive is not None:
        state, what = _check_archive(profile, args.archive, info), str(args.archive)
        directory = admin_media.companion(args.archive)
    else:
        state, what = read_state(profile, info), f"profile {profile.slug!r} store"
        directory = layout.media_dir(profile.state_dir)
    for conv in state.conversations.values():
        conv.messages  # noqa: B018 (decodes a packed conversation: CorruptStateError if bad)
    url = database.database_of(profile)
    if args.archive is None and url:
        # The postgres store: every file the database holds, fetched as sealed, checked here.
        with tempfile.TemporaryDirectory(prefix="bridge-verify-") as fetched:
            copied = admin_media.fetch_from_database(
                profile, url, keyring, list(state.media_files), Path(fetched)
            )
            files = admin_media.media_store(profile, keyring, Path(fetched))
            media = admin_media.check_media(files, state)
            media.damaged.extend(copied.damaged)
    else:
        media = admin_media.check_media(admin_media.media_store(profile, keyring, directory), state)
    summary = _summary(state)
    if media.damaged:
        for problem in media.damaged:
            print(f"sessions-admin: media: {problem}", file=sys.stderr)
        raise BridgeError(f"{what}: {len(media.damaged)} media file(s) damaged (listed above)")
    described = info.describe() if info.version else "no snapshot yet (journal only)"
    if args.json:
        fmt = {
            "snapshot": info.version or None,
            "frames": info.frames,
            "compressed_frames": info.compressed_frames,
            "packed_conversations": info.cold,
            "bytes": info.file_bytes,
            "json_bytes": info.json_bytes,
        }
        render.emit_json({"ok": True, "checked": what, **summary, **media.as_json(), "format": fmt})
    else:
        print(
            f"ok: {what}: {summary['conversations']} conversations, {summary['messages']} "
            f"messages, {summary['outbox']} queued replies, {media.checked} media files"
            + (f" ({len(media.missing)} missing: erased or dropped)" if media.missing else "")
            + f"; {described}"
        )
    return 0


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
    state = _check_archive(profile, args.archive)
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
    state = _check_archive(profile, archive)
    keep = layout.backups_dir(profile.state_dir) / f"pre-restore-{_stamp()}"
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
    keep = layout.backups_dir(profile.state_dir) / f"pre-restore-{_stamp()}"
    secure_dir(keep)
    snapshot = layout.snapshot_path(profile.state_dir)
    for path in [snapshot, *(segment_path(journal, s) for s in segments)]:
        if path.exists():
            copy = keep / path.name
            shutil.copy2(path, copy)
            fd = os.open(copy, os.O_RDONLY)
            try:
                os.fsync(fd)  # the originals go below: their copies must be on disk first
            finally:
                os.close(fd)
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
        fd = os.open(segment_path(journal, next_segment), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(journal)
    asyncio.run(write_snapshot(snapshot, state, keyring, profile.slug, next_segment))
    for s in segments:  # older than the snapshot's segment: no longer read
        if s < next_segment:
            segment_path(journal, s).unlink()
    fsync_dir(journal)
    return keep


def cmd_rotate_key(args: argparse.Namespace) -> int:
    """New active key; the whole store re-encrypted under it; old keys kept for old backups
    (bridge/control/writes.py `rotate_key` says how, with each kind of key source)."""
    profile = resolve_profile(args)
    (result,) = writer.perform(
        profile,
        "rotate-key",
        [{}],
        check_timeout(args),
        progress=render.terminal_progress("re-encrypting"),
    )
    report_result_settings(profile, result)
    if args.json:
        render.emit_json(result)
        return 0
    active, source = result["key"], result["source"]
    if "database" in result:  # admin/database.py: the PostgreSQL store, re-sealed live
        if result["rekeyed"]:
            print(
                f"profile {profile.slug!r}: now encrypted with key {active}, the first key of "
                f"{source} (database {result['database']}: {result['records']} record(s)"
                f"{', the snapshot' if result['snapshot'] else ''}, "
                f"{result['media_frames']} media frame(s) re-encrypted); keep the "
                "older key(s) after it on every replica as long as backups (pg_dump, archives) "
                "made with them exist"
            )
        else:
            print(
                f"profile {profile.slug!r}: everything in the database {result['database']} is "
                f"already encrypted with key {active}, the first key of {source}; nothing was "
                "re-encrypted (to rotate, the new key must come first)"
            )
        return 0
    if source is None:
        print(
            f"profile {profile.slug!r}: now encrypted with key {active}; older keys kept in "
            f"{result['key_file']} for existing backups"
        )
    elif result["rekeyed"]:
        print(
            f"profile {profile.slug!r}: now encrypted with key {active}, the first key of "
            f"{source}; keep the older key(s) there as long as backups made with them exist"
        )
    else:
        restart = (
            " (the running bridge reads BRIDGE_KEY and credentials only when it starts: "
            "restart it after changing them)"
            if result["running"] and not source.startswith("BRIDGE_KEY_FILE")
            else ""
        )
        print(
            f"profile {profile.slug!r}: everything is already encrypted with key {active}, the "
            f"first key of {source}; nothing was re-encrypted (to rotate, the new key must "
            f"come first){restart}"
        )
    return 0
