"""sessions-admin against a real store written by a real `bridge serve`, also while it runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.persistence.keys import encode_key, new_key
from tests.test_cli import Served, clean_env, run, start_serve

ADMIN = [sys.executable, "-m", "admin"]
DAY_MS = 24 * 3600 * 1000
PHONES = ["34600000001", "34600000002", "34600000003"]


def admin(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ADMIN + args, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def admin_json(args: list[str], env: dict[str, str]) -> Any:
    result = admin([*args, "--json"], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Served]:
    """A running dev bridge that has recorded two messages from each of three users."""
    server = start_serve(tmp_path / "var", "--dev")
    for phone in PHONES:
        for text in ("hola", "¿abierto?"):
            result = run(
                ["simulate", text, "--from", phone, "--name", "Simulated User"], server.env
            )
            assert result.returncode == 0, result.stderr
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def stopped(server: Served) -> dict[str, str]:
    code, _ = server.stop()
    assert code == 0
    return server.env


def test_list_sees_the_live_state_while_the_bridge_runs(running: Served) -> None:
    rows = admin_json(["list"], running.env)
    assert sorted(r["key"] for r in rows) == PHONES
    assert all(r["messages"] >= 2 and r["name"] == "Simulated User" for r in rows)
    assert [r["lastActivity"] for r in rows] == sorted(
        (r["lastActivity"] for r in rows), reverse=True
    )
    table = admin(["list", "--limit", "2"], running.env)
    assert table.returncode == 0
    lines = table.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["KEY", "NAME", "MESSAGES"] and len(lines) == 3


def test_show_prints_the_conversation_readably(running: Served) -> None:
    result = admin(["show", PHONES[0]], running.env)
    assert result.returncode == 0, result.stderr
    assert "user" in result.stdout and "hola" in result.stdout and "¿abierto?" in result.stdout
    data = admin_json(["show", PHONES[0]], running.env)
    assert [m["content"] for m in data["messages"] if m["role"] == "user"] == ["hola", "¿abierto?"]


def test_stats_counts_and_says_running(running: Served) -> None:
    stats = admin_json(["stats"], running.env)
    assert stats["conversations"] == 3 and stats["by_role"]["user"] == 6
    assert stats["running"] is True and stats["journal_bytes"] > 0


def test_write_commands_go_through_the_running_bridge(running: Served) -> None:
    result = admin(["delete", PHONES[0]], running.env)
    assert result.returncode == 0, result.stderr
    assert PHONES[0] not in [r["key"] for r in admin_json(["list"], running.env)]
    code, events = running.stop()
    assert code == 0
    assert [e["op"] for e in events if e["event"] == "control_request"] == ["delete"]


def test_backup_delete_store_restore_gives_identical_export(
    running: Served, tmp_path: Path
) -> None:
    backup = admin(["backup"], running.env)
    assert backup.returncode == 0, backup.stderr
    archive = Path(backup.stdout.strip())
    assert archive.is_file() and archive.stat().st_mode & 0o777 == 0o600
    assert admin(["verify", str(archive)], running.env).returncode == 0
    env = stopped(running)
    before = admin_json(["export"], env)
    state_dir = running.var_dir / "profiles" / "default"
    (state_dir / "snapshot.wab").unlink()
    for segment in (state_dir / "journal").iterdir():
        segment.unlink()
    assert admin_json(["export"], env) == []
    restored = admin(["restore", str(archive)], env)
    assert restored.returncode == 0, restored.stderr
    assert admin_json(["export"], env) == before


def test_backup_keeps_the_newest_n(running: Served, tmp_path: Path) -> None:
    for _ in range(3):
        assert (
            admin(["backup", "--to", str(tmp_path / "b"), "--keep", "2"], running.env).returncode
            == 0
        )
    assert len(list((tmp_path / "b").iterdir())) == 2


def test_delete_is_journaled_and_survives_a_restart(running: Served) -> None:
    env = stopped(running)
    result = admin(["delete", PHONES[1]], env)
    assert result.returncode == 0, result.stderr
    again = start_serve(running.var_dir, env=env)
    keys = [r["key"] for r in admin_json(["list"], env)]
    again.stop()
    assert PHONES[1] not in keys and len(keys) == 2


def test_export_is_the_seed_format(running: Served) -> None:
    data = admin_json(["export", PHONES[2]], running.env)
    ((key, conv),) = data
    assert key == PHONES[2]
    assert {"messages", "lastActivity", "firstInteraction"} <= set(conv)
    assert {"role", "content", "timestamp"} <= set(conv["messages"][0])
    assert "seq" not in conv


def test_import_merges_a_seed_file_once(running: Served, tmp_path: Path) -> None:
    env = stopped(running)
    t0 = int(time.time() * 1000) - 30 * DAY_MS
    seed = [
        [
            "34699000001",
            {
                "messages": [
                    {"role": "user", "content": "old hello", "timestamp": t0},
                    {"role": "assistant", "content": "old reply", "timestamp": t0 + 1000},
                ],
                "lastActivity": t0 + 1000,
                "firstInteraction": t0,
            },
        ],
        [
            PHONES[0],
            {
                "messages": [
                    {"role": "user", "content": "from the old system", "timestamp": t0 - 1000}
                ],
                "lastActivity": t0 - 1000,
                "firstInteraction": t0 - 1000,
            },
        ],
        [
            "34699000009",
            {"messages": [{"role": "user", "content": "2020", "timestamp": 1_600_000_000_000}]},
        ],
    ]
    path = tmp_path / "sessions.json"
    path.write_text(json.dumps(seed))
    first = admin(["import", str(path)], env)
    assert first.returncode == 0, first.stderr
    assert "imported 3 new message(s) into 2 conversation(s)" in first.stdout
    assert "skipped 1 conversation(s) idle for more than the retention period" in first.stdout
    second = admin(["import", str(path)], env)
    assert "imported 0 new message(s)" in second.stdout
    merged = admin_json(["show", PHONES[0]], env)["messages"]
    assert merged[0]["content"] == "from the old system"  # merged in time order
    assert [m["content"] for m in admin_json(["show", "34699000001"], env)["messages"]] == [
        "old hello",
        "old reply",
    ]


def test_import_of_a_malformed_file_writes_nothing(running: Served, tmp_path: Path) -> None:
    env = stopped(running)
    before = admin_json(["export"], env)
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps([["1", {"messages": [{"role": "robot", "content": "x", "timestamp": 1}]}]])
    )
    result = admin(["import", str(path)], env)
    assert (
        result.returncode == 1
        and "role must be 'user' or 'assistant', got 'robot'" in result.stderr
    )
    assert admin_json(["export"], env) == before


def test_prune_drops_idle_conversations(running: Served, tmp_path: Path) -> None:
    env = stopped(running)
    path = tmp_path / "old.json"
    ten_days_ago = int(time.time() * 1000) - 10 * DAY_MS
    path.write_text(
        json.dumps(
            [
                [
                    "1111",
                    {"messages": [{"role": "user", "content": "quiet", "timestamp": ten_days_ago}]},
                ]
            ]
        )
    )
    assert admin(["import", str(path)], env).returncode == 0
    assert admin_json(["prune", "--older-than", "7"], env) == {"deleted": 1}
    assert "1111" not in [r["key"] for r in admin_json(["list"], env)]


def test_rotate_key_reencrypts_and_the_bridge_still_reads_it(running: Served) -> None:
    env = stopped(running)
    before = admin_json(["export"], env)
    key_file = running.var_dir / "profiles" / "default" / "key"
    old_keys = [line for line in key_file.read_text().splitlines() if not line.startswith("#")]
    result = admin(["rotate-key"], env)
    assert result.returncode == 0, result.stderr
    keys = [line for line in key_file.read_text().splitlines() if not line.startswith("#")]
    assert len(keys) == 2 and keys[1] == old_keys[0] and keys[0] != old_keys[0]
    # Everything on disk now opens with the new key alone.
    only_new = {**env, "BRIDGE_KEY": keys[0]}
    assert admin(["verify"], only_new).returncode == 0
    assert admin_json(["export"], only_new) == before


def test_wrong_key_is_one_line_and_exit_1(running: Served) -> None:
    env = {**stopped(running), "BRIDGE_KEY": encode_key(new_key())}
    result = admin(["list"], env)
    assert result.returncode == 1
    assert "does not decrypt" in result.stderr and "wrong key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_verify_reports_corruption_with_exit_1(running: Served) -> None:
    env = stopped(running)
    snapshot = running.var_dir / "profiles" / "default" / "snapshot.wab"
    data = bytearray(snapshot.read_bytes())
    data[60] ^= 1
    snapshot.write_bytes(bytes(data))
    result = admin(["verify"], env)
    assert result.returncode == 1 and "snapshot.wab" in result.stderr


def test_missing_profile_is_a_clear_error(running: Served) -> None:
    result = admin(["--profile", "nope", "list"], running.env)
    assert result.returncode == 1
    assert "no store for profile 'nope'" in result.stderr


def test_profiles_list_shows_status_and_create_makes_a_private_dir(running: Served) -> None:
    rows = admin_json(["profiles"], running.env)
    assert rows[0]["profile"] == "default" and rows[0]["status"] == "running"
    assert rows[0]["pid"] == running.proc.pid
    created = admin(["profiles", "create", "shop"], running.env)
    assert created.returncode == 0, created.stderr
    shop = running.var_dir / "profiles" / "shop"
    assert shop.stat().st_mode & 0o777 == 0o700 and (shop / "key").is_file()
    bad = admin(["profiles", "create", "Bad_Slug"], running.env)
    assert bad.returncode == 2 and "invalid profile name" in bad.stderr


def test_usage_errors_are_exit_2(tmp_path: Path) -> None:
    env = clean_env()
    assert admin([], env).returncode == 2
    assert admin(["list", "--since", "yesterday-ish"], env).returncode in (1, 2)
    assert "examples:" in admin(["--help"], env).stdout
