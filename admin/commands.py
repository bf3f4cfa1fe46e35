"""The sessions-admin commands; each returns the process exit code."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from admin import archives, render
from admin.seedfile import load_seed_file
from bridge.config import ProfileConfig, load_settings
from bridge.conversations import Conversation, Message
from bridge.errors import BridgeError, ConfigError, CorruptStateError, ProfileLockedError
from bridge.eventlog import EventLog
from bridge.identities import normalize_key
from bridge.persistence import layout
from bridge.persistence.crypto import Keyring
from bridge.persistence.files import fsync_dir, secure_dir
from bridge.persistence.journal import list_segments, segment_path
from bridge.persistence.keys import load_keyring, new_key, write_key_file
from bridge.persistence.lock import ProfileLock
from bridge.persistence.snapshot import SnapshotInfo, read_snapshot, write_snapshot
from bridge.records import IdentityLinked, MessageAdded, OutboxQueued, Record
from bridge.state import State
from bridge.store.durable import DurableStore, load_state

DAY_MS = 24 * 3600 * 1000


class UsageError(ConfigError):
    """Bad arguments: exit code 2."""


# -- profiles and stores ----------------------------------------------------------------------


def resolve_profile(args: argparse.Namespace) -> ProfileConfig:
    """The profile named by --profile, from the TOML file or the environment."""
    selected = (args.profile,) if args.profile else ()
    settings = load_settings(config_path=args.config, selected=selected, var_dir=args.var_dir)
    profile = settings.profiles[0]
    if not profile.state_dir.is_dir():
        raise BridgeError(
            f"no store for profile {profile.slug!r} at {profile.state_dir} (has the bridge run "
            "with this profile? is --var-dir right?)"
        )
    return profile


def read_state(profile: ProfileConfig, info: SnapshotInfo | None = None) -> State:
    """Snapshot + journal as of now; no lock taken, nothing written."""
    state = load_state(profile, info=info)
    report_settings(profile, state)
    return state


def report_settings(profile: ProfileConfig, state: State) -> None:
    """The store's cap and retention are the bridge's, stored with the data; a different
    value given to this command (env or TOML) is not applied: say so, in one line."""
    stored = state.settings
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


def refusal(exc: ProfileLockedError, profile: ProfileConfig) -> BridgeError:
    """Writes never go around a running bridge: say which process holds the profile."""
    return BridgeError(
        f"{exc}; stop the bridge for this profile first "
        f"(e.g. systemctl stop whatsapp-bridge@{profile.slug}); nothing was changed"
    )


@contextmanager
def exclusive(profile: ProfileConfig) -> Iterator[None]:
    """Hold the profile lock for a write that does not go through DurableStore."""
    lock = ProfileLock(profile.state_dir, profile.slug)
    try:
        lock.acquire()
    except ProfileLockedError as exc:
        raise refusal(exc, profile) from None
    try:
        yield
    finally:
        lock.release()


def write_store(profile: ProfileConfig, change: Callable[[DurableStore], Awaitable[None]]) -> None:
    """Open the store, apply `change` through journaled commits, close.

    Closing takes a snapshot, so the change is durable in the same form the bridge writes.
    The store keeps its own settings: nothing is capped or expired that `change` did not ask.
    """

    async def run() -> None:
        store = DurableStore(profile, enforce_settings=False)
        try:
            await store.open()  # takes the profile lock
        except ProfileLockedError as exc:
            raise refusal(exc, profile) from None
        try:
            report_settings(profile, store.state)
            await change(store)
        finally:
            await store.close()

    asyncio.run(run())


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


def conversation_key(state: State, typed: str) -> str:
    """The stored key for what an operator typed: a phone in any notation is its digits; a
    user id linked to a phone is the phone's conversation."""
    return state.resolve(normalize_key(typed))


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
    snapshot = layout.snapshot_path(profile.state_dir)
    snapshot_age = round(time.time() - snapshot.stat().st_mtime) if snapshot.exists() else None
    settings = state.settings
    return {
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
        "store_bytes": _dir_size(profile.state_dir) - _dir_size(profile.state_dir / "backups"),
        "snapshot_bytes": snapshot.stat().st_size if snapshot.exists() else 0,
        "snapshot_age_seconds": snapshot_age,
        "journal_bytes": _dir_size(layout.journal_dir(profile.state_dir)),
        "running": layout.lock_holder(profile.state_dir) is not None,
    }


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


# -- write commands ---------------------------------------------------------------------------


def merge_records(state: State, key: str, incoming: list[Message]) -> tuple[list[Record], int]:
    """Records that make `key` hold the union of its messages and `incoming`, in time order,
    and how many of those the store's cap leaves out (the oldest).

    A message counts as present when its id matches, or (for the seed's id-less messages) its
    role, timestamp and text all do, so importing the same file twice changes nothing.
    """
    existing = list(state.conversations[key].messages) if key in state.conversations else []
    ids = {m.id for m in existing if m.id}
    triples = {(m.role, m.timestamp, m.content) for m in existing}
    new = [
        m
        for m in incoming
        if not (m.id and m.id in ids) and (m.role, m.timestamp, m.content) not in triples
    ]
    if not new:
        return [], 0
    merged = sorted(existing + new, key=lambda m: m.timestamp)
    total = len(merged)
    if state.max_messages is not None:  # the store's own cap, as the bridge applies it
        merged = merged[-state.max_messages :]
    deletion = state.deletion(key)
    records: list[Record] = [deletion] if deletion is not None else []
    records.extend(MessageAdded(key, m) for m in merged)
    if existing:
        # The erasure above drops the user ids linked to `key`: link them again.
        records.extend(IdentityLinked(u, k) for u, k in state.aliases.items() if k == key)
    # It also takes the user's queued replies with it; they were not imported over, so they
    # go back in the queue, in their order.
    records.extend(OutboxQueued(item) for item in state.queued_replies(key))
    return records, total - len(merged)


def cmd_import(args: argparse.Namespace) -> int:
    profile = resolve_profile(args)
    conversations = load_seed_file(args.file)  # checked whole before anything is written
    counts = {"conversations": 0, "messages": 0, "skipped_expired": 0, "over_cap": 0}
    stored: dict[str, int | None] = {"retention_days": None, "max_messages": None}

    async def change(store: DurableStore) -> None:
        state = store.state
        settings = state.settings
        if settings is not None:
            stored.update(
                retention_days=settings.retention_days, max_messages=settings.max_messages
            )
        # Conversations idle past the store's retention would be erased by the bridge's next
        # snapshot: leave them out and say so. (No stored settings: the bridge decides later.)
        cutoff = now_ms() - settings.retention_days * DAY_MS if settings else None
        for key, messages in conversations:
            if cutoff is not None and max((m.timestamp for m in messages), default=0) < cutoff:
                counts["skipped_expired"] += 1
                continue
            conv = state.conversations.get(key)
            before = len(conv.messages) if conv else 0
            records, left_out = merge_records(state, key, messages)
            if records:
                await store.commit(records)
                counts["conversations"] += 1
                counts["messages"] += len(state.conversations[key].messages) - before
                counts["over_cap"] += left_out

    write_store(profile, change)
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
            f"retention period ({stored['retention_days']} days, stored with the data: the "
            "bridge's retention_days sets it when it starts)"
        )
    if counts["over_cap"]:
        print(
            f"left out the oldest {counts['over_cap']} message(s) beyond the store's cap of "
            f"{stored['max_messages']} per conversation"
        )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    profile = resolve_profile(args)

    deleted: list[str] = []

    async def change(store: DurableStore) -> None:
        key = conversation_key(store.state, args.key)
        deletion = store.state.deletion(key)
        if deletion is None:
            raise BridgeError(f"no conversation {key!r} in profile {profile.slug!r}")
        await store.commit([deletion])
        deleted.append(key)

    write_store(profile, change)
    print(f"deleted conversation {deleted[0]} from profile {profile.slug!r}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    if args.older_than < 1:
        raise UsageError("--older-than must be at least 1 day")
    profile = resolve_profile(args)
    deleted: list[str] = []

    async def change(store: DurableStore) -> None:
        erasures = store.state.expired(now_ms(), args.older_than * DAY_MS)
        if erasures:
            await store.commit(erasures)
        deleted.extend(e.key for e in erasures)

    write_store(profile, change)
    if args.json:
        render.emit_json({"deleted": len(deleted)})
    else:
        print(f"pruned {len(deleted)} conversation(s) idle for more than {args.older_than} days")
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
                "verified": True,
                "removed": [str(p) for p in removed],
            }
        )
    else:
        print(path)  # alone on stdout, for scripts
        for old in removed:
            print(f"removed old archive {old}", file=sys.stderr)
    return 0


def write_checked_archive(
    profile: ProfileConfig, target_dir: Path
) -> tuple[Path, int, dict[str, int]]:
    """Write the archive atomically, then read it back whole and compare what it holds with
    what was written: a disk or a mount that returns other bytes than it took must not go
    unnoticed until the day of a restore. Returns (path, size, summary)."""
    keyring = load_keyring(profile, create=False)
    state = read_state(profile)
    if target_dir == layout.backups_dir(profile.state_dir):
        secure_dir(target_dir)  # inside the profile directory: ours
    else:
        archives.backup_dir(target_dir)
    archives.remove_stale_temps(target_dir, profile.slug)
    path = target_dir / archives.archive_name(profile.slug)
    size = asyncio.run(
        write_snapshot(path, state, keyring, profile.slug, 0, render.terminal_progress("backup"))
    )
    written = _summary(state)
    del state  # the read-back below needs the memory
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
    return path, size, written


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
    info = SnapshotInfo()
    if args.archive is not None:
        state, what = _check_archive(profile, args.archive, info), str(args.archive)
    else:
        state, what = read_state(profile, info), f"profile {profile.slug!r} store"
    summary = _summary(state)
    described = info.describe() if info.version else "no snapshot yet (journal only)"
    if args.json:
        fmt = {
            "snapshot": info.version or None,
            "frames": info.frames,
            "compressed_frames": info.compressed_frames,
            "bytes": info.file_bytes,
            "json_bytes": info.json_bytes,
        }
        render.emit_json({"ok": True, "checked": what, **summary, "format": fmt})
    else:
        print(
            f"ok: {what}: {summary['conversations']} conversations, {summary['messages']} "
            f"messages, {summary['outbox']} queued replies; {described}"
        )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Replace the store with an archive. The current files are kept in backups/ first.

    Every step leaves a store that starts, so a kill at any point is harmless: the new
    snapshot names a journal segment that exists before the snapshot is renamed into place
    (an empty segment after the old ones is a rotation that did not happen, for the old
    store), and the old segments go only once the new snapshot is durable."""
    profile = resolve_profile(args)
    state = _check_archive(profile, args.archive)
    with exclusive(profile):
        try:
            keep = _restore(profile, state)
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


def _restore(profile: ProfileConfig, state: State) -> Path:
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
    """New active key; the whole store re-encrypted under it; old keys kept for old backups.

    With the key file the bridge generated in the profile directory, rotate-key makes the
    new key and writes it there. A key from outside (BRIDGE_KEY, BRIDGE_KEY_FILE, a systemd
    credential) is the operator's to change: they put the new key first and the old one
    after it in that source, and rotate-key re-encrypts the store under the first key.
    """
    profile = resolve_profile(args)
    if profile.key or profile.key_file:
        return _rotate_to_external_key(profile)
    old = load_keyring(profile, create=False)

    async def change(store: DurableStore) -> None:
        keyring = Keyring([new_key(), *old.keys])
        # Key file first: a crash after it still has every key needed to read everything.
        write_key_file(layout.key_path(profile.state_dir), keyring.keys)
        await store.rekey(keyring, render.terminal_progress("re-encrypting"))

    write_store(profile, change)
    new = load_keyring(profile, create=False)
    print(
        f"profile {profile.slug!r}: now encrypted with key {new.active_id.decode()}; older keys "
        f"kept in {layout.key_path(profile.state_dir)} for existing backups"
    )
    return 0


def _rotate_to_external_key(profile: ProfileConfig) -> int:
    """Re-encrypt under the first key of the operator's own keyring (see cmd_rotate_key)."""
    source = (
        f"BRIDGE_KEY_FILE ({profile.key_file})"
        if profile.key_file
        else "BRIDGE_KEY or the systemd credential 'key'"
    )
    keyring = load_keyring(profile, create=False)
    if len(keyring.keys) < 2:
        raise BridgeError(
            f"this profile's key comes from {source}, which rotate-key does not write: put a "
            "new key (32 random bytes, URL-safe base64) on the first line there and the "
            "current key on the line after it, make the bridge and this command see the same, "
            "then run rotate-key: it re-encrypts the store under the first key"
        )
    active = keyring.active_id.decode()
    outcome: dict[str, bool] = {}

    async def change(store: DurableStore) -> None:
        older = store.keyring.opened - {store.keyring.active_id}
        outcome["rekeyed"] = bool(older)
        if older:
            await store.rekey(store.keyring, render.terminal_progress("re-encrypting"))

    write_store(profile, change)
    if outcome["rekeyed"]:
        print(
            f"profile {profile.slug!r}: now encrypted with key {active}, the first key of "
            f"{source}; keep the older key(s) there as long as backups made with them exist"
        )
    else:
        print(
            f"profile {profile.slug!r}: everything is already encrypted with key {active}, the "
            f"first key of {source}; nothing was re-encrypted (to rotate, the new key must "
            "come first)"
        )
    return 0
