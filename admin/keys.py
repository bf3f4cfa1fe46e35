"""`rotate-key`: the whole store re-encrypted under a new active key, written by the store's
one writer (admin/writer.py)."""

from __future__ import annotations

import argparse

from admin import render, writer
from admin.arguments import check_timeout
from admin.store import report_result_settings, resolve_profile


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
