"""`verify`: decrypt and parse the live store or an archive, media files included."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from admin import database, render
from admin import media as admin_media
from admin.backups import check_archive, state_summary
from admin.store import read_state, resolve_profile
from bridge.errors import BridgeError
from bridge.persistence import layout
from bridge.persistence.keys import load_keyring
from bridge.persistence.snapshot import SnapshotInfo


def cmd_verify(args: argparse.Namespace) -> int:
    """Decrypt and parse everything; any problem is exit 1 with the file and the cause."""
    profile = resolve_profile(args)
    keyring = load_keyring(profile, create=False)
    info = SnapshotInfo()
    if args.archive is not None:
        state, what = check_archive(profile, args.archive, info), str(args.archive)
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
    summary = state_summary(state)
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
