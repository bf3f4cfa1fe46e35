"""Journal segments on disk: torn tails are cut, every other kind of damage is refused."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.errors import CorruptStateError, StorageError
from bridge.persistence import frames, layout
from bridge.persistence.crypto import Keyring
from bridge.persistence.keys import new_key
from bridge.state import State
from bridge.store.durable import DurableStore, load_state
from tests.persistence.support import Opened, crash, noise, snapshot_of, split_frames, user

LONG = noise(3, 600)  # a frame several blocks long, compressed or not


async def crashed_with_three_records(opened: Opened) -> tuple[DurableStore, Path]:
    store = await opened()
    for n in range(3):
        # The last is long, like a frame of several blocks.
        await store.commit([user("1", n, text=LONG if n == 2 else None)])
    await crash(store)
    (segment,) = layout.journal_dir(store.profile.state_dir).glob("*.wal")
    return store, segment


def contents(store: DurableStore | State) -> list[str]:
    state = store.state if isinstance(store, DurableStore) else store
    return [m.content for m in state.conversations["1"].messages]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(lambda f: f[:5], id="half-a-header"),
        pytest.param(lambda f: f[:40], id="header-and-part-of-the-body"),
        pytest.param(lambda f: f[:-1], id="all-but-the-last-byte"),
        pytest.param(lambda f: b"\0" * len(f), id="zero-filled-blocks"),
        pytest.param(lambda f: f[:20] + b"\0" * 100 + f[120:], id="a-block-never-written"),
        pytest.param(lambda f: f[:-16] + b"\0" * 16, id="last-block-never-written"),
    ],
)
async def test_an_unfinished_append_is_cut_off_and_appending_resumes(
    opened: Opened, tail: Callable[[bytes], bytes]
) -> None:
    store, segment = await crashed_with_three_records(opened)
    last = split_frames(segment)[-1]
    assert len(last) > 300
    with segment.open("ab") as fh:
        fh.write(tail(last))
    assert contents(store) == contents(load_state(store.profile))  # a reader skips it too
    again = await opened()
    assert contents(again) == ["hello 0", "hello 1", LONG]
    await again.commit([user("1", 3)])
    await crash(again)
    third = await opened()
    assert contents(third) == ["hello 0", "hello 1", LONG, "hello 3"]


async def test_a_cut_off_tail_with_data_is_kept_aside(opened: Opened) -> None:
    store, segment = await crashed_with_three_records(opened)
    size = segment.stat().st_size
    torn = split_frames(segment)[-1][:40]
    with segment.open("ab") as fh:
        fh.write(torn)
    await opened()
    aside = segment.with_name(f"{segment.name}.torn-{size}")
    assert aside.read_bytes() == torn
    assert aside.stat().st_mode & 0o777 == 0o600
    assert segment.stat().st_size == size


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(
            lambda fs: [fs[0][:2] + bytes([fs[0][2] ^ 1]) + fs[0][3:], *fs[1:]],
            "damaged record header at byte 0",
            id="length-bit-flip",
        ),
        pytest.param(
            lambda fs: [fs[0][:-5] + bytes([fs[0][-5] ^ 1]) + fs[0][-4:], *fs[1:]],
            "record at byte 0 does not decrypt",
            id="ciphertext-bit-flip",
        ),
        pytest.param(lambda fs: [fs[0], fs[2]], "does not decrypt", id="middle-record-dropped"),
        pytest.param(lambda fs: [fs[1], fs[0], fs[2]], "does not decrypt", id="records-swapped"),
        pytest.param(lambda fs: [fs[0], fs[0], *fs[1:]], "does not decrypt", id="duplicated"),
        pytest.param(
            lambda fs: [
                fs[0],
                frames.seal(Keyring([new_key()]), os.urandom(60), "x", 1, 0),
                *fs[1:],
            ],
            "does not decrypt",
            id="foreign-record-inserted",
        ),
    ],
)
async def test_damage_is_refused_naming_the_file_and_the_file_is_kept(
    opened: Opened, damage: Callable[[list[bytes]], list[bytes]], message: str
) -> None:
    store, segment = await crashed_with_three_records(opened)
    damaged = b"".join(damage(split_frames(segment)))
    segment.write_bytes(damaged)
    with pytest.raises(CorruptStateError, match=rf"00000001\.wal: .*{message}"):
        await opened()
    with pytest.raises(CorruptStateError):
        load_state(store.profile)
    assert segment.read_bytes() == damaged
    assert list(segment.parent.iterdir()) == [segment]  # nothing cut, nothing set aside


async def test_a_torn_record_in_an_older_segment_is_corruption(opened: Opened) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.journal.rotate()  # as a snapshot that never finished
    await store.commit([user("1", 2)])
    await crash(store)
    older = layout.journal_dir(store.profile.state_dir) / "00000001.wal"
    with older.open("ab") as fh:
        fh.write(split_frames(older)[0][:30])
    # Rotation ended segment 1 with the record that continues it in segment 2: nothing may
    # follow that record.
    with pytest.raises(CorruptStateError, match=r"00000001\.wal: 30 bytes after .* end record"):
        await opened()


async def test_a_missing_segment_after_the_snapshot_is_refused(opened: Opened) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.snapshot()
    await store.commit([user("1", 2)])
    await crash(store)
    (segment,) = layout.journal_dir(store.profile.state_dir).glob("*.wal")
    segment.unlink()
    with pytest.raises(CorruptStateError, match=r"00000002\.wal: journal segment missing"):
        await opened()
    with pytest.raises(CorruptStateError, match="journal segment missing"):
        load_state(store.profile, attempts=1)


async def test_a_gap_between_segments_is_refused(opened: Opened) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    for _ in range(2):
        await store.journal.rotate()
        await store.commit([user("1", 2)])
    await crash(store)
    (layout.journal_dir(store.profile.state_dir) / "00000002.wal").unlink()
    with pytest.raises(CorruptStateError, match=r"00000002\.wal: journal segment missing"):
        await opened()


async def test_a_journal_without_its_snapshot_is_refused(opened: Opened) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.close()
    layout.snapshot_path(store.profile.state_dir).unlink()
    with pytest.raises(CorruptStateError, match="missing .*no snapshot"):
        await opened()


async def test_a_write_cut_short_on_a_full_disk_is_cut_back(
    opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await opened()
    await store.commit([user("1", 0)])
    real_write, real_truncate = os.write, os.ftruncate

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 8:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def read_only(fd: int, size: int) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "write", half_then_full)
    monkeypatch.setattr(os, "ftruncate", read_only)  # not even the cut back works
    for n in (1, 2):  # the second one fails cutting back (reopening) the segment
        with pytest.raises(StorageError, match="No space left on device|Read-only"):
            await store.commit([user("1", n)])
    assert contents(store) == ["hello 0"]
    monkeypatch.setattr(os, "write", real_write)
    monkeypatch.setattr(os, "ftruncate", real_truncate)
    await store.commit([user("1", 3)])
    before = snapshot_of(store.state)
    await crash(store)
    again = await opened()
    assert snapshot_of(again.state) == before
    assert contents(again) == ["hello 0", "hello 3"]
    assert again.state.seq == store.state.seq


async def test_the_segment_going_read_only_fails_commits_until_it_is_writable(
    opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await opened()
    await store.commit([user("1", 0)])
    real_open, real_write = os.open, os.write

    def refuse(*args: object, **kwargs: object) -> int:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "write", refuse)
    monkeypatch.setattr(os, "open", refuse)  # the reopen before the next write fails too
    for n in (1, 2):
        with pytest.raises(StorageError, match="Read-only file system"):
            await store.commit([user("1", n)])
    monkeypatch.setattr(os, "write", real_write)
    monkeypatch.setattr(os, "open", real_open)
    await asyncio.gather(store.commit([user("1", 3)]), store.commit([user("1", 4)]))
    await crash(store)
    again = await opened()
    assert contents(again) == ["hello 0", "hello 3", "hello 4"]
