"""Slow and idle clients against a real `bridge serve`: deadlines, the connection cap, fds."""

from __future__ import annotations

import contextlib
import http.client
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import simulate
from tests.conftest import APP_SECRET
from tests.load import post_signed_sync
from tests.test_cli import BRIDGE, Served, clean_env, free_port, parse_log, start_serve, wait_ready

HALF_A_HEAD = b"POST /webhook HTTP/1.1\r\nHost: bridge\r\nX-Hub-Signature-256: sha2"


@contextlib.contextmanager
def serving(tmp_path: Path, **settings: str) -> Iterator[Served]:
    env = clean_env(
        BRIDGE_APP_SECRET=APP_SECRET,
        BRIDGE_VERIFY_TOKEN="v",
        BRIDGE_VAR_DIR=str(tmp_path / "var"),
        BRIDGE_PORT=str(free_port()),
        **settings,
    )
    server = start_serve(tmp_path / "var", env=env)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def connect(port: int, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def seconds_until_closed(sock: socket.socket, limit: float = 10) -> float:
    """How long until the server closes `sock` (fails after `limit` seconds)."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {limit} s") from None
    return time.monotonic() - started


def status_of(port: int, method: str, path: str, raw: bytes = b"") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = simulate.signed_headers(raw, APP_SECRET) if raw else {}
        conn.request(method, path, body=raw or None, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def delivery() -> bytes:
    message = simulate.text_message("through the crowd", "34600000001")
    return simulate.encode(simulate.delivery(simulate.change_value([message])))


def test_half_a_request_head_or_nothing_at_all_is_cut_off_at_the_deadline(
    tmp_path: Path,
) -> None:
    with (
        serving(tmp_path, BRIDGE_HEADER_TIMEOUT="1") as server,
        connect(server.port) as half,
        connect(server.port) as silent,
    ):
        half.sendall(HALF_A_HEAD)
        assert 0.5 < seconds_until_closed(half) < 4
        assert seconds_until_closed(silent) < 4
        assert status_of(server.port, "GET", "/healthz") == 200


def test_an_idle_keep_alive_connection_is_closed_after_the_header_timeout(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, BRIDGE_HEADER_TIMEOUT="1") as server, connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200 and response.getheader("Connection") != "close"
        response.read()
        assert 0.5 < seconds_until_closed(sock) < 4


def test_a_trickling_body_gets_a_408_at_the_body_deadline(tmp_path: Path) -> None:
    raw = delivery()
    signature = simulate.signed_headers(raw, APP_SECRET)["X-Hub-Signature-256"]
    head = (
        f"POST /webhook HTTP/1.1\r\nHost: bridge\r\nContent-Length: {len(raw)}\r\n"
        f"X-Hub-Signature-256: {signature}\r\n\r\n"
    ).encode()
    with serving(tmp_path, BRIDGE_BODY_TIMEOUT="1") as server, connect(server.port) as sock:
        sock.sendall(head)
        started = time.monotonic()
        sock.settimeout(0.1)
        answer = b""
        for byte in raw[:-1]:  # one byte every 0.1 s: the whole body would take a minute
            sock.sendall(bytes([byte]))
            with contextlib.suppress(TimeoutError):
                answer = sock.recv(4096)
            if answer or time.monotonic() - started > 10:
                break
        elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert 0.8 < elapsed < 4
        assert status_of(server.port, "POST", "/webhook", raw) == 200, "the same body, sent whole"


def test_idle_connections_beyond_the_cap_never_stop_health_or_deliveries(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, BRIDGE_MAX_CONNECTIONS="20", BRIDGE_HEADER_TIMEOUT="60") as server:
        crowd = [connect(server.port) for _ in range(60)]
        try:
            for sock in crowd:
                sock.sendall(HALF_A_HEAD)
            for _ in range(3):
                assert status_of(server.port, "GET", "/healthz") == 200
                assert status_of(server.port, "POST", "/webhook", delivery()) == 200
            assert status_of(server.port, "GET", "/metrics") == 200
        finally:
            for sock in crowd:
                sock.close()
        code, events = server.stop()
    assert code == 0
    limited = [e for e in events if e["event"] == "connection_limit_reached"]
    assert limited and limited[0]["limit"] == 20 and limited[0]["evicted"] >= 1


def test_the_cap_fits_under_the_open_files_limit(tmp_path: Path) -> None:
    """The observed outage: a few hundred idle connections took every file descriptor."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) is not installed")
    var, port = tmp_path / "var", free_port()
    env = clean_env(
        BRIDGE_APP_SECRET=APP_SECRET,
        BRIDGE_VERIFY_TOKEN="v",
        BRIDGE_VAR_DIR=str(var),
        BRIDGE_PORT=str(port),
        BRIDGE_HEADER_TIMEOUT="60",
        BRIDGE_SNAPSHOT_INTERVAL="1",  # snapshots need file descriptors too
    )
    log_path = tmp_path / "bridge.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [prlimit, "--nofile=256", "--", *BRIDGE, "serve", "--log-format", "json"],
            env=env,
            stdout=log,
            stderr=log,
            text=True,
        )
    crowd: list[socket.socket] = []
    try:
        wait_ready(port, proc, log_path)
        for _ in range(400):
            sock = connect(port)
            sock.sendall(HALF_A_HEAD)
            crowd.append(sock)
        assert status_of(port, "GET", "/healthz") == 200
        assert post_signed_sync(port, delivery(), APP_SECRET) == 200
        written = log_path.read_text().count('"snapshot_written"')
        deadline = time.monotonic() + 10
        while log_path.read_text().count('"snapshot_written"') == written:
            assert time.monotonic() < deadline, "no snapshot with the crowd connected"
            time.sleep(0.1)
        for sock in crowd:
            sock.close()
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        for sock in crowd:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = parse_log(log_path.read_text())
    lowered = next(e for e in events if e["event"] == "max_connections_lowered")
    assert lowered["configured"] == 1024 and lowered["limit"] == 256 - 128
    assert "snapshot_failed" not in [e["event"] for e in events]
