"""Run sessions-admin in a child that kill -9s itself right after its k-th change to the
file system, so a test can walk a command through every crash point it has.

The child wraps the `os` functions that change files (an open for writing, fsync, rename,
replace, unlink, mkdir) and logs each one before it may die; every module looks them up on
`os` at call time, so nothing in the product knows about the hook.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CHILD = r"""
import os, signal, sys

limit, log_path = int(sys.argv[1]), sys.argv[2]
count = 0
WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def counted(name, real, changes=None):
    def wrapper(*args, **kwargs):
        global count
        result = real(*args, **kwargs)
        if changes is None or changes(*args, **kwargs):
            count += 1
            with open(log_path, "a") as log:
                paths = " ".join(str(a) for a in args if isinstance(a, (str, os.PathLike)))
                log.write(f"{name} {paths or args[0]}\n")
            if count == limit:
                os.kill(os.getpid(), signal.SIGKILL)
        return result

    return wrapper


os.open = counted("open", os.open, lambda path, flags, *a, **k: bool(flags & WRITING))
for name in ("fsync", "fdatasync", "rename", "replace", "unlink", "mkdir"):
    setattr(os, name, counted(name, getattr(os, name)))

from admin.cli import main

sys.exit(main(sys.argv[3:]))
"""


@dataclass
class Outcome:
    returncode: int
    stderr: str
    steps: list[str]  # "replace FROM TO", "fsync FD", ... for each change; the last killed it

    @property
    def killed(self) -> bool:
        return self.returncode == -9


def admin_killed_after(step: int, args: list[str], env: dict[str, str], log: Path) -> Outcome:
    """Run `sessions-admin ARGS`, killed right after change number `step` (1-based)."""
    log.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(step), str(log), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    steps = log.read_text().splitlines() if log.exists() else []
    return Outcome(result.returncode, result.stderr, steps)
