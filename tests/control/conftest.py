"""Opened durable stores (as the persistence tests have them) and real bridges that are
killed after the test whatever happened in it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.control.support import serve
from tests.persistence.conftest import opened
from tests.test_cli import Served

__all__ = ["opened", "serving"]

Serving = Callable[..., Served]


@pytest.fixture
def serving() -> Iterator[Serving]:
    """`serving(var, env=None)`: a started `bridge serve`, killed at teardown if still up."""
    started: list[Served] = []

    def start(var: Path, env: dict[str, str] | None = None) -> Served:
        server = serve(var, env)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
