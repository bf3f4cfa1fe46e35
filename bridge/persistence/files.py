"""File primitives that never leave a half-written file or a readable one behind."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from bridge.ops.logs import get_logger


def make_dirs(path: Path, mode: int = 0o700) -> list[Path]:
    """Create `path` and every missing parent with exactly `mode`, whatever the umask; return
    the directories created, outermost first. Directories that exist are left as they are.

    `Path.mkdir(parents=True)` gives the parents it creates 0777 minus the umask: under
    umask 000, `var/` and `var/profiles/` came out world-writable. Each level is made here
    with `mode` (the umask can only take bits away, never open it up), then set to `mode`
    exactly (a strict umask must not leave a directory we cannot use).
    """
    missing: list[Path] = []
    level = path
    while not level.exists():
        missing.append(level)
        level = level.parent
    created = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue  # made by someone else meanwhile: not ours to change
        os.chmod(directory, mode)
        created.append(directory)
    return created


def secure_dir(path: Path) -> None:
    """Create a directory readable by its owner only (and tighten one that exists)."""
    make_dirs(path, 0o700)
    mode = path.stat().st_mode & 0o777
    if mode != 0o700:
        os.chmod(path, 0o700)
        if mode & 0o077:
            # Whatever was written while it was open to others may have been read.
            get_logger().warning("state_dir_permissions_tightened", path=str(path), was=oct(mode))


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (POSIX needs the directory synced too)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make a file's bytes durable, as a copy must be (shutil.copy2 does not sync) before
    the original it stands for goes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def temp_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: named after the writing
    process, so a temp file a killed process left behind can be told from a live one's."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


_TEMP = re.compile(r"\..+\.(\d+)\.tmp")


def pid_alive(pid: int) -> bool:
    if pid in (0, os.getpid()):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_temps(directory: Path) -> list[tuple[Path, int]]:
    """Delete the temp files (`temp_path`) in `directory` whose writer is dead: what a
    kill -9 during a snapshot or a backup leaves, as large as the file being written.
    Another process's live temp file is left alone (backups are written without the profile
    lock); a pid reused since only delays the clean-up. Returns (path, size) of each."""
    removed = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    for path in entries:
        match = _TEMP.fullmatch(path.name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append((path, size))
    return removed


def atomic_write(path: Path, chunks: Iterable[bytes]) -> int:
    """Write a file as a whole or not at all: temp file in the same directory, fsync,
    rename over `path`, fsync the directory. Returns the size written."""
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    size = 0
    try:
        os.fchmod(fd, 0o600)  # a leftover temp file keeps its old mode through O_TRUNC
        for chunk in chunks:
            write_all(fd, chunk)
            size += len(chunk)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return size
