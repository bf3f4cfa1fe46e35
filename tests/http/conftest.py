"""The keep-alive client's tests run on both event loops: asyncio's (the tests' default)
and uvloop (the bridge's), whose transports differ in how they report EOF and resets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]] | None:
    if item.path.name != "test_client.py":
        return None
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
