"""The control socket of a real `bridge serve`: who may use it, what a crash leaves, what a
hung bridge looks like to the operator, and that sessions-admin never writes around it."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import stat
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.control.protocol import encode_request
from bridge.persistence import layout
from bridge.persistence.lock import ProfileLock
from tests.admin.support import admin, admin_json
from tests.control.conftest import Serving
from tests.control.support import kill_9, serve, stored
from tests.test_cli import Served, run

PHONES = ("34600000001", "34600000002")
NOBODY = 65534


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Served]:
    """A bridge that recorded a message from each of PHONES."""
    server = serve(tmp_path / "var")
    for phone in PHONES:
        assert run(["simulate", "hola", "--from", phone], server.env).returncode == 0
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def socket_of(server: Served) -> Path:
    return layout.control_socket_path(server.var_dir / "profiles" / "default")


def test_the_socket_is_private_to_the_bridge_and_removed_at_stop(running: Served) -> None:
    path = socket_of(running)
    info = path.lstat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    code, events = running.stop()
    assert code == 0 and not path.exists()
    assert [e["socket"] for e in events if e["event"] == "control_listening"] == [str(path)]


def test_a_socket_left_by_kill_9_is_replaced_at_the_next_start(
    running: Served, serving: Serving
) -> None:
    path = socket_of(running)
    kill_9(running)
    stale = path.lstat().st_ino  # a kill -9 leaves the file behind
    # No bridge holds the lock: sessions-admin writes directly, ignoring the dead socket.
    direct = admin(["delete", PHONES[0]], running.env)
    assert direct.returncode == 0, direct.stderr
    again = serving(running.var_dir, running.env)
    assert path.lstat().st_ino != stale
    live = admin(["delete", PHONES[1]], running.env)
    code, events = again.stop()
    assert live.returncode == 0, live.stderr
    assert code == 0 and stored(running.var_dir).conversations == {}
    assert [e["op"] for e in events if e["event"] == "control_request"] == ["delete"]


def test_a_hung_bridge_is_a_one_line_timeout_and_nothing_is_written(running: Served) -> None:
    running.proc.send_signal(signal.SIGSTOP)
    try:
        result = admin(["delete", PHONES[0], "--timeout", "1.5"], running.env)
    finally:
        running.proc.send_signal(signal.SIGCONT)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("sessions-admin: error: the bridge (pid ")
    assert "did not answer within 1.5 s" in line and "sessions-admin wrote nothing" in line
    # Woken up, the bridge finds that nobody waits for the answer and does not delete.
    assert PHONES[0] in {r["key"] for r in admin_json(["list"], running.env)}
    code, events = running.stop()
    assert code == 0
    assert [e["op"] for e in events if e["event"] == "control_request_abandoned"] == ["delete"]
    assert PHONES[0] in stored(running.var_dir).conversations


def test_a_profile_locked_without_a_control_socket_is_never_written_around(
    tmp_path: Path, serving: Serving
) -> None:
    """A process holds the lock but does not answer (a bridge still loading, or an older
    release): sessions-admin waits for its socket, then gives up with one line."""
    server = serving(tmp_path / "var")
    assert run(["simulate", "hola", "--from", PHONES[0]], server.env).returncode == 0
    assert server.stop()[0] == 0
    state_dir = tmp_path / "var" / "profiles" / "default"
    before = {p.name: p.read_bytes() for p in state_dir.rglob("*") if p.is_file()}
    lock = ProfileLock(state_dir, "default")
    lock.acquire()
    try:
        result = admin(["delete", PHONES[0], "--timeout", "1"], server.env)
    finally:
        lock.release()
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert f"(pid {os.getpid()}) holds profile 'default' but does not answer" in line
    assert "nothing was changed" in line
    after = {p.name: p.read_bytes() for p in state_dir.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k != "lock"} == {
        k: v for k, v in before.items() if k != "lock"
    }


def test_restore_still_needs_the_bridge_stopped(running: Served) -> None:
    backup = admin(["backup"], running.env)
    assert backup.returncode == 0, backup.stderr
    result = admin(["restore", backup.stdout.strip()], running.env)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "restore replaces the whole store, so it needs the bridge stopped" in line
    assert "systemctl stop whatsapp-bridge@default" in line and "nothing was changed" in line


def connect_as(uid: int, path: Path) -> dict[str, object]:
    """Send a delete request from a child process running as `uid`: what it got back."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: only syscalls, then _exit
        outcome: dict[str, object]
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                sock.sendall(encode_request("delete", {"key": PHONES[0]}))
                data = b""
                while not data.strip().endswith(b"}"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            outcome = {"answer": json.loads(data.strip().splitlines()[-1])}
        except OSError as exc:
            outcome = {"errno": exc.errno}
        except BaseException as exc:
            outcome = {"failed": repr(exc)}
        os.write(write_end, json.dumps(outcome).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))


@pytest.mark.skipif(os.geteuid() != 0, reason="running a client as another uid needs root")
def test_another_uid_is_refused_by_the_mode_and_by_its_credentials(serving: Serving) -> None:
    # A var dir other users can reach (pytest's tmp_path is inside a 0700 directory).
    base = Path(tempfile.mkdtemp(prefix="cc-uid-", dir="/tmp"))
    try:
        os.chmod(base, 0o711)
        server = serving(base / "var")
        try:
            path = socket_of(server)
            # As created: the profile directory (0700) keeps everyone else out.
            assert run(["simulate", "hola", "--from", PHONES[0]], server.env).returncode == 0
            assert connect_as(NOBODY, path) == {"errno": errno.EACCES}
            # Directories opened up by mistake: the socket's own mode (0600) still refuses.
            for directory in (base / "var", base / "var" / "profiles", path.parent):
                os.chmod(directory, 0o711)
            assert connect_as(NOBODY, path) == {"errno": errno.EACCES}
            # The socket opened up as well: its peer credentials are checked.
            os.chmod(path, 0o666)
            outcome = connect_as(NOBODY, path)
            assert outcome == {
                "answer": {
                    "ok": False,
                    "error": f"permission denied: this bridge takes control requests from uid "
                    f"{os.geteuid()} (its own) and root only, not uid {NOBODY}",
                    "exit": 1,
                }
            }
            # Root (or the bridge's own user) gets through.
            assert connect_as(0, path)["answer"] == {
                "ok": True,
                "result": {
                    "key": PHONES[0],
                    "settings": {"max_messages": 250, "retention_days": 365},
                },
            }
        finally:
            code, events = server.stop()
        assert code == 0
        assert [e["uid"] for e in events if e["event"] == "control_refused"] == [NOBODY]
    finally:
        shutil.rmtree(base, ignore_errors=True)
