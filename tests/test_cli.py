"""The `bridge` command as a user runs it: a real `serve` subprocess, `simulate`, clear errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import APP_SECRET
from tests.fakes.graph import TOKEN

BRIDGE = [sys.executable, "-m", "bridge"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any BRIDGE_* setting of the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "CREDENTIALS_"))}
    env["BRIDGE_REPLY_DEBOUNCE_SECONDS"] = "0"  # a reply per message unless a test sets it
    env.update(extra)
    return env


def graph_env(var: Path, graph_url: str, **extra: str) -> dict[str, str]:
    """A `bridge serve` environment that sends through a (fake) Graph API at `graph_url`."""
    return clean_env(
        BRIDGE_APP_SECRET=APP_SECRET,
        BRIDGE_VERIFY_TOKEN="v",
        BRIDGE_ACCESS_TOKEN=TOKEN,
        BRIDGE_PHONE_NUMBER_ID="100000000000001",
        BRIDGE_GRAPH_URL=graph_url,
        BRIDGE_VAR_DIR=str(var),
        BRIDGE_PORT=str(free_port()),
        **extra,
    )


def run(
    args: list[str], env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        BRIDGE + args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int
    var_dir: Path
    env: dict[str, str]
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, list[dict[str, Any]]]:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        return self.proc.returncode, parse_log(self.log_path.read_text())


def parse_log(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def wait_ready(port: int, proc: subprocess.Popen[str], log_path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"bridge exited early: {log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("bridge did not become ready")


def start_serve(var_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Served:
    if env is None:
        env = clean_env(BRIDGE_PORT=str(free_port()), BRIDGE_VAR_DIR=str(var_dir))
    port = int(env["BRIDGE_PORT"])
    # A file, not a pipe: a pipe nobody reads fills up and blocks the bridge's logging.
    log_path = var_dir.parent / f"bridge-{port}-{time.monotonic_ns()}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*BRIDGE, "serve", "--log-format", "json", *extra],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
    wait_ready(port, proc, log_path)
    return Served(proc, port, var_dir, env, log_path)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = start_serve(tmp_path / "var", "--dev")
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def test_serve_and_simulate_round_trip(served: Served) -> None:
    result = run(["simulate", "Hola", "--from", "34600000001"], served.env)
    assert result.returncode == 0, result.stderr
    assert "-> 200" in result.stdout and '"recorded":1' in result.stdout
    time.sleep(0.5)  # the reply is produced after the 200
    code, events = served.stop()
    assert code == 0
    names = [e["event"] for e in events]
    assert names.count("dev_secrets_generated") == 1
    assert "delivery_recorded" in names
    assert "reply_not_sent_no_token" in names
    assert names[-1] == "bridge_stopped"
    logged = json.dumps(events)
    assert "Hola" not in logged, "message text must not be logged at info level"
    assert "34600000001" not in logged, "phone numbers must be masked in logs"


def test_simulated_redelivery_is_a_duplicate(served: Served) -> None:
    first = run(["simulate", "Hi", "--wamid", "wamid.SAME"], served.env)
    second = run(["simulate", "Hi", "--wamid", "wamid.SAME"], served.env)
    assert '"recorded":1' in first.stdout
    assert '"recorded":0,"duplicates":1' in second.stdout


def test_dev_secrets_are_generated_once_and_private(served: Served) -> None:
    secrets_file = served.var_dir / "profiles" / "default" / "dev-secrets.json"
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    assert (served.var_dir / "profiles" / "default").stat().st_mode & 0o777 == 0o700
    code, _ = served.stop()
    assert code == 0
    again = start_serve(served.var_dir, "--dev")
    _, events = again.stop()
    assert "dev_secrets_generated" not in [e["event"] for e in events]


def test_sigint_stops_cleanly(served: Served) -> None:
    code, events = served.stop(signal.SIGINT)
    assert code == 0
    assert events[-1]["event"] == "bridge_stopped"


def test_port_in_use_is_one_line_and_exit_2(served: Served, tmp_path: Path) -> None:
    env = clean_env(BRIDGE_PORT=str(served.port), BRIDGE_VAR_DIR=str(tmp_path / "other"))
    result = run(["serve", "--dev"], env)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{served.port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_secret_without_dev_is_exit_2(tmp_path: Path) -> None:
    result = run(["serve"], clean_env(BRIDGE_VAR_DIR=str(tmp_path)))
    assert result.returncode == 2
    assert result.stderr.startswith("bridge: error: profile 'default': missing secret")
    assert "Traceback" not in result.stderr


def test_invalid_profile_name_is_exit_2(tmp_path: Path) -> None:
    result = run(
        ["serve", "--dev", "--profile", "Bad_Name"], clean_env(BRIDGE_VAR_DIR=str(tmp_path))
    )
    assert result.returncode == 2
    assert "invalid profile name 'Bad_Name'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_simulate_without_a_running_bridge_says_so(tmp_path: Path) -> None:
    env = clean_env(BRIDGE_APP_SECRET="x", BRIDGE_PORT=str(free_port()))
    result = run(["simulate", "hi"], env)
    assert result.returncode == 1
    assert "cannot reach http://127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


def test_simulate_without_any_secret_explains(tmp_path: Path) -> None:
    result = run(["simulate", "hi"], clean_env(BRIDGE_VAR_DIR=str(tmp_path)))
    assert result.returncode == 2
    assert "no app secret to sign with" in result.stderr


def test_help_explains_commands() -> None:
    result = run(["--help"], clean_env())
    assert result.returncode == 0
    assert "serve" in result.stdout and "simulate" in result.stdout
    serve_help = run(["serve", "--help"], clean_env())
    assert "--dev" in serve_help.stdout and "examples:" in serve_help.stdout
