"""Periodic work: the snapshot of every profile, on APScheduler's asyncio scheduler.

coalesce + max_instances=1: a slow snapshot is never run twice at once, and missed runs (a
suspended machine) collapse into one. The final snapshot at shutdown is not a job: APScheduler
cancels pending jobs when it shuts down, so the server calls it explicitly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bridge.errors import BridgeError
from bridge.logs import get_logger
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


def start_scheduler(runtimes: Sequence[ProfileRuntime], interval: float) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone="UTC")
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
