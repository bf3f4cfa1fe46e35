"""`sessions-admin import` checks the whole file first: one line per bad entry, nothing written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.admin.conftest import Stopped
from tests.admin.support import admin, admin_json, now_ms, write_seed


def msg(**fields: Any) -> dict[str, Any]:
    return {"role": "user", "content": "hello", "timestamp": now_ms(), **fields}


def test_a_numeric_id_is_refused_and_the_bridge_still_snapshots(
    stopped_store: Stopped, tmp_path: Path
) -> None:
    env = stopped_store.env
    before = admin_json(["export"], env)
    seed = write_seed(tmp_path / "s.json", [["34699000001", {"messages": [msg(id=12345)]}]])
    result = admin(["import", str(seed)], env)
    assert result.returncode == 1
    assert "conversation '34699000001' message 1: id must be a non-empty string" in result.stderr
    assert admin_json(["export"], env) == before
    assert stopped_store.serve_and_stop() == 0  # every snapshot after it still works


def test_every_bad_entry_is_one_line_and_nothing_is_written(
    stopped_store: Stopped, tmp_path: Path
) -> None:
    env = stopped_store.env
    before = admin_json(["export"], env)
    journal = sorted((stopped_store.state_dir / "journal").iterdir())
    sizes = [p.stat().st_size for p in journal]
    seed = write_seed(
        tmp_path / "bad.json",
        [
            ["34699000001", {"messages": [msg(), msg(id=["wamid", 1]), msg(timestamp=1e20)]}],
            ["34699000002", {"messages": [msg(role="robot"), msg(content=None)]}],
            ["34699000003", {"messages": [msg(timestamp=1_700_000_000)]}],  # seconds
            ["34699000004", {"messages": [msg(wamids="wamid.X"), msg(id="wamid.ok")]}],
            ["34699000005", "not a conversation"],
            [123, {"messages": []}],
            "not a pair",
        ],
    )
    result = admin(["import", str(seed)], env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    head, *lines = result.stderr.strip().splitlines()
    assert head.startswith("sessions-admin: error: ") and "9 problem(s)" in head
    assert "nothing was imported" in head
    expected = [
        "conversation '34699000001' message 2: id must be a non-empty string, got [\"wamid\",1]",
        "conversation '34699000001' message 3: timestamp must be whole milliseconds, got 1e+20",
        "conversation '34699000002' message 1: role must be 'user' or 'assistant', got 'robot'",
        "conversation '34699000002' message 2: content must be a string, got null",
        "conversation '34699000003' message 1: timestamp 1700000000 is not a time in "
        "milliseconds between the years 2000 and 2100",
        "conversation '34699000004' message 1: wamids must be a list of strings, got 'wamid.X'",
        "conversation '34699000005': expected an object with a list of messages",
        "entry 6: the key must be a phone number or user id (a string)",
        "entry 7: not a [key, conversation] pair",
    ]
    assert [line.split(": ", 1)[1] for line in lines] == expected
    assert all(line.startswith(f"{seed}: ") for line in lines)
    assert admin_json(["export"], env) == before
    assert [p.stat().st_size for p in journal] == sizes


def test_a_long_list_of_problems_is_cut_short(stopped_store: Stopped, tmp_path: Path) -> None:
    seed = write_seed(
        tmp_path / "bad.json", [["34699000001", {"messages": [msg(id=i) for i in range(80)]}]]
    )
    result = admin(["import", str(seed)], stopped_store.env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert "80 problem(s)" in lines[0] and lines[-1] == "... and 30 more" and len(lines) == 52
