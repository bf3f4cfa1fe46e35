"""Periodic work: the snapshot of every profile, on APScheduler's asyncio scheduler.

coalesce + max_instances=1: a slow snapshot is never run twice at once, and missed runs (a
suspended machine) collapse into one. The final snapshot at shutdown is not a job: APScheduler
cancels pending jobs when it shuts down, so the server calls it explicitly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bridge.errors import BridgeError
from bridge.ops.logs import get_logger
from bridge.ops.monitor import HealthMonitor
from bridge.runtime import ProfileRuntime


async def snapshot_job(runtime: ProfileRuntime) -> None:
    log = get_logger(profile=runtime.slug)
    started = time.monotonic()
    try:
        await runtime.store.snapshot()
        runtime.metrics.snapshot_seconds.labels(runtime.slug).observe(time.monotonic() - started)
    except BridgeError as exc:
        # The journal still holds every change; the next run tries again.
        log.error("snapshot_failed", error=str(exc))


def start_scheduler(
    runtimes: Sequence[ProfileRuntime],
    interval: float,
    monitor: HealthMonitor | None = None,
    health_interval: float = 120.0,
) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone="UTC")
    if monitor is not None:
        scheduler.add_job(
            monitor.check_all,
            IntervalTrigger(seconds=health_interval),
            id="health",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=60,
            next_run_time=datetime.now(tz=UTC),  # once at start, then every interval
        )
    for runtime in runtimes:
        scheduler.add_job(
            snapshot_job,
            IntervalTrigger(seconds=interval),
            args=[runtime],
            id=f"snapshot:{runtime.slug}",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=60,
        )
    scheduler.start()
    return scheduler
