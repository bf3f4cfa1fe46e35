"""Directories and files we create are private to us whatever the umask: dirs 0700, files 0600."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from bridge import simulate
from bridge.persistence.files import make_dirs, secure_dir
from tests.conftest import APP_SECRET
from tests.load import post_signed_sync
from tests.test_cli import clean_env, free_port, wait_ready

ADMIN = [sys.executable, "-m", "admin"]


def modes(root: Path) -> dict[str, str]:
    """Every path under `root` (and `root`) with its permission bits, as octal strings."""
    found = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def assert_private(root: Path) -> None:
    found = modes(root)
    wrong = {
        name: mode
        for name, mode in found.items()
        if mode != ("0o700" if (root / name).is_dir() else "0o600")
    }
    assert not wrong, f"not private: {wrong}"


def test_make_dirs_creates_each_missing_level_with_the_mode_whatever_the_umask(
    tmp_path: Path,
) -> None:
    previous = os.umask(0o277)  # would give 0500: not even writable by us
    try:
        created = make_dirs(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(previous)
    assert created == [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    assert_private(tmp_path / "a")


def test_secure_dir_leaves_existing_parents_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    previous = os.umask(0)
    try:
        secure_dir(shared / "var" / "profiles")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755, "not ours: not changed"
    assert_private(shared / "var")


def test_serve_and_admin_under_umask_000_create_only_private_paths(tmp_path: Path) -> None:
    var = tmp_path / "var"
    port = free_port()
    env = clean_env(BRIDGE_PORT=str(port), BRIDGE_VAR_DIR=str(var), BRIDGE_APP_SECRET=APP_SECRET)
    log_path = tmp_path / "bridge.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--dev", "--log-format", "json"],
            env=env,
            stdout=log,
            stderr=log,
            text=True,
            umask=0,
        )
    try:
        wait_ready(port, proc, log_path)
        message = simulate.text_message("hola", "34600000001")
        raw = simulate.encode(simulate.delivery(simulate.change_value([message])))
        assert post_signed_sync(port, raw, APP_SECRET) == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for args in (["profiles", "create", "shop"], ["backup", "--profile", "shop"]):
        done = subprocess.run(
            [*ADMIN, *args, "--var-dir", str(var)],
            env=env,
            capture_output=True,
            text=True,
            umask=0,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    assert (var / "profiles" / "default" / "snapshot.wab").exists()
    assert (var / "profiles" / "shop" / "backups").is_dir()
    assert_private(var)
