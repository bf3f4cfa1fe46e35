"""A store written by a real `bridge serve`, stopped, for sessions-admin to work on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_cli import run, start_serve

PHONES = ("34600000001", "34600000002")


@dataclass
class Stopped:
    """A profile's store after a dev bridge recorded a message from each of PHONES."""

    var_dir: Path
    env: dict[str, str]  # the bridge's environment: also right for sessions-admin

    @property
    def state_dir(self) -> Path:
        return self.var_dir / "profiles" / "default"

    def serve_and_stop(self) -> int:
        """Start the bridge on the store again and stop it (SIGTERM: final snapshot)."""
        code, _ = start_serve(self.var_dir, "--dev", env=self.env).stop()
        return code


@pytest.fixture
def stopped_store(tmp_path: Path) -> Stopped:
    server = start_serve(tmp_path / "var", "--dev")
    for phone in PHONES:
        result = run(["simulate", "hola", "--from", phone], server.env)
        assert result.returncode == 0, result.stderr
    code, _ = server.stop()
    assert code == 0
    return Stopped(server.var_dir, server.env)
