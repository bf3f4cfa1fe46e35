"""Run the bridge until SIGTERM/SIGINT, then stop in the order that loses nothing.

Stop order: stop accepting connections, let in-flight webhook requests finish
(`shutdown_timeout`), let replies in progress finish, stop the outbox (unsent replies stay in
the durable outbox), take the final snapshot, release the profile locks, exit 0. Under
systemd (`Type=notify`) READY=1 is sent once every profile is loaded and the port listens,
STOPPING=1 when a stop signal arrives, and WATCHDOG=1 pings come from the event loop.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Sequence

from aiohttp import web

from bridge.config import Settings
from bridge.errors import ConfigError
from bridge.http import webhook_protocol
from bridge.http.app import create_app
from bridge.http.guard import GUARD
from bridge.http.health import MONITOR
from bridge.ops import eventloop, gcpolicy, logs
from bridge.ops.logs import get_logger
from bridge.ops.metrics import Metrics
from bridge.ops.schedule import start_scheduler
from bridge.ops.sdnotify import Notifier, watchdog_interval
from bridge.runtime import ProfileRuntime


async def serve(
    settings: Settings,
    runtimes: Sequence[ProfileRuntime],
    metrics: Metrics | None = None,
    sockets: Sequence[socket.socket] = (),
) -> None:
    """Serve until stopped; on `sockets` already bound (bridge/ops/listen.py), else binding
    `settings.host:port` once the profiles are loaded."""
    log = get_logger()
    notifier = Notifier(settings.notify_socket)
    interval = watchdog_interval(settings.watchdog_usec, settings.watchdog_pid)
    app = create_app(settings, runtimes, metrics)
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=settings.shutdown_timeout, access_log=None
    )
    async with notifier.watchdog_running(interval):
        await runner.setup()  # starts the profiles: loads state, may refuse corrupt files
        try:
            await _serve_until_stopped(settings, runtimes, runner, notifier, sockets)
        finally:
            await runner.cleanup()
    log.info("bridge_stopped")


async def _serve_until_stopped(
    settings: Settings,
    runtimes: Sequence[ProfileRuntime],
    runner: web.AppRunner,
    notifier: Notifier,
    sockets: Sequence[socket.socket],
) -> None:
    log = get_logger()
    loop = asyncio.get_running_loop()
    logs.batch_on(loop)  # lines logged on the loop: to the writer thread once per turn
    guard = runner.app[GUARD]
    assert runner.server is not None  # set up by runner.setup()
    factory = webhook_protocol.protocol_factory(runner.app, runner.server)
    # Not aiohttp's sites: every connection goes through the guard (deadlines, the cap) and
    # the deliveries' fast path (bridge/http/webhook_protocol.py). The
    # sockets were bound before anything was written (bridge/ops/listen.py); without them (tests
    # that call serve() directly) bind here.
    try:
        if sockets:
            servers = [await loop.create_server(factory, sock=sock) for sock in sockets]
        else:
            servers = [await loop.create_server(factory, settings.host, settings.port, backlog=128)]
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None
    if guard.limit < settings.max_connections:
        log.warning(
            "max_connections_lowered",
            configured=settings.max_connections,
            limit=guard.limit,
            reason="the open-files limit (LimitNOFILE, ulimit -n) is too low for it",
        )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    scheduler = start_scheduler(
        runtimes, settings.snapshot_interval, runner.app[MONITOR], settings.health_interval
    )
    urls = _urls(servers)
    log.info(
        "bridge_listening",
        urls=urls,
        profiles=[r.slug for r in runtimes],
        webhook=[f"{u}/webhook" for u in urls[:1]],
        event_loop=eventloop.running(),
    )
    # Start-up made its own long-lived objects after the store froze its state (the app,
    # the runtimes, the replies owed): out of every later collection's way too.
    gcpolicy.settle()
    notifier.ready(f"serving {len(runtimes)} profile(s) on {', '.join(urls)}")
    try:
        await stop.wait()
    finally:
        log.info("bridge_stopping")
        for server in servers:
            server.close()  # stop accepting; runner.cleanup() then closes the connections
        # A connection accepted just before has its request on the way: serve it, not reset.
        await guard.serve_accepted(timeout=settings.header_timeout)
        # Deliveries in progress get their answer before the profiles stop (aiohttp's
        # runner.cleanup does the same for the connections it serves).
        await runner.app[webhook_protocol.CONNECTIONS].close(settings.shutdown_timeout)
        notifier.stopping("final snapshot")
        scheduler.shutdown(wait=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _urls(servers: Sequence[asyncio.Server]) -> list[str]:
    out = []
    for addr in (sock.getsockname() for server in servers for sock in server.sockets):
        if isinstance(addr, tuple) and len(addr) >= 2:
            out.append(f"http://{addr[0]}:{addr[1]}")
        elif addr:  # a unix socket handed over by systemd
            out.append(f"unix:{addr if isinstance(addr, str) else addr.decode(errors='replace')}")
    return out
