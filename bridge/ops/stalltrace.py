"""Who stalled the event loop: a watchdog thread that names where a long stall was spent.

The loop watch (bridge/ops/loopwatch.py) measures how late the loop runs, not why, and on uvloop
nothing names the callback that ran long. This thread wakes every few milliseconds; when the
loop's heartbeat is older than the threshold it takes the stacks of the process's threads
(`sys._current_frames`) while the stall is still going on, and once the loop beats again it
logs one `event_loop_stalled` warning: how long, what the loop's thread was running, which
other threads were busy (the journal's writer, the snapshot's) and the collections that ran
in it.

A thread only gets to look while the stalling code lets go of the interpreter lock (Python
code does every few milliseconds), so a stall spent in one long C call that holds it (a
collection, a large JSON dump) shows no frame; the collector's share is taken from its own
callbacks instead (`gcpolicy.recent`). The cost is one wake-up every 5 ms.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import FrameType

from bridge.ops import gcpolicy
from bridge.ops.logs import get_logger

POLL = 0.005  # seconds between looks
FRAMES = 4  # innermost frames named per thread
# Frames of threads that are waiting, not working: left out of the report.
_IDLE = frozenset({"wait", "_wait_for_tstate_lock", "select", "poll", "get", "sleep", "_worker"})
# The directory that holds the `bridge` package (bridge/ops/stalltrace.py is 3 levels down).
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _where(frame: FrameType | None) -> list[str]:
    """The innermost frames as `file:line function`, paths relative to the package root.

    Read from the frames themselves, not with `traceback.extract_stack`: that walks the whole
    stack and reads source lines through linecache, file I/O that lets go of the interpreter
    lock, and each time the stalling thread takes it back for a switch interval (5 ms). On a
    deep stack the look then outlasted the stall it was meant to show, and named nothing or
    the code that ran after it."""
    out: list[str] = []
    while frame is not None and len(out) < FRAMES:
        code = frame.f_code
        path = code.co_filename
        if path.startswith(_ROOT):
            path = os.path.relpath(path, _ROOT)
        elif "site-packages" in path:
            path = path.split("site-packages" + os.sep, 1)[1]
        out.append(f"{path}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return out


class StallTrace:
    """Made on the loop's thread; the loop watch calls `beat` at each tick and `stalled`
    after a tick that came late by more than `threshold` seconds; `stop` ends the thread."""

    def __init__(self, tick: float, threshold: float) -> None:
        self.threshold = threshold
        self._due = tick + threshold  # a beat older than this: the loop is stalled now
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-trace", daemon=True)
        self._beat = time.monotonic()
        # (the beat the stall followed, the threads' stacks then)
        self._captured: tuple[float, dict[str, list[str]]] | None = None
        self.reported = 0  # stalls logged so far
        self._log = get_logger()

    def start(self) -> StallTrace:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)

    def beat(self) -> float:
        """The loop is running now (a tick starts); returns the beat to hand to `stalled`."""
        self._beat = now = time.monotonic()
        return now

    def stalled(self, beat: float, lag: float, cpu_lag: float, loop_cpu: float) -> None:
        """The tick started at `beat` came `lag` seconds late, of which the process ran
        `cpu_lag` (all its threads) and the loop's own thread `loop_cpu`: log where that
        went. A stall the loop's thread did not run for is other threads holding the
        interpreter lock (`busy`), or the host's other programs."""
        captured, self._captured = self._captured, None
        stacks = captured[1] if captured is not None and captured[0] == beat else {}
        now = time.monotonic()
        # Collections that ended within the stall (they hold the interpreter lock throughout,
        # so no stack shows them).
        collections = [
            f"generation {generation}: {took * 1000:.1f} ms"
            for ended, took, generation in list(gcpolicy.recent)
            if now - lag - 0.001 <= ended <= now
        ]
        self.reported += 1
        self._log.warning(
            "event_loop_stalled",
            ms=round(lag * 1000, 1),
            cpu_ms=round(cpu_lag * 1000, 1),
            loop_cpu_ms=round(loop_cpu * 1000, 1),
            # Empty: no Python code of the loop's thread ran while the watchdog looked (one
            # long C call that held the interpreter lock, such as a collection).
            loop=stacks.pop("loop", []),
            busy=stacks,
            collections=collections,
        )

    def _run(self) -> None:
        while not self._stop.wait(POLL):
            beat = self._beat
            captured = self._captured
            if (captured is None or captured[0] != beat) and time.monotonic() - beat > self._due:
                self._captured = (beat, self._stacks())

    def _stacks(self) -> dict[str, list[str]]:
        names = {t.ident: t.name for t in threading.enumerate()}
        out: dict[str, list[str]] = {}
        me = threading.get_ident()
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            if ident == self._loop_thread:
                out["loop"] = _where(frame)
            elif frame.f_code.co_name not in _IDLE:
                out[names.get(ident, str(ident))] = _where(frame)
        return out
