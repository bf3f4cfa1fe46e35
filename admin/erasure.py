"""`delete` and `prune`: erasing one user's conversation (a data request) or every one idle
too long, written by the store's one writer (admin/writer.py)."""

from __future__ import annotations

import argparse

from admin import render, writer
from admin.arguments import UsageError, check_timeout
from admin.store import report_result_settings, resolve_profile


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
