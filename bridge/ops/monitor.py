"""Health monitor: checks each profile's outbound path without sending any message.

Every two minutes (APScheduler) and once at start: the Graph API token and phone number
(an authenticated read of the number), the assistant backend (any HTTP answer from its
URL counts as reachable), and the free disk under the profile's state (diskspace.py). A
profile is `up` when every configured part answers and the disk is not low, `degraded`
otherwise; each change is logged once and recorded in the profile's event log, and on the
way back to `up` the outbox retries its queued replies at once instead of waiting out its
backoff. The size of each profile's directory is measured here too (in a thread: it walks
every file), for /metrics.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp

from bridge.ops.diskspace import dir_size, disk_space, low_disk_advice
from bridge.ops.logs import get_logger
from bridge.ops.metrics import MeteredSender
from bridge.runtime import ProfileRuntime
from bridge.whatsapp.graph import GraphClient
from bridge.whatsapp.sender import Sender, SendError

CHECK_TIMEOUT = 10.0


@dataclass
class ProfileHealth:
    status: str = "unknown"  # up | degraded | unknown (not checked yet)
    checks: dict[str, str] = field(default_factory=dict)  # part -> "ok" | error | "not configured"
    checked_at: float | None = None

    def as_json(self) -> dict[str, object]:
        return {"status": self.status, "checks": dict(self.checks), "checked_at": self.checked_at}


def _graph_client(sender: Sender) -> GraphClient | None:
    inner = sender.inner if isinstance(sender, MeteredSender) else sender
    return inner if isinstance(inner, GraphClient) else None


async def _reachable(url: str) -> str:
    """ "ok" when the URL answers at all (any status): the server is up and routable."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT)) as session,
            session.get(url) as resp,
        ):
            return "ok" if resp.status < 500 else f"HTTP {resp.status}"
    except TimeoutError:
        return f"timed out after {CHECK_TIMEOUT:g}s"
    except aiohttp.ClientError as exc:
        return f"unreachable: {exc}"


class HealthMonitor:
    def __init__(self, runtimes: list[ProfileRuntime]) -> None:
        self._runtimes = runtimes
        self.health: dict[str, ProfileHealth] = {r.slug: ProfileHealth() for r in runtimes}
        self.store_bytes: dict[str, int] = {}  # bytes under each profile's directory

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(r) for r in self._runtimes))

    async def check(self, runtime: ProfileRuntime) -> ProfileHealth:
        checks: dict[str, str] = {}
        graph = _graph_client(runtime.sender)
        if graph is None:
            checks["graph"] = "not configured (replies are logged, not sent)"
        else:
            try:
                await graph.check()
                checks["graph"] = "ok"
            except SendError as exc:
                checks["graph"] = str(exc)
        url = runtime.assistant.health_url()
        checks["assistant"] = await _reachable(url) if url else "embedded"
        checks["disk"] = disk_check(runtime)
        self.store_bytes[runtime.slug] = await asyncio.to_thread(dir_size, runtime.config.state_dir)
        failing = [part for part, result in checks.items() if result not in _HEALTHY]
        status = "degraded" if failing else "up"
        previous = self.health[runtime.slug]
        current = ProfileHealth(status, checks, time.time())
        self.health[runtime.slug] = current
        if status != previous.status:
            log = get_logger(profile=runtime.slug)
            event = log.warning if status == "degraded" else log.info
            event("health_changed", previous=previous.status, status=status, checks=checks)
            if previous.status != "unknown" or status == "degraded":
                # Not the first "up" of every start. The parts' names only: a check's text
                # may quote the Graph API's answer.
                runtime.events.record(
                    "health_changed", previous=previous.status, status=status, failing=failing
                )
            if status == "up" and previous.status == "degraded":
                runtime.outbox.kick()
        return current


def disk_check(runtime: ProfileRuntime) -> str:
    """ "ok", or why the disk under the profile's state is low (a statvfs: cheap, live)."""
    try:
        space = disk_space(runtime.config.state_dir)
    except OSError as exc:
        return f"cannot check: {exc.strerror or exc}"
    return low_disk_advice(space) if space.low else "ok"


_HEALTHY = ("ok", "embedded", "not configured (replies are logged, not sent)")
