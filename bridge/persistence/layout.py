"""Where a profile's files live inside its state directory (`var/profiles/<slug>/`)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from bridge.persistence.files import secure_dir

SNAPSHOT = "snapshot.wab"
JOURNAL = "journal"
LOCK = "lock"
KEY = "key"
BACKUPS = "backups"
MEDIA = "media"
CONTROL_SOCKET = "control.sock"
EVENTS = "events.jsonl"


def snapshot_path(state_dir: Path) -> Path:
    return state_dir / SNAPSHOT


def journal_dir(state_dir: Path) -> Path:
    return state_dir / JOURNAL


def lock_path(state_dir: Path) -> Path:
    return state_dir / LOCK


def key_path(state_dir: Path) -> Path:
    return state_dir / KEY


def backups_dir(state_dir: Path) -> Path:
    return state_dir / BACKUPS


def media_dir(state_dir: Path) -> Path:
    """The encrypted media files (bridge/media/store.py)."""
    return state_dir / MEDIA


def control_socket_path(state_dir: Path) -> Path:
    """The running bridge's control channel (bridge/control/): operators' writes go there."""
    return state_dir / CONTROL_SOCKET


def events_path(state_dir: Path) -> Path:
    return state_dir / EVENTS


def lock_holder(state_dir: Path) -> int | None:
    """The pid of the process holding the profile lock, or None when nobody runs it."""
    path = lock_path(state_dir)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def run_status(state_dir: Path) -> tuple[str, int | None]:
    """Whether the profile's bridge is `running` (and its pid), `stopped` (stopped cleanly, or
    never started), or `crashed`: the last process that held the lock died without releasing
    it cleanly (kill -9, power loss, a failed start) and none has started since; the pid is
    the dead one's, when the lock file still names it."""
    holder = lock_holder(state_dir)
    if holder is not None:
        return "running", holder if holder > 0 else None
    try:
        text = lock_path(state_dir).read_bytes().strip()
    except FileNotFoundError:
        return "stopped", None
    if text.isdigit():
        return "crashed", int(text)
    return "stopped", None


def create_profile_dir(state_dir: Path) -> None:
    secure_dir(state_dir)
    secure_dir(journal_dir(state_dir))
