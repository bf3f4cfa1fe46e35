"""The keep-alive client's tests run on both event loops: asyncio's (the tests' default)
and uvloop (the bridge's), whose transports differ in how they report EOF and resets. The
other tests here keep the default loop (pytest-asyncio wants a factory for every test once
the hook exists)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name != "test_client.py":
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
