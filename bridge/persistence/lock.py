"""One process per profile directory: an exclusive flock held for the process's lifetime.

flock is released by the kernel when the process dies, even by kill -9, so a crash never
leaves a stale lock; the pid written into the file only serves error messages.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from bridge.errors import ProfileLockedError
from bridge.persistence.layout import lock_path


class ProfileLock:
    """The exclusive lock on `<state_dir>/lock`; the holder's pid is written into the file."""

    def __init__(self, state_dir: Path, slug: str) -> None:
        self._path = lock_path(state_dir)
        self._slug = slug
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ProfileLockedError naming the holder's pid."""
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ProfileLockedError(
                f"profile {self._slug!r} is in use by another process (pid {holder}, lock "
                f"{self._path})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)  # closing drops the flock too
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
