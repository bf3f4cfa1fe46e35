"""One process per profile directory: an exclusive flock held for the process's lifetime.

flock is released by the kernel when the process dies, even by kill -9, so a crash never
leaves a stale lock. The holder writes its pid into the file (for error messages) and, when
it stops normally, replaces it with `clean`: a pid found there by the next holder means the
previous one died (kill -9, power loss), which tells the outbox that sends may have been in
flight.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from bridge.errors import ProfileLockedError
from bridge.persistence.layout import lock_path

CLEAN = b"clean\n"


class ProfileLock:
    """The exclusive lock on `<state_dir>/lock`; the holder's pid is written into the file."""

    def __init__(self, state_dir: Path, slug: str) -> None:
        self._path = lock_path(state_dir)
        self._slug = slug
        self._fd: int | None = None
        self.previous_unclean = False  # the previous holder died without releasing cleanly
        self.previous_pid: int | None = None  # ... and that holder's pid

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
            previous = os.read(fd, 32).strip()
            self.previous_unclean = previous.isdigit()
            self.previous_pid = int(previous) if previous.isdigit() else None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)  # closing drops the flock too
            raise
        self._fd = fd

    def release(self, clean: bool | None = None) -> None:
        """Unlock. `clean`: this process stops normally and left nothing in flight that it
        did not record; by default, only if the previous holder had stopped cleanly too (a
        short admin write after a crash must not hide the crash from the next bridge)."""
        keep_crashed = clean is None and self.previous_unclean
        if clean is None:
            clean = not self.previous_unclean
        if self._fd is not None:
            if clean or keep_crashed:
                # After a crash, a short admin write leaves the dead process's pid in place:
                # `profiles list` still names the process that crashed.
                content = CLEAN if clean else f"{self.previous_pid}\n".encode()
                try:
                    os.ftruncate(self._fd, 0)
                    os.pwrite(self._fd, content, 0)
                except OSError:
                    pass  # a full disk: the next start just reconciles as after a crash
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
