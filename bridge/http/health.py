"""Liveness, readiness and metrics endpoints for load balancers, monitors and operators."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from aiohttp import web

from bridge.http.guard import expect_continue
from bridge.http.webhook import METRICS, RUNTIMES
from bridge.ops.monitor import HealthMonitor, disk_check

READY = web.AppKey("ready", dict[str, bool])
METRICS_TOKEN: web.AppKey[str | None] = web.AppKey("metrics_token")
MONITOR = web.AppKey("monitor", HealthMonitor)


async def healthz(request: web.Request) -> web.Response:
    """The process is up and its event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Every profile's state is loaded and it accepts deliveries; 503 until then. Each
    profile's outbound health (Graph API, assistant) and its free disk are reported but do
    not make the bridge unready: deliveries are still recorded while replies wait in the
    outbox. The disk is checked now, not at the monitor's last round: a profile shows
    `degraded` as soon as its disk runs low."""
    ready = request.app[READY]
    monitor = request.app[MONITOR]
    profiles = {}
    for slug, runtime in request.app[RUNTIMES].items():
        last = monitor.health[slug]
        checks = {**last.checks, "disk": disk_check(runtime)}
        status = "degraded" if checks["disk"] != "ok" else last.status
        health = {"status": status, "checks": checks, "checked_at": last.checked_at}
        profiles[slug] = {
            "ready": ready.get(slug, False),
            "health": health,
            "conversations": len(runtime.store.state.conversations),
            "outbox": len(runtime.store.state.outbox),
            # Business hours: "open"/"closed" now, "always" without configured hours.
            "hours": runtime.config.hours.describe(datetime.now(UTC))
            if runtime.config.hours is not None
            else "always",
        }
    ok = bool(profiles) and all(p["ready"] for p in profiles.values())
    return web.json_response(
        {"status": "ready" if ok else "starting", "profiles": profiles}, status=200 if ok else 503
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; behind a bearer token when one is configured."""
    token = request.app[METRICS_TOKEN]
    if token:
        # Header values carry any byte a client sent (undecodable ones as surrogates):
        # compare bytes, never let the encoding fail.
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            return web.Response(status=401, text="metrics need a bearer token\n")
    body = request.app[METRICS].render()
    return web.Response(
        body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz, expect_handler=expect_continue)
    app.router.add_get("/readyz", readyz, expect_handler=expect_continue)
    app.router.add_get("/metrics", metrics, expect_handler=expect_continue)
