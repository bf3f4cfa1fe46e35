"""systemd's notify protocol (sd_notify(3)): readiness, status, stopping and watchdog pings.

A `Type=notify` unit tells systemd it is ready by sending the datagram `READY=1` to the unix
socket systemd names in `$NOTIFY_SOCKET`; with `WatchdogSec=` it must also send `WATCHDOG=1`
more often than every `$WATCHDOG_USEC` microseconds, or systemd kills and restarts it.
The protocol is a few lines, so we speak it directly instead of adding a dependency.

Like every module except `bridge.config`, this one reads no environment: the caller passes in
the values of `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

from bridge.ops.logs import get_logger


def watchdog_interval(watchdog_usec: str | None, watchdog_pid: str | None = None) -> float | None:
    """Seconds between watchdog pings for `$WATCHDOG_USEC`, or None when no watchdog is asked.

    Pings go at half the timeout, as sd_watchdog_enabled(3) recommends, so one late tick of
    the event loop does not get the service killed. `$WATCHDOG_PID`, when set, names the
    process the watchdog is meant for; for any other process (a child that inherited the
    environment) there is no watchdog.
    """
    if not watchdog_usec:
        return None
    if watchdog_pid:
        try:
            if int(watchdog_pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(watchdog_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


def _address(socket_path: str) -> str | None:
    """The socket address for `$NOTIFY_SOCKET`: a path, or `@name` for the abstract namespace.

    sd_notify(3) accepts only these two forms (a leading `@` stands for the NUL byte that
    starts a Linux abstract socket name); anything else is a misconfiguration.
    """
    if socket_path.startswith("/"):
        return socket_path
    if socket_path.startswith("@") and len(socket_path) > 1:
        return "\0" + socket_path[1:]
    return None


class Notifier:
    """Sends sd_notify messages to `socket_path`; with None every call is a no-op.

    No call ever raises into the service: a failed send returns False and is logged as a
    warning once, until a send succeeds again. Each message goes through a fresh
    non-blocking socket, as sd_notify(3) does: nothing to clean up or to share across a
    fork, and a stuck receiver can cost a message but never stall the event loop.
    """

    def __init__(self, socket_path: str | None) -> None:
        self.socket_path = socket_path or None
        self._address = _address(self.socket_path) if self.socket_path else None
        self._failing = False

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens for notifications."""
        return self.socket_path is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` assignments in one datagram; True when it was sent."""
        if self.socket_path is None:
            return False
        if self._address is None:
            self._failed(f"unsupported NOTIFY_SOCKET address {self.socket_path!r}")
            return False
        payload = "\n".join(assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(payload, self._address)
        except OSError as exc:
            self._failed(exc.strerror or str(exc))
            return False
        if self._failing:
            self._failing = False
            get_logger().info("sd_notify_recovered", socket=self.socket_path)
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: systemd marks the unit started and starts units after it."""
        return self.notify("READY=1", *self._status(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun, so systemd shows the unit as deactivating, not failed."""
        return self.notify("STOPPING=1", *self._status(status))

    def status(self, text: str) -> bool:
        """A one-line state shown by `systemctl status`."""
        return self.notify(*self._status(text))

    def watchdog(self) -> bool:
        """Tell systemd the service is alive; it restarts the service when these stop."""
        return self.notify("WATCHDOG=1")

    async def run_watchdog(self, interval: float) -> None:
        """Ping every `interval` seconds until cancelled.

        The pings come from the event loop on purpose: when the loop hangs (a blocking call,
        a deadlock), the pings stop and systemd restarts the service, which a ping from a
        thread would hide.
        """
        if interval <= 0:
            raise ValueError(f"watchdog interval must be positive, got {interval}")
        if self.socket_path is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    @contextlib.asynccontextmanager
    async def watchdog_running(self, interval: float | None) -> AsyncIterator[None]:
        """Run `run_watchdog(interval)` as a task for the duration of the block.

        `interval` None (no `WatchdogSec=`) runs nothing. Enter it before loading state, so
        a long but healthy start-up keeps pinging.
        """
        if interval is None or self.socket_path is None:
            yield
            return
        task = asyncio.create_task(self.run_watchdog(interval), name="sd-watchdog")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        # A newline would end the assignment and start another (a status could forge
        # READY=1), so the text is kept on one line.
        if text is None:
            return ()
        return ("STATUS=" + " ".join(text.splitlines()),)

    def _failed(self, reason: str) -> None:
        if not self._failing:
            self._failing = True
            get_logger().warning("sd_notify_failed", socket=self.socket_path, error=reason)
