"""`list`, `show` and `stats`: reads of snapshot + journal as of now (or of the database),
without the profile lock, so they work while the bridge runs and change nothing."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from admin import database, render
from admin.arguments import UsageError, parse_since
from admin.store import read_state, resolve_profile
from bridge.config import ProfileConfig, load_settings
from bridge.control.writes import conversation_key
from bridge.errors import BridgeError
from bridge.operators import now_ms
from bridge.persistence import layout


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
