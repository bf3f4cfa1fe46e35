"""What a new user meets at the command line: real `bridge serve`, `bridge simulate` and
`sessions-admin` processes; every error one line on stderr with its exit code, no traceback."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_admin import ADMIN, admin, admin_json
from tests.test_cli import Served, clean_env, free_port, run, start_serve

PHONE = "34600000001"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = start_serve(tmp_path / "var", "--dev")
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def wait_for(predicate: Any, what: str, timeout: float = 15.0) -> Any:
    """Poll until `predicate()` is truthy; its value, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def show(served: Served, key: str) -> dict[str, Any]:
    data: dict[str, Any] = admin_json(["show", key], served.env)
    return data


# -- the log-only sender -------------------------------------------------------------------


def test_replies_without_an_access_token_are_logged_not_sent(served: Served) -> None:
    assert run(["simulate", "hola", "--from", PHONE], served.env).returncode == 0

    def reply() -> dict[str, Any] | None:
        done = [
            m
            for m in show(served, PHONE)["messages"]
            if m["role"] == "assistant" and m.get("status") != "pending"
        ]
        return done[0] if done else None

    answered = wait_for(reply, "the reply to be handled")
    assert answered["status"] == "logged"
    assert "wamids" not in answered  # no made-up Meta ids
    text = admin(["show", PHONE], served.env).stdout
    assert "assistant [logged] Echo: hola" in text
    code, events = served.stop()
    assert code == 0
    names = [e["event"] for e in events]
    assert "reply_logged" in names and "reply_sent" not in names


# -- bridge serve ------------------------------------------------------------------------


def test_misspelled_profile_is_exit_2_and_creates_nothing(tmp_path: Path) -> None:
    var = tmp_path / "var"
    env = clean_env(BRIDGE_VAR_DIR=str(var), BRIDGE_PORT=str(free_port()))
    first = start_serve(var, "--dev", env=env)  # the default profile now exists
    first.stop()
    typo = run(["serve", "--dev", "--profile", "defualt"], env)
    line = one_line_error(typo, 2)
    assert "unknown profile 'defualt' (known: default)" in line and "--create" in line
    assert not (var / "profiles" / "defualt").exists()


def test_a_new_profile_starts_when_asked_to_create_it(tmp_path: Path) -> None:
    var = tmp_path / "var"
    env = clean_env(BRIDGE_VAR_DIR=str(var), BRIDGE_PORT=str(free_port()))
    server = start_serve(var, "--dev", "--profile", "shop", "--create", env=env)
    code, _ = server.stop()
    assert code == 0
    assert (var / "profiles" / "shop" / "dev-secrets.json").is_file()
    # Once it exists, it is known: no --create needed.
    again = start_serve(var, "--dev", "--profile", "shop", env=env)
    assert again.stop()[0] == 0


def test_busy_port_is_found_before_anything_is_written(served: Served, tmp_path: Path) -> None:
    other = tmp_path / "other"
    env = clean_env(BRIDGE_PORT=str(served.port), BRIDGE_VAR_DIR=str(other))
    line = one_line_error(run(["serve", "--dev"], env), 2)
    assert f"cannot listen on 127.0.0.1:{served.port}" in line
    assert not other.exists(), sorted(str(p) for p in other.rglob("*"))


# -- bridge simulate ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   "])
def test_simulate_refuses_an_empty_message(text: str) -> None:
    env = clean_env(BRIDGE_APP_SECRET="x", BRIDGE_PORT=str(free_port()))
    line = one_line_error(run(["simulate", text], env), 2)
    assert "empty" in line


def test_wrong_secret_says_which_secret_signed(served: Served) -> None:
    env = {**served.env, "BRIDGE_APP_SECRET": "not-the-bridge-secret"}
    result = run(["simulate", "hi"], env)
    line = one_line_error(result, 1)
    assert "403" in line and "BRIDGE_APP_SECRET" in line


def test_no_bridge_running_suggests_make_run() -> None:
    env = clean_env(BRIDGE_APP_SECRET="x", BRIDGE_PORT=str(free_port()))
    line = one_line_error(run(["simulate", "hi"], env), 1)
    assert "is the bridge running? try `make run`" in line
    assert "ssl" not in line and "Errno" not in line


def test_simulate_without_name_keeps_the_contact_name(served: Served) -> None:
    assert run(["simulate", "one", "--from", PHONE, "--name", "Ana"], served.env).returncode == 0
    assert run(["simulate", "two", "--from", PHONE], served.env).returncode == 0
    conv = show(served, PHONE)
    assert conv["name"] == "Ana"
    assert [m["content"] for m in conv["messages"] if m["role"] == "user"] == ["one", "two"]


# -- phone numbers as people type them ----------------------------------------------------


def test_a_typed_phone_is_one_key_everywhere(served: Served) -> None:
    typed = "+34 600-000-001"
    assert run(["simulate", "hola", "--from", typed], served.env).returncode == 0
    assert run(["simulate", "again", "--from", "(34) 600.000.001"], served.env).returncode == 0
    rows = admin_json(["list"], served.env)
    assert [r["key"] for r in rows] == [PHONE]
    assert show(served, typed)["key"] == PHONE
    exported = admin(["export", "+34 600 000 001"], served.env)
    assert exported.returncode == 0, exported.stderr
    assert [key for key, _ in json.loads(exported.stdout)] == [PHONE]
    served.stop()
    deleted = admin(["delete", typed], served.env)
    assert deleted.returncode == 0, deleted.stderr
    assert f"deleted conversation {PHONE}" in deleted.stdout
    assert admin_json(["list"], served.env) == []


def test_a_username_only_user_can_be_simulated(served: Served) -> None:
    user_id = "ES.13491208655302741918"
    result = run(["simulate", "hi", "--from", user_id], served.env)
    assert result.returncode == 0, result.stderr
    assert show(served, user_id)["key"] == user_id


# -- help --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["verify"], "archive written by `sessions-admin backup`"),
        (["restore"], "archive written by `sessions-admin backup`"),
        (["import"], "a sessions.json"),
        (["delete"], "+34 600-000-001 and 34600000001 are the same"),
        (["show"], "+34 600-000-001 and 34600000001 are the same"),
        (["export"], "sessions.json format"),
        (["prune"], "last activity is more than DAYS days ago"),
    ],
)
def test_every_argument_has_help(command: list[str], expected: str) -> None:
    result = subprocess.run(
        [*ADMIN, *command, "--help"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    flat = " ".join(result.stdout.split())
    assert expected in flat
    assert "seed" not in flat


def test_no_help_text_speaks_of_the_seed() -> None:
    top = subprocess.run(
        [*ADMIN, "--help"], env=clean_env(), capture_output=True, text=True, check=False
    )
    assert "seed" not in top.stdout
    for command in (["serve"], ["simulate"]):
        assert "seed" not in run([*command, "--help"], clean_env()).stdout
