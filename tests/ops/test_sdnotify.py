"""The sd_notify client against real unix datagram sockets, as systemd would listen."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bridge.ops.sdnotify import Notifier, watchdog_interval


class Receiver:
    """A bound AF_UNIX/SOCK_DGRAM socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        # The value systemd would put in $NOTIFY_SOCKET.
        self.notify_socket = notify_socket

    def recv(self, timeout: float = 2.0) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096)

    async def arecv(self, timeout: float = 2.0) -> bytes:
        self.sock.setblocking(False)
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout)

    def drain(self) -> list[bytes]:
        """Every datagram already queued, without waiting."""
        self.sock.setblocking(False)
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096))
            except BlockingIOError:
                return out


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield Receiver(sock, str(path))
    finally:
        sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"whatsapp-bridge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)  # Linux abstract namespace: no file, gone when the socket closes
    try:
        yield Receiver(sock, "@" + name)
    finally:
        sock.close()


def test_messages_arrive_as_exact_datagrams_in_order(receiver: Receiver) -> None:
    notifier = Notifier(receiver.notify_socket)

    assert notifier.ready()
    assert notifier.status("serving 2 profiles")
    assert notifier.watchdog()
    assert notifier.stopping()

    assert [receiver.recv() for _ in range(4)] == [
        b"READY=1",
        b"STATUS=serving 2 profiles",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]


def test_abstract_socket_name_with_at_sign_is_reached(abstract_receiver: Receiver) -> None:
    notifier = Notifier(abstract_receiver.notify_socket)

    assert notifier.ready()
    assert notifier.watchdog()
    assert notifier.stopping()

    assert [abstract_receiver.recv() for _ in range(3)] == [
        b"READY=1",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]


def test_ready_with_status_sends_both_in_one_datagram(receiver: Receiver) -> None:
    Notifier(receiver.notify_socket).ready("listening on http://127.0.0.1:8080")

    assert receiver.recv() == b"READY=1\nSTATUS=listening on http://127.0.0.1:8080"


def test_status_text_cannot_forge_another_assignment(receiver: Receiver) -> None:
    Notifier(receiver.notify_socket).status("line one\nREADY=1")

    assert receiver.recv() == b"STATUS=line one READY=1"


@pytest.mark.parametrize("socket_path", [None, ""])
def test_without_notify_socket_every_call_is_a_no_op(socket_path: str | None) -> None:
    notifier = Notifier(socket_path)

    with capture_logs() as logs:
        results = [
            notifier.ready(),
            notifier.status("x"),
            notifier.watchdog(),
            notifier.stopping(),
        ]

    assert not notifier.enabled
    assert results == [False, False, False, False]
    assert logs == []


def test_missing_socket_file_never_raises_and_warns_once(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "no-such-socket"))

    with capture_logs() as logs:
        results = [notifier.ready(), notifier.watchdog(), notifier.watchdog(), notifier.stopping()]

    assert results == [False, False, False, False]
    assert [e["event"] for e in logs] == ["sd_notify_failed"]
    assert logs[0]["log_level"] == "warning"


def test_socket_whose_listener_died_never_raises(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: connection refused

    with capture_logs() as logs:
        assert not Notifier(str(path)).watchdog()

    assert [e["event"] for e in logs] == ["sd_notify_failed"]


def test_unsupported_address_is_reported_not_raised() -> None:
    notifier = Notifier("relative/notify.sock")

    with capture_logs() as logs:
        assert not notifier.ready()
        assert not notifier.ready()

    assert [e["event"] for e in logs] == ["sd_notify_failed"]


def test_sending_again_after_a_failure_recovers_and_rearms_the_warning(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    notifier = Notifier(str(path))

    with capture_logs() as logs:
        assert not notifier.watchdog()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        with sock:
            assert notifier.watchdog()
            assert sock.recv(4096) == b"WATCHDOG=1"
        assert not notifier.watchdog()

    assert [e["event"] for e in logs] == [
        "sd_notify_failed",
        "sd_notify_recovered",
        "sd_notify_failed",
    ]


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),  # WatchdogSec=30: ping every 15 s
        ("1000000", None, 0.5),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),  # the watchdog is meant for another process
        ("30000000", "not-a-pid", None),
        (None, None, None),  # no WatchdogSec=
        ("", None, None),
        ("0", None, None),
        ("-1", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    usec: str | None, pid: str | None, expected: float | None
) -> None:
    if pid == "self":
        pid = str(os.getpid())
    elif pid == "other":
        pid = str(os.getpid() + 1)

    assert watchdog_interval(usec, pid) == expected


async def test_watchdog_task_pings_repeatedly_until_cancelled(receiver: Receiver) -> None:
    task = asyncio.create_task(Notifier(receiver.notify_socket).run_watchdog(0.01))

    assert [await receiver.arecv() for _ in range(3)] == [b"WATCHDOG=1"] * 3

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    receiver.drain()
    await asyncio.sleep(0.05)
    assert receiver.drain() == []


async def test_watchdog_pings_stop_while_the_event_loop_is_blocked(receiver: Receiver) -> None:
    task = asyncio.create_task(Notifier(receiver.notify_socket).run_watchdog(0.05))
    try:
        assert await receiver.arecv() == b"WATCHDOG=1"

        time.sleep(0.3)  # a hung loop: six intervals pass without the task running
        assert receiver.drain() == []

        assert await receiver.arecv() == b"WATCHDOG=1"  # and they resume with the loop
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watchdog_task_without_socket_returns_at_once() -> None:
    await asyncio.wait_for(Notifier(None).run_watchdog(0.01), timeout=1)


async def test_watchdog_task_rejects_a_non_positive_interval(receiver: Receiver) -> None:
    with pytest.raises(ValueError, match="positive"):
        await Notifier(receiver.notify_socket).run_watchdog(0)


async def test_watchdog_running_pings_inside_the_block_only(receiver: Receiver) -> None:
    notifier = Notifier(receiver.notify_socket)

    async with notifier.watchdog_running(0.01):
        assert [await receiver.arecv() for _ in range(2)] == [b"WATCHDOG=1"] * 2

    receiver.drain()
    await asyncio.sleep(0.05)
    assert receiver.drain() == []


async def test_watchdog_running_without_watchdog_sends_nothing(receiver: Receiver) -> None:
    async with Notifier(receiver.notify_socket).watchdog_running(None):
        await asyncio.sleep(0.03)

    assert receiver.drain() == []
