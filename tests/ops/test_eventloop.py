"""`bridge serve` runs on uvloop when it is installed, on asyncio with BRIDGE_EVENT_LOOP=asyncio,
and says which in its `bridge_listening` line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli import clean_env, free_port, run, start_serve


def listening_loop(tmp_path: Path, **env: str) -> str:
    var = tmp_path / "var"
    served = start_serve(
        var, "--dev", env=clean_env(BRIDGE_PORT=str(free_port()), BRIDGE_VAR_DIR=str(var), **env)
    )
    code, events = served.stop()
    assert code == 0
    [listening] = [e for e in events if e["event"] == "bridge_listening"]
    return str(listening["event_loop"])


@pytest.mark.slow
def test_serve_runs_on_uvloop_by_default(tmp_path: Path) -> None:
    pytest.importorskip("uvloop")
    assert listening_loop(tmp_path) == "uvloop"


@pytest.mark.slow
def test_event_loop_asyncio_opts_out_of_uvloop(tmp_path: Path) -> None:
    assert listening_loop(tmp_path, BRIDGE_EVENT_LOOP="asyncio") == "asyncio"


def test_unknown_event_loop_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run(["serve", "--dev"], clean_env(BRIDGE_VAR_DIR=str(tmp_path), BRIDGE_EVENT_LOOP="x"))
    assert result.returncode == 2
    assert "event_loop must be one of auto, uvloop, asyncio, not 'x'" in result.stderr
    assert "Traceback" not in result.stderr
