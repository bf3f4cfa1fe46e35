"""The crash loop of `make bench`, short: kill -9 under load with operator writes, retention
sweeps, snapshots, backups and replies on the wire, then every promise checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_short_crash_loop_keeps_every_promise(tmp_path: Path) -> None:
    out = tmp_path / "crash.md"
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench.crash_loop", "--cycles", "4", "--rate", "100"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = out.read_text()
    assert "| lost | 0 |" in table
    assert "| present more than once | 0 |" in table
