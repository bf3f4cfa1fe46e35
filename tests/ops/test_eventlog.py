"""The profile's event log: JSON lines, bounded by rotation, safe with several writers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from structlog.testing import capture_logs

from bridge.ops.eventlog import EventLog

WRITER = r"""
import sys
from pathlib import Path
from structlog.testing import capture_logs

from bridge.ops.eventlog import EventLog

log = EventLog(Path(sys.argv[1]), max_bytes=int(sys.argv[2]))
for n in range(int(sys.argv[3])):
    log.record("admin_write", command=f"writer-{sys.argv[4]}", n=n)
"""


def test_events_are_json_lines_with_time_and_pid(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.record("started", version="0.1.0")
    log.record("crashed", crashed_pid=1234)

    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == ["started", "crashed"]
    assert events[1]["crashed_pid"] == 1234 and all(e["ts"].endswith("Z") for e in events)
    assert log.read() == events
    assert (tmp_path / "events.jsonl").stat().st_mode & 0o777 == 0o600


def test_the_log_is_bounded_by_rotation_and_keeps_the_newest(tmp_path: Path) -> None:
    log = EventLog(tmp_path, max_bytes=2000)
    for n in range(200):
        log.record("snapshot_failed", error="No space left on device", n=n)

    current, rotated = tmp_path / "events.jsonl", tmp_path / "events.jsonl.1"
    assert current.stat().st_size <= 2000 and rotated.stat().st_size <= 2000
    kept = [e["n"] for e in log.read()]
    assert kept == list(range(200 - len(kept), 200)) and len(kept) > 10


def test_without_a_profile_directory_nothing_is_written_and_nothing_raised(
    tmp_path: Path,
) -> None:
    EventLog(tmp_path / "gone").record("stopped")

    assert not (tmp_path / "gone").exists()


def test_several_processes_appending_and_rotating_lose_no_line_whole(tmp_path: Path) -> None:
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "20000", "300", str(w)])
        for w in range(4)
    ]
    assert [w.wait(timeout=60) for w in writers] == [0, 0, 0, 0]

    files = [tmp_path / "events.jsonl.1", tmp_path / "events.jsonl"]
    lines = [line for f in files for line in f.read_text().splitlines()]
    assert all(json.loads(line)["event"] == "admin_write" for line in lines)  # none torn
    assert all(f.stat().st_size <= 20000 for f in files)
    # Each writer's kept events are its newest, in order, without gaps.
    for w in range(4):
        ns = [json.loads(x)["n"] for x in lines if f'"writer-{w}"' in x]
        assert ns == list(range(300 - len(ns), 300))


def test_a_log_that_cannot_be_written_is_logged_not_raised(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").mkdir()  # not a file: every append fails

    with capture_logs() as logs:
        EventLog(tmp_path).record("backup_failed", error="No space left on device")

    assert [(e["event"], e["kind"]) for e in logs] == [("event_not_recorded", "backup_failed")]
