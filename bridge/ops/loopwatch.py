"""How late the event loop runs: a stalled loop delays every webhook acknowledgement.

A task sleeps TICK seconds at a time and records how much later than asked it woke up. That
lateness is the longest any callback (a snapshot slice, a garbage collection, a slow parse)
kept the loop from everything else meanwhile. Exposed in /metrics as a histogram and as the
largest lag since start, so an operator sees stalls that averages hide.

On a shared machine a late wake-up can also be the kernel running someone else: the process
was not on a CPU at all. So each lag is also counted in CPU time, as the part of it that this
process's threads were running (`min(lag, process CPU during the tick)`): an upper bound of
the stall the bridge caused itself, reported beside the wall-clock one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry, Gauge, Histogram

from bridge.ops import gcpolicy
from bridge.ops.stalltrace import StallTrace

TICK = 0.01  # seconds; 100 wake-ups a second cost a few microseconds each
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopWatch:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.max_lag = 0.0  # seconds, since start
        self.max_cpu_lag = 0.0  # the same, counting only time this process was running
        self.trace: StallTrace | None = None  # `running(stall_log=...)`
        self._histogram = Histogram(
            "whatsapp_bridge_event_loop_lag_seconds",
            "How late the event loop woke a 10 ms timer",
            buckets=BUCKETS,
            registry=registry,
        )
        self._max = Gauge(
            "whatsapp_bridge_event_loop_lag_max_seconds",
            "Longest event-loop stall since start",
            registry=registry,
        )
        self._max.set_function(lambda: self.max_lag)
        self._max_cpu = Gauge(
            "whatsapp_bridge_event_loop_lag_cpu_max_seconds",
            "Longest event-loop stall since start, counting only time the process was on a "
            "CPU (what the bridge caused itself, not other programs' load)",
            registry=registry,
        )
        self._max_cpu.set_function(lambda: self.max_cpu_lag)
        self._gc = Gauge(
            "whatsapp_bridge_gc_pause_max_seconds",
            "Longest garbage collection since start, per generation (2: full)",
            ["generation"],
            registry=registry,
        )
        for generation in range(3):
            self._gc.labels(str(generation)).set_function(
                lambda g=generation: gcpolicy.longest[g]  # type: ignore[misc]
            )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        observe = self._histogram.observe
        cpu = time.process_time
        trace = self.trace
        own = time.thread_time  # the loop thread's CPU alone, for the stall log
        while True:
            beat = trace.beat() if trace is not None else 0.0
            due = loop.time() + TICK
            cpu_before = cpu()
            own_before = own() if trace is not None else 0.0
            await asyncio.sleep(TICK)
            lag = max(0.0, loop.time() - due)
            observe(lag)
            if lag > self.max_lag:
                self.max_lag = lag
            cpu_lag = min(lag, cpu() - cpu_before)
            if cpu_lag > self.max_cpu_lag:
                self.max_cpu_lag = cpu_lag
            if trace is not None and lag > trace.threshold:
                trace.stalled(beat, lag, cpu_lag, min(lag, own() - own_before))

    @contextlib.asynccontextmanager
    async def running(self, stall_log: float = 0.0) -> AsyncIterator[LoopWatch]:
        """Watch the loop meanwhile; with `stall_log` (seconds), log each stall longer than
        that with where it was spent (bridge/ops/stalltrace.py)."""
        self.trace = StallTrace(TICK, stall_log).start() if stall_log > 0 else None
        task = asyncio.create_task(self.run(), name="loopwatch")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self.trace is not None:
                self.trace.stop()
                self.trace = None
