"""A real `bridge serve` on a damaged, half-rotated, littered or unwritable store: it starts
when nothing is lost, refuses with one line and exit 2 when starting would lose data (unless
told to accept the loss), and never prints a traceback."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from bridge.config import ProfileConfig
from bridge.persistence import journal, layout
from bridge.state import State
from bridge.store.durable import DurableStore, load_state
from tests.conftest import APP_SECRET, VERIFY_TOKEN, make_profile
from tests.persistence.support import crash, split_frames, user
from tests.test_cli import Served, clean_env, free_port, run, start_serve

HOLE = b"\0" * 64


def serve_env(var: Path) -> dict[str, str]:
    return clean_env(
        BRIDGE_APP_SECRET=APP_SECRET,
        BRIDGE_VERIFY_TOKEN=VERIFY_TOKEN,
        BRIDGE_VAR_DIR=str(var),
        BRIDGE_PORT=str(free_port()),
    )


def build(var: Path, fill: Callable[[DurableStore], Awaitable[None]]) -> ProfileConfig:
    """Write a store in-process as the bridge would, then leave it as kill -9 does."""
    profile = make_profile(var)

    async def go() -> None:
        store = DurableStore(profile)
        await store.open()
        await fill(store)
        await crash(store)

    asyncio.run(go())
    return profile


async def sixty_messages(store: DurableStore) -> None:
    for n in range(60):
        await store.commit([user("1", n)])


def user_texts(state: State) -> list[str]:
    """The user's messages (a started bridge also answers the last one)."""
    return [m.content for m in state.conversations["1"].messages if m.role == "user"]


def one_line_refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def stopped(server: Served) -> list[dict[str, object]]:
    code, events = server.stop()
    assert code == 0
    return events


def test_damage_refuses_to_start_then_accepting_the_loss_sets_it_aside(tmp_path: Path) -> None:
    var = tmp_path / "var"
    profile = build(var, sixty_messages)
    segment = layout.journal_dir(profile.state_dir) / "00000001.wal"
    frames = split_frames(segment)
    damage_at = sum(len(f) for f in frames[:19])  # the store's settings, then 18 commits
    data = segment.read_bytes()
    damaged = data[: damage_at + 10] + HOLE + data[damage_at + 10 + len(HOLE) :]
    segment.write_bytes(damaged)
    env = serve_env(var)

    line = one_line_refusal(run(["serve"], env))
    assert line.startswith(f"bridge: error: {segment}: record at byte {damage_at} ")
    assert "refusing to start; see README 'Damaged journal'" in line
    assert "--accept-data-loss" in line
    assert segment.read_bytes() == damaged
    assert os.listdir(segment.parent) == [segment.name]

    server = start_serve(var, "--accept-data-loss", env=env)
    events = stopped(server)
    aside = segment.with_name(f"{segment.name}.damaged-{damage_at}")
    (set_aside,) = [e for e in events if e["event"] == "journal_set_aside"]
    assert set_aside["file"] == str(segment)
    assert (set_aside["from_byte"], set_aside["to_byte"]) == (damage_at, len(damaged))
    assert set_aside["kept"] == str(aside)
    assert aside.read_bytes() == damaged[damage_at:]
    assert user_texts(load_state(profile)) == [f"hello {n}" for n in range(18)]
    stopped(start_serve(var, env=env))  # and it starts without the flag from now on


def test_accepting_the_loss_works_from_the_environment_too(tmp_path: Path) -> None:
    var = tmp_path / "var"
    profile = build(var, sixty_messages)
    segment = layout.journal_dir(profile.state_dir) / "00000001.wal"
    data = segment.read_bytes()
    segment.write_bytes(data[:100] + HOLE + data[164:])
    env = {**serve_env(var), "BRIDGE_ACCEPT_DATA_LOSS": "1"}
    stopped(start_serve(var, env=env))
    assert list(segment.parent.glob("*.damaged-*"))


def test_a_deleted_newest_segment_refuses_to_start(tmp_path: Path) -> None:
    async def two_segments(store: DurableStore) -> None:
        await sixty_messages(store)
        await store.journal.rotate()  # a snapshot killed before it was written
        for n in range(60, 120):
            await store.commit([user("1", n)])

    var = tmp_path / "var"
    profile = build(var, two_segments)
    (layout.journal_dir(profile.state_dir) / "00000002.wal").unlink()
    line = one_line_refusal(run(["serve"], serve_env(var)))
    assert "00000002.wal: journal segment missing" in line
    assert "--accept-data-loss" in line


def test_a_failed_rotation_then_a_torn_write_starts_with_nothing_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def rotation_fails_then_more(store: DurableStore) -> None:
        await store.commit([user("1", 0)])

        def failing_sync(path: Path) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(journal, "fsync_dir", failing_sync)
            with pytest.raises(Exception, match="No space left"):
                await store.journal.rotate()
        await store.commit([user("1", 1)])

    var = tmp_path / "var"
    profile = build(var, rotation_fails_then_more)
    first = layout.journal_dir(profile.state_dir) / "00000001.wal"
    with first.open("ab") as fh:
        fh.write(split_frames(first)[-1][:30])
    stopped(start_serve(var, env=serve_env(var)))
    assert user_texts(load_state(profile)) == ["hello 0", "hello 1"]


def test_stale_temp_files_of_dead_processes_are_removed_at_start(tmp_path: Path) -> None:
    var = tmp_path / "var"
    profile = build(var, sixty_messages)
    dead = subprocess.Popen(["true"])
    dead.wait()
    state_dir = profile.state_dir
    backups = layout.backups_dir(state_dir)
    backups.mkdir(mode=0o700)
    stale = [
        state_dir / f".snapshot.wab.{dead.pid}.tmp",
        backups / f".default-20261101T000000000000Z.wab.{dead.pid}.tmp",
        layout.journal_dir(state_dir) / f".00000001.wal.torn-10.{dead.pid}.tmp",
    ]
    live = backups / f".default-20261102T000000000000Z.wab.{os.getpid()}.tmp"
    for path in [*stale, live]:
        path.write_bytes(b"x" * 100_000)
    events = stopped(start_serve(var, env=serve_env(var)))
    assert not any(p.exists() for p in stale)
    assert live.exists()  # a backup being written right now, without the lock
    removed = {e["file"] for e in events if e["event"] == "stale_temp_removed"}
    assert removed == {str(p) for p in stale}


# -- a disk that is full or read-only -----------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of our own (root only): fills up fast, can be made read-only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> None:
    with (disk / "filler").open("wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_full_disk_at_start_is_one_line_and_exit_2(small_disk: Path) -> None:
    fill(small_disk)
    var = small_disk / "var"
    line = one_line_refusal(run(["serve"], serve_env(var)))
    assert line.startswith(f"bridge: error: cannot write {var / 'profiles' / 'default'}")
    assert line.endswith(": No space left on device")


def test_a_read_only_disk_at_start_is_one_line_and_exit_2(small_disk: Path) -> None:
    var = small_disk / "var"
    profile = build(var, sixty_messages)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    line = one_line_refusal(run(["serve"], serve_env(var)))
    assert line == (
        f"bridge: error: cannot write {layout.lock_path(profile.state_dir)}: Read-only file system"
    )
    for command in (["delete", "1"], ["backup"]):
        result = subprocess.run(
            [sys.executable, "-m", "admin", *command],
            env=serve_env(var),
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Read-only file system" in result.stderr
