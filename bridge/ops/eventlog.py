"""A profile's event log: what happened to it, for an operator, one JSON object a line.

`var/profiles/<slug>/events.jsonl` holds the events an operator asks about after the fact:
`started`, `stopped`, `crashed` (a start found the lock of a process that died), health
changes, snapshot and backup failures, admin writes and key rotations. The service's log
(journald) says the same and more, but is shared by every profile, rotated by volume and
not kept with the data; this one is short, per profile, and read with `sessions-admin
profiles events SLUG`.

Rules:
- Append-only, never rewritten; bounded: past MAX_BYTES the file becomes `events.jsonl.1`
  (replacing the previous one), so at most twice that is kept.
- Never a phone number, a user id or message text: an event names what happened, counts,
  pids, and reasons that come from the disk or the Graph API's health check. Callers pass
  only such fields.
- Several processes append (the bridge, sessions-admin, the backup timer): each line is one
  `write` under an exclusive flock of the file, and a rotation happens under that lock too;
  a writer that waited for the lock while the file was rotated sees that its file is no
  longer the log and opens the new one.
- Recording an event never fails the caller, like a log line: an error is logged (info) and
  the event dropped. Without a profile directory (deleted, or a store kept in memory) there is
  nowhere to record: nothing is written and nothing created.
- Not fsynced: events are for people, and a line lost to a power cut is told by the log.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from bridge.ops.logs import get_logger
from bridge.persistence.layout import events_path

MAX_BYTES = 256 * 1024

Field = str | int | float | bool | None | list[str]


class EventLog:
    """Appends to, and reads, one profile's event log."""

    def __init__(self, state_dir: Path, max_bytes: int = MAX_BYTES) -> None:
        self.path = events_path(state_dir)
        self.max_bytes = max_bytes

    def record(self, event: str, **fields: Field) -> None:
        """Append one event (with the time and this process's pid); never raises."""
        entry: dict[str, Any] = {"ts": _now_iso(), "event": event, "pid": os.getpid()}
        entry.update(fields)
        line = orjson.dumps(entry) + b"\n"
        try:
            self._append(line)
        except FileNotFoundError:
            return  # no profile directory: nothing to record into
        except OSError as exc:
            # Info, not warning: the cause (a full or read-only disk) fails louder elsewhere,
            # and a command's error stays the one line it prints.
            get_logger().info(
                "event_not_recorded", kind=event, path=str(self.path), error=exc.strerror
            )

    def _append(self, line: bytes) -> None:
        while True:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    current = os.stat(self.path)
                except FileNotFoundError:
                    current = None
                mine = os.fstat(fd)
                if current is None or (current.st_ino, current.st_dev) != (
                    mine.st_ino,
                    mine.st_dev,
                ):
                    continue  # rotated while we waited: append to the new file
                if mine.st_size and mine.st_size + len(line) > self.max_bytes:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                    continue  # the next round creates the new file, under its own lock
                os.write(fd, line)
                return
            finally:
                os.close(fd)  # also releases the lock

    def read(self) -> list[dict[str, Any]]:
        """Every event kept, oldest first (the rotated file, then the current one). A line
        that does not parse (cut by a full disk) is skipped."""
        events: list[dict[str, Any]] = []
        for path in (self.path.with_name(self.path.name + ".1"), self.path):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            for raw in data.splitlines():
                try:
                    event = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(event, Mapping):
                    events.append(dict(event))
        return events


def _now_iso() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
