"""`sessions-admin`: the operator's command line over a profile's encrypted store.

Read commands load snapshot + journal without the profile lock, so they see the current state
even while the bridge runs. Commands that write (delete, prune, import, rotate-key) go to the
running bridge through its control channel, which commits them through its own store, or,
when no bridge runs, take the lock and write directly (admin/writer.py): one writer per store
either way. `restore` replaces the store's files and needs the bridge stopped. With the
PostgreSQL store, writes (restore included) go to the database directly, live
(admin/database.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from admin import (
    backups,
    erasure,
    keys,
    operator_commands,
    profiles,
    reads,
    restore,
    transfer,
    verify,
    writer,
)
from admin import media as admin_media
from bridge.errors import BridgeError, ConfigError
from bridge.ops import logs

EPILOG = """\
examples:
  sessions-admin list --limit 20                 most recently active conversations
  sessions-admin show 34600000001                one conversation, readable
  sessions-admin media 34600000001 wamid.HBg... -o photo.jpg  one message's file, decrypted
  sessions-admin stats --all-profiles
  sessions-admin backup --keep 14                encrypted archive into var/profiles/<p>/backups/
  sessions-admin verify                          decrypt and check the live store (exit 1 on problems)
  sessions-admin export "+34 600 000 001" > data.json  a user's data request (plaintext JSON!)
  sessions-admin import sessions.json            merge a plaintext sessions.json
  sessions-admin --profile shop delete 34600000001
  sessions-admin pause 34600000001 --for 2h       a person takes over for two hours
  sessions-admin send 34600000001 "Hola, soy Ana" --as ana
  sessions-admin resume 34600000001
  sessions-admin migrate --to-database postgresql://bridge@db/bridge  file store -> database

Reads and writes work while the bridge runs: import, delete, prune, rotate-key, pause,
resume and send are sent to the running bridge (its control socket
var/profiles/<p>/control.sock), which writes them; with no bridge running they write to the
store directly. restore needs the bridge stopped (with store = "postgres": restore,
import, delete, prune, pause, resume and send write the database live, replicas running).
Exit codes: 0 ok, 1 failure, 2 usage.
"""


KEY_HELP = (
    "the conversation: a phone number as you would type it (+34 600-000-001 and 34600000001 "
    "are the same) or a business-scoped user id"
)


def _options(parser: argparse.ArgumentParser, default: Any, flag_default: Any) -> None:
    """The options every command takes, before or after the command name."""
    parser.add_argument(
        "--profile", default=default, metavar="SLUG", help="profile (default: default)"
    )
    parser.add_argument(
        "--var-dir",
        type=Path,
        default=default,
        help="state directory (default ./var or BRIDGE_VAR_DIR)",
    )
    parser.add_argument("--config", type=Path, default=default, help="the bridge's TOML file")
    parser.add_argument(
        "--json", action="store_true", default=flag_default, help="machine-readable output"
    )


def _timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=writer.DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="give up when a running bridge stays silent this long (hung or stopped); "
        f"default {writer.DEFAULT_TIMEOUT:g}",
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _options(common, None, False)
    # A subcommand's own defaults would overwrite what was given before the command name
    # (`sessions-admin --profile shop list`), so there they are SUPPRESSed.
    sub_common = argparse.ArgumentParser(add_help=False)
    _options(sub_common, argparse.SUPPRESS, argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog="sessions-admin",
        description="Inspect and manage the bridge's encrypted conversation store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, help_text: str, func: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[sub_common])
        p.set_defaults(func=func)
        return p

    p = add("list", "one row per conversation, most recently active first", reads.cmd_list)
    p.add_argument("--limit", type=int, help="show at most N conversations")
    p.add_argument("--since", help="only active since: 7d, 24h, 30m or a date 2026-11-01")

    p = add("show", "a whole conversation: time, role, text", reads.cmd_show)
    p.add_argument("key", help=KEY_HELP)

    p = add(
        "media",
        "write one message's media file, decrypted (an operator's look, a data request)",
        admin_media.cmd_media,
    )
    p.add_argument("key", help=KEY_HELP)
    p.add_argument("wamid", help="the message's id, as `show` lists it under the entry")
    p.add_argument(
        "-o", "--output", required=True, help="the file to write (- for stdout); plaintext!"
    )

    p = add("stats", "counts, activity range, sizes on disk, outbox", reads.cmd_stats)
    p.add_argument("--all-profiles", action="store_true", help="every profile under the var dir")

    p = add(
        "backup", "write a consistent encrypted archive (works while running)", backups.cmd_backup
    )
    p.add_argument("--to", type=Path, help="directory (default var/profiles/<slug>/backups)")
    p.add_argument("--keep", type=int, default=14, help="keep the newest N archives (default 14)")

    p = add(
        "restore",
        "replace the store with an archive (bridge stopped; with the postgres store live, "
        "replicas running); the state replaced is kept in backups/pre-restore-<time>/",
        restore.cmd_restore,
    )
    p.add_argument(
        "archive",
        type=Path,
        help="an archive written by `sessions-admin backup` (var/profiles/<slug>/backups/*.wab)",
    )

    p = add(
        "verify",
        "decrypt and check the store or an archive; exit 1 on a problem",
        verify.cmd_verify,
    )
    p.add_argument(
        "archive",
        type=Path,
        nargs="?",
        help="an archive written by `sessions-admin backup` (default: the live store)",
    )

    p = add("export", "plaintext JSON on stdout, in the sessions.json format", transfer.cmd_export)
    p.add_argument("key", nargs="?", help="only this conversation: " + KEY_HELP)

    p = add("import", "merge a plaintext sessions.json", transfer.cmd_import)
    _timeout(p)
    p.add_argument(
        "file",
        type=Path,
        help='a sessions.json: [[key, {"messages": [...], ...}], ...] as `export` writes it',
    )

    p = add("delete", "erase one user's conversation", erasure.cmd_delete)
    p.add_argument("key", help=KEY_HELP)
    _timeout(p)

    p = add("prune", "erase conversations idle for more than DAYS", erasure.cmd_prune)
    _timeout(p)
    p.add_argument(
        "--older-than",
        type=int,
        required=True,
        metavar="DAYS",
        help="erase conversations whose last activity is more than DAYS days ago",
    )

    p = add("rotate-key", "re-encrypt everything under a new key", keys.cmd_rotate_key)
    p.description = (
        "Re-encrypt everything under a new key. With the key file the bridge made, a new key "
        "is generated first. With a key from BRIDGE_KEY, BRIDGE_KEY_FILE or a credential (and "
        "always with the postgres store), put the new key first and the current one after it "
        "there, then run this: everything is re-encrypted under the first key. With the "
        "postgres store this runs live, after every replica seals with the new key (README "
        '"Running several replicas": the rotation procedure).'
    )
    _timeout(p)

    p = add(
        "migrate",
        "copy the profile from its file store into a database, or back; verified",
        transfer.cmd_migrate,
    )
    p.add_argument("--to-database", metavar="URL", help="postgresql://... to copy into")
    p.add_argument("--from-database", metavar="URL", help="postgresql://... to copy from")

    operator_commands.add_commands(add, KEY_HELP)

    p = add(
        "profiles",
        "list, show, create or delete profiles, or read a profile's events",
        profiles.cmd_profiles,
    )
    p.add_argument(
        "action",
        choices=("list", "show", "create", "delete", "events"),
        nargs="?",
        default="list",
        help="list (default): status running/stopped/crashed and pid, sizes; show SLUG; "
        "create SLUG; delete SLUG: remove the profile's directory after a last backup; "
        "events SLUG: its event log",
    )
    p.add_argument("slug", nargs="?", help="profile for show/create/delete/events")
    p.add_argument("--yes", action="store_true", help="delete: do not ask")
    p.add_argument(
        "--no-backup", action="store_true", help="delete: without a last backup (unrecoverable)"
    )
    p.add_argument(
        "--to",
        type=Path,
        help="delete: where the last backup goes (default var/backups, outside the profile)",
    )
    return parser


WRITES = ("restore", "import", "delete", "prune", "rotate-key")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure("console", "warning")
    try:
        result: int = args.func(args)
        if result == 0 and args.command in WRITES:
            profiles.record_write(args, args.command)
    except BridgeError as exc:
        print(f"sessions-admin: error: {exc}", file=sys.stderr)
        # Usage and configuration mistakes are 2; everything else (corrupt data, a locked
        # profile, a missing conversation) is a failure: 1.
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sessions-admin list | head`
        return 0
    except OSError as exc:
        # A full or read-only disk under a write (a backup, say): one line, not a traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"sessions-admin: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    return result
