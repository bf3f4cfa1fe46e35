"""Disk space under a profile's state: what `bridge doctor`, /readyz and /metrics report.

A full disk does not lose acknowledged messages (the webhook answers 503 and Meta
redelivers), but it stops the bridge from recording anything new, and snapshots and backups
fail first, because they need the most room at once. So the operator is warned well before:
when less than LOW_BYTES, or less than LOW_FRACTION of the file system, is free. "Free" is
what an unprivileged process may still write (statvfs f_bavail), not the root reserve.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LOW_BYTES = 1024**3
LOW_FRACTION = 0.10


@dataclass(frozen=True, slots=True)
class DiskSpace:
    free: int
    total: int

    @property
    def low(self) -> bool:
        return self.free < LOW_BYTES or self.free < self.total * LOW_FRACTION

    def describe(self) -> str:
        """ "12.5 GiB free of 40.0 GiB (31%)" """
        share = self.free / self.total if self.total else 0.0
        return f"{_size(self.free)} free of {_size(self.total)} ({share:.0%})"


def disk_space(path: Path) -> DiskSpace:
    """Space of the file system holding `path` (or its nearest existing parent: a profile
    that has not started yet will be written there)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    stat = os.statvfs(path)
    return DiskSpace(stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize)


def low_disk_advice(space: DiskSpace) -> str:
    return (
        f"low: {space.describe()}, under {_size(LOW_BYTES)} or {LOW_FRACTION:.0%}; free some "
        "space (old backups, logs) before snapshots and backups fail"
    )


def dir_size(path: Path) -> int:
    """Bytes of every file under `path` (0 when it does not exist). Blocking: a directory of
    many files (media) takes a while, so the service calls it in a thread."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue  # removed while we walked (a rotated journal segment)
    return total


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
