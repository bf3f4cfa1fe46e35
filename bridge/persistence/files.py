"""File primitives that never leave a half-written file or a readable one behind."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def secure_dir(path: Path) -> None:
    """Create a directory readable by its owner only (and tighten one that exists)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (POSIX needs the directory synced too)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(path: Path, chunks: Iterable[bytes]) -> int:
    """Write a file as a whole or not at all: temp file in the same directory, fsync,
    rename over `path`, fsync the directory. Returns the size written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    size = 0
    try:
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
