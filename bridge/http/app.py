"""`create_app`: the aiohttp application for a set of profile runtimes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from bridge.config import Settings
from bridge.http import api, console, health, webhook, webhook_protocol
from bridge.http.guard import GUARD, ConnectionGuard, add_fallback_route, connection_limit
from bridge.http.webhook_protocol import WebhookConnections
from bridge.ops.metrics import Metrics, Watched
from bridge.ops.monitor import HealthMonitor
from bridge.runtime import ProfileRuntime


def create_app(
    settings: Settings, runtimes: Sequence[ProfileRuntime], metrics: Metrics | None = None
) -> web.Application:
    """Routes and lifecycle: profiles start before the first request and stop after the last.

    `app[GUARD]` holds the connection guard and `app[webhook_protocol.CONNECTIONS]` the
    deliveries' fast path: `bridge.http.server` makes its listening socket's connections through
    both (`webhook_protocol.protocol_factory`).

    Starting a profile loads its state; stopping it lets replies finish, stops the outbox and
    takes the final snapshot. aiohttp runs cleanup only for contexts whose start finished.
    """
    metrics = metrics or Metrics()
    guard = ConnectionGuard(
        connection_limit(settings.max_connections),
        settings.header_timeout,
        settings.body_timeout,
        on_drop=lambda reason: metrics.connections_dropped.labels(reason).inc(),
    )
    metrics.connections.set_function(lambda: guard.open)
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[guard.middleware])
    app[GUARD] = guard
    by_slug = {r.slug: r for r in runtimes}
    app[webhook.RUNTIMES] = by_slug
    app[health.READY] = {}
    monitor = HealthMonitor(list(runtimes))
    metrics.watch(
        lambda: {r.slug: Watched(r.store.state, r.config.state_dir) for r in runtimes},
        lambda: monitor.store_bytes,
    )
    app[webhook.METRICS] = metrics
    app[webhook_protocol.CONNECTIONS] = WebhookConnections(
        by_slug, metrics, settings.max_body_bytes
    )
    app[health.METRICS_TOKEN] = settings.metrics_token
    app[health.MONITOR] = monitor
    webhook.add_routes(app)
    health.add_routes(app)
    api.add_routes(app, settings.api_token)  # operators: /api/v1 and /console, with a token
    console.add_routes(app, settings.api_token is not None)
    add_fallback_route(app)  # last: it takes whatever the routes above do not

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        started: list[ProfileRuntime] = []
        try:
            for runtime in runtimes:
                await runtime.start()
                started.append(runtime)
                app[health.READY][runtime.slug] = True
            yield
        finally:
            for runtime in reversed(started):
                app[health.READY][runtime.slug] = False
                await runtime.stop(settings.shutdown_timeout)

    async def watch_loop(app: web.Application) -> AsyncIterator[None]:
        async with metrics.loop.running(settings.stall_log_ms / 1000):
            yield

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(watch_loop)  # after loading: that one long stall is not news
    return app
