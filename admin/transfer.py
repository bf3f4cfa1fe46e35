"""Conversations in and out of a store: `export` and `import` in the seed's plaintext
sessions.json (admin/seedfile.py), `migrate` between the file store and a database
(admin/database.py)."""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from admin import database, render, writer
from admin.arguments import check_timeout
from admin.seedfile import load_seed_file
from admin.store import read_state, report_result_settings, resolve_profile
from bridge.config import load_settings
from bridge.control.protocol import MAX_REQUEST
from bridge.control.writes import conversation_key, import_arguments
from bridge.conversations import Conversation, Message
from bridge.errors import BridgeError

IMPORT_PART = 1024 * 1024  # bytes of conversations per request to a running bridge


def seed_entry(conv: Conversation) -> list[Any]:
    """One `[key, conversation]` pair of the seed's sessions.json, without internal fields."""
    data = conv.to_seed()
    data.pop("seq", None)
    data.pop("appended", None)
    return [conv.key, data]


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


def cmd_migrate(args: argparse.Namespace) -> int:
    """Copy the profile between its file store and a database (admin/database.py)."""
    selected = (args.profile,) if args.profile else ()
    settings = load_settings(config_path=args.config, selected=selected, var_dir=args.var_dir)
    return database.cmd_migrate(args, settings.profiles[0])
