"""Backup archives: how they are named, where they go, which ones `--keep` may remove.

An archive appears under its name only once it is complete and on disk (written to a temp
file, fsynced, renamed, the directory fsynced: snapshot.py), so a crash or a full disk never
leaves a partial `.wab` that `--keep` would count or `restore` would take; the temp file a
killed backup leaves (`.<name>.<pid>.tmp`) is removed by the next backup into the directory.
A new archive is read back whole before anything older is pruned; one that does not read
back is renamed `<name>.bad` (out of `--keep`'s count, kept for a look).

An archive is `<slug>-<UTC stamp>.wab` with a fixed-width stamp, so names sort in time order
and the name alone says which profile wrote it. Several profiles (`shop`, `shop-eu`) may share
one backup directory: pruning matches the whole name against this profile's exact pattern,
so it never touches another profile's archives (a glob `shop-*.wab` would), nor files that
merely look alike, nor the archive just written.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

from bridge.persistence.files import pid_alive

SUFFIX = ".wab"
STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
STAMP_RE = r"\d{8}T\d{12}Z"  # what STAMP_FORMAT writes: date, T, hhmmss + microseconds, Z


def stamp() -> str:
    return datetime.now(tz=UTC).strftime(STAMP_FORMAT)


def archive_name(slug: str) -> str:
    return f"{slug}-{stamp()}{SUFFIX}"


def _own_temp(slug: str) -> re.Pattern[str]:
    """The temp file (files.temp_path) of an archive of `slug`, with its writer's pid."""
    return re.compile(re.escape(f".{slug}-") + STAMP_RE + re.escape(SUFFIX) + r"\.(\d+)\.tmp")


def remove_stale_temps(directory: Path, slug: str) -> list[Path]:
    """Remove the temp files of `slug`'s archives whose writer is dead (a backup killed
    while writing); another directory's files, or a backup still running, are left alone."""
    pattern = _own_temp(slug)
    removed = []
    for path in directory.iterdir():
        match = pattern.fullmatch(path.name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def set_aside_bad(path: Path) -> Path:
    """Rename an archive that failed its check out of the archives' pattern."""
    bad = path.with_name(path.name + ".bad")
    os.replace(path, bad)
    return bad


def own_archives(directory: Path, slug: str) -> list[Path]:
    """The archives `slug` wrote into `directory`, oldest first."""
    pattern = re.compile(re.escape(slug) + "-" + STAMP_RE + re.escape(SUFFIX))
    found = [p for p in directory.iterdir() if pattern.fullmatch(p.name) and p.is_file()]
    return sorted(found, key=lambda p: p.name)


def prune(directory: Path, slug: str, keep: int, written: Path) -> list[Path]:
    """Remove this profile's oldest archives beyond the newest `keep` (the one just
    `written` always among those kept); returns what was removed."""
    others = [p for p in own_archives(directory, slug) if p != written]
    removed = others[: max(0, len(others) - (keep - 1))]
    for path in removed:
        path.unlink(missing_ok=True)
        # The archive's media (admin/media.py): `<archive>.media/`.
        shutil.rmtree(path.with_name(path.name + ".media"), ignore_errors=True)
    return removed


def backup_dir(path: Path) -> None:
    """Create a backup directory private to its owner (0700), whatever the umask. One that
    exists already keeps its mode: it may be shared on purpose (a mount, a sync folder)."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise
        return  # made by someone else meanwhile: theirs, not ours
    os.chmod(path, 0o700)
