"""A profile's life as an operator sees it: status and pid, its event log, deletion."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.admin.support import ADMIN, admin, admin_json
from tests.test_cli import Served, clean_env, free_port, run, start_serve

PHONE = "34600000001"
SECRET_TEXT = "mi contraseña es tortilla"


def serve(var: Path, env: dict[str, str] | None = None) -> Served:
    return start_serve(var, "--dev", env=env)


def status(env: dict[str, str], slug: str = "default") -> tuple[str, int | None]:
    row = admin_json(["profiles", "show", slug], env)
    return row["status"], row["pid"]


def events(env: dict[str, str], slug: str = "default") -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = admin_json(["profiles", "events", slug], env)
    return result


def test_list_says_running_crashed_or_stopped_with_the_pid(tmp_path: Path) -> None:
    first = serve(tmp_path / "var")
    env = first.env
    assert status(env) == ("running", first.proc.pid)
    first.proc.kill()  # kill -9
    first.proc.wait()
    assert status(env) == ("crashed", first.proc.pid)
    text = admin(["profiles"], env).stdout
    assert f"crashed (pid {first.proc.pid})" in text

    second = serve(tmp_path / "var", env)
    assert status(env) == ("running", second.proc.pid)
    assert second.stop()[0] == 0
    assert status(env) == ("stopped", None)


def test_the_event_log_tells_starts_stops_crashes_and_writes_without_personal_data(
    tmp_path: Path,
) -> None:
    first = serve(tmp_path / "var")
    env = first.env
    sent = run(["simulate", SECRET_TEXT, "--from", PHONE], env)
    assert sent.returncode == 0, sent.stderr
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    second = serve(tmp_path / "var", env)
    assert second.stop()[0] == 0
    assert admin(["delete", PHONE], env).returncode == 0
    assert admin(["rotate-key"], env).returncode == 0

    log = events(env)

    assert [e["event"] for e in log] == [
        "started",
        "crashed",
        "started",
        "stopped",
        "admin_write",
        "key_rotated",
    ]
    assert log[1]["crashed_pid"] == first.proc.pid and log[1]["pid"] == second.proc.pid
    assert log[4]["command"] == "delete" and len(log[5]["key_id"]) == 8
    raw = (tmp_path / "var/profiles/default/events.jsonl").read_text()
    assert PHONE not in raw and "tortilla" not in raw
    table = admin(["profiles", "events", "default"], env).stdout
    assert "crashed_pid=" in table and table.splitlines()[0].startswith("TIME (UTC)")


# -- delete ------------------------------------------------------------------------------------


def stopped_profile(tmp_path: Path) -> dict[str, str]:
    served = serve(tmp_path / "var")
    assert run(["simulate", "hola", "--from", PHONE], served.env).returncode == 0
    assert served.stop()[0] == 0
    return served.env


def test_delete_refuses_while_the_profiles_bridge_runs(tmp_path: Path) -> None:
    served = serve(tmp_path / "var")
    try:
        result = admin(["profiles", "delete", "default", "--yes"], served.env)
    finally:
        served.stop()

    assert result.returncode == 1
    assert f"is running (pid {served.proc.pid})" in result.stderr
    assert "nothing was deleted" in result.stderr
    assert (tmp_path / "var/profiles/default/snapshot.wab").is_file()


def test_delete_without_a_terminal_and_without_yes_refuses(tmp_path: Path) -> None:
    env = stopped_profile(tmp_path)

    result = subprocess.run(
        [*ADMIN, "profiles", "delete", "default"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2 and "add --yes" in result.stderr
    assert (tmp_path / "var/profiles/default").is_dir()


def delete_on_a_terminal(env: dict[str, str], answer: str) -> tuple[int, str]:
    """Run `profiles delete default` with a pseudo-terminal as stdin, answer the prompt."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [*ADMIN, "profiles", "delete", "default"],
        env=env,
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(terminal)
    try:
        os.write(controller, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(controller)
    return proc.returncode, out + err


def test_delete_on_a_terminal_asks_for_the_name(tmp_path: Path) -> None:
    env = stopped_profile(tmp_path)

    code, text = delete_on_a_terminal(env, "yes")
    assert code == 1 and "Type the profile name" in text and "was not deleted" in text
    assert (tmp_path / "var/profiles/default").is_dir()

    code, text = delete_on_a_terminal(env, "default")
    assert code == 0, text
    assert not (tmp_path / "var/profiles/default").exists()


def test_delete_keeps_a_checked_backup_and_the_key_outside_and_they_restore(
    tmp_path: Path,
) -> None:
    env = stopped_profile(tmp_path)
    var = tmp_path / "var"

    result = admin_json(["profiles", "delete", "default", "--yes"], env)

    assert not (var / "profiles/default").exists()
    archive, key = (Path(p) for p in result["saved"])
    assert archive.parent == var / "backups" and key == archive.with_suffix(".key")
    assert archive.stat().st_mode & 0o777 == 0o600 and key.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in var.iterdir() if p.name.startswith(".")] == []  # no leftovers
    assert admin_json(["profiles"], env) == []

    # Bring it back: a new profile directory, the saved key, the archive.
    assert admin(["profiles", "create", "default"], env).returncode == 0
    (var / "profiles/default/key").write_bytes(key.read_bytes())
    restored = admin(["restore", str(archive)], env)
    assert restored.returncode == 0, restored.stderr
    shown = admin(["show", PHONE], env)
    assert shown.returncode == 0 and "hola" in shown.stdout


def test_delete_with_no_backup_writes_none_and_a_target_inside_is_refused(
    tmp_path: Path,
) -> None:
    env = stopped_profile(tmp_path)
    inside = tmp_path / "var/profiles/default/backups"

    refused = admin(["profiles", "delete", "default", "--yes", "--to", str(inside)], env)
    assert refused.returncode == 2 and "inside the profile directory" in refused.stderr
    assert (tmp_path / "var/profiles/default/snapshot.wab").is_file()

    deleted = admin(["profiles", "delete", "default", "--yes", "--no-backup"], env)
    assert deleted.returncode == 0, deleted.stderr
    assert not (tmp_path / "var/profiles/default").exists()
    assert not (tmp_path / "var/backups").exists()


def test_a_deletion_killed_half_way_is_finished_by_the_next_profiles_command(
    tmp_path: Path,
) -> None:
    env = clean_env(BRIDGE_VAR_DIR=str(tmp_path / "var"), BRIDGE_PORT=str(free_port()))
    assert admin(["profiles", "create", "shop"], env).returncode == 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / "var" / f".deleting-gone.{dead.pid}"
    (leftover / "journal").mkdir(parents=True)
    (leftover / "journal" / "00000001.wal").write_bytes(b"x" * 100)

    rows = admin_json(["profiles"], env)

    assert [r["profile"] for r in rows] == ["shop"] and not leftover.exists()
    assert json.dumps(rows).count("deleting") == 0
