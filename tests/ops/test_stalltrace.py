"""The stall log: a stall of the event loop is logged with where it was spent."""

from __future__ import annotations

import asyncio
import linecache
import sys
import time

import pytest
from structlog.testing import capture_logs

from bridge.config import load_settings
from bridge.ops import stalltrace
from bridge.ops.loopwatch import LoopWatch


def _spin_in_python(seconds: float) -> int:
    """Python code that keeps the loop busy (and lets go of the GIL now and then)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


async def test_a_stall_is_logged_with_the_code_that_held_the_loop() -> None:
    watch = LoopWatch()
    with capture_logs() as logs:
        async with watch.running(stall_log=0.05):
            await asyncio.sleep(0.05)
            _spin_in_python(0.2)
            await asyncio.sleep(0.05)
            _spin_in_python(0.01)  # short: not a stall worth a line
            await asyncio.sleep(0.05)
    stalls = [e for e in logs if e["event"] == "event_loop_stalled"]
    assert len(stalls) == 1, stalls
    (stall,) = stalls
    assert stall["log_level"] == "warning"
    assert 150 <= stall["ms"] <= 400
    assert stall["loop_cpu_ms"] >= 50  # the loop's own thread ran it (the host may take some)
    assert any("_spin_in_python" in frame for frame in stall["loop"]), stall["loop"]
    assert any("tests/ops/test_stalltrace.py" in frame for frame in stall["loop"])


def _deep(depth: int, seconds: float) -> int:
    return _spin_in_python(seconds) if depth == 0 else _deep(depth - 1, seconds)


async def test_a_stall_deep_in_the_stack_is_named_while_it_lasts() -> None:
    """The watchdog reads only the innermost frames, without file I/O: the whole stack with
    its source lines took longer than the stall, and the line then named nothing."""
    watch = LoopWatch()
    with capture_logs() as logs:
        async with watch.running(stall_log=0.05):
            await asyncio.sleep(0.05)
            _deep(300, 0.2)
            await asyncio.sleep(0.05)
    (stall,) = [e for e in logs if e["event"] == "event_loop_stalled"]
    assert stall["loop"][0].endswith(" _spin_in_python"), stall["loop"]
    assert all(frame.endswith(" _deep") for frame in stall["loop"][1:]), stall["loop"]


def test_reading_a_stack_touches_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """linecache's stat and read let go of the interpreter lock, and the stalling thread
    takes it back for a switch interval each time: the look must not wait on any."""

    def no_file(*args: object, **kwargs: object) -> None:
        raise AssertionError("the watchdog read a file")

    monkeypatch.setattr(linecache, "checkcache", no_file)
    monkeypatch.setattr(linecache, "getline", no_file)
    monkeypatch.setattr(linecache, "updatecache", no_file)
    frames = stalltrace._where(sys._getframe())
    assert len(frames) == stalltrace.FRAMES
    assert frames[0].startswith("tests/ops/test_stalltrace.py:")
    assert frames[0].endswith(" test_reading_a_stack_touches_no_file")


async def test_no_watchdog_without_a_threshold() -> None:
    watch = LoopWatch()
    with capture_logs() as logs:
        async with watch.running():
            assert watch.trace is None
            await asyncio.sleep(0.02)  # the watch is ticking
            _spin_in_python(0.15)
            await asyncio.sleep(0.03)
    assert not [e for e in logs if e["event"] == "event_loop_stalled"]
    assert watch.max_lag >= 0.1  # still measured, only not logged


@pytest.mark.parametrize(("given", "expected"), [(None, 100.0), ("0", 0.0), ("250", 250.0)])
def test_setting(given: str | None, expected: float) -> None:
    env = {"BRIDGE_APP_SECRET": "s", "BRIDGE_VERIFY_TOKEN": "v"}
    if given is not None:
        env["BRIDGE_STALL_LOG_MS"] = given
    assert load_settings(env=env).stall_log_ms == expected
