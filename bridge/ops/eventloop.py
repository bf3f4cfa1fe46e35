"""The event loop `bridge serve` runs on: uvloop when it is installed, else asyncio's own.

uvloop (libuv, in C) runs the same asyncio code with cheaper sockets, transports, timers and
callbacks: measured with `make bench`, a bare aiohttp handler answers about a quarter more
requests per core on it, and the bridge's own per-request work shares that saving. It is a
dependency, so a normal install has it; `BRIDGE_EVENT_LOOP=asyncio` opts out (a platform
without it, or to rule it out while debugging), and `uvloop` insists on it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bridge.errors import ConfigError

CHOICES = ("auto", "uvloop", "asyncio")
T = TypeVar("T")


def resolve(choice: str) -> str:
    """The loop `choice` means here: `uvloop` or `asyncio` (ConfigError if unusable)."""
    if choice not in CHOICES:
        raise ConfigError(f"event_loop must be one of {', '.join(CHOICES)}, not {choice!r}")
    installed = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not installed:
        raise ConfigError("event_loop is uvloop but uvloop is not installed (pip install uvloop)")
    if choice == "asyncio" or not installed:
        return "asyncio"
    return "uvloop"


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], name: str) -> T:
    """`asyncio.run(main)` on the loop `name` (a `resolve` result)."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)


def running() -> str:
    """The loop this runs on, as the log and `resolve` name it."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
