"""A real `bridge serve` under a (fake) systemd: READY, WATCHDOG pings, STOPPING, in order."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from tests.test_cli import clean_env, free_port, start_serve


def test_serve_speaks_the_notify_protocol(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    env = clean_env(
        BRIDGE_PORT=str(free_port()),
        BRIDGE_VAR_DIR=str(tmp_path / "var"),
        NOTIFY_SOCKET=str(path),
        WATCHDOG_USEC="200000",  # ping every 0.1 s
    )
    with sock:
        server = start_serve(tmp_path / "var", "--dev", env=env)
        messages: list[bytes] = []
        while not any(m.startswith(b"READY=1") for m in messages):
            messages.append(sock.recv(4096))
        ready_at = len(messages)
        while sum(m == b"WATCHDOG=1" for m in messages[ready_at:]) < 3:
            messages.append(sock.recv(4096))
        code, _ = server.stop(signal.SIGTERM)
        sock.settimeout(1)
        while not any(m.startswith(b"STOPPING=1") for m in messages):
            messages.append(sock.recv(4096))
    assert code == 0
    kinds = [m.split(b"\n")[0].split(b"=")[0] for m in messages]
    ready, stopping = kinds.index(b"READY"), kinds.index(b"STOPPING")
    assert ready < stopping
    assert kinds[ready + 1 : stopping].count(b"WATCHDOG") >= 3
    assert b"STATUS=serving 1 profile(s)" in messages[ready]
