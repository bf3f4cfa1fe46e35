"""Journal integrity on real files: a commit is replayed whole or not at all, damage is told
from a crash, segments form a chain, and the previous release's v2 segments still replay."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from bridge.errors import StorageError
from bridge.persistence import frames, journal, layout
from bridge.persistence.keys import load_keyring
from bridge.persistence.segments import JournalDamage, MissingSegment
from bridge.records import ConversationDeleted
from bridge.store.durable import DurableStore, load_state
from tests.persistence.support import (
    Opened,
    contents,
    crash,
    noise,
    segment_file,
    snapshot_of,
    split_frames,
    user,
    write_v2_segment,
)

HOLE = b"\0" * 64


def journal_files(store: DurableStore) -> list[str]:
    return sorted(os.listdir(layout.journal_dir(store.profile.state_dir)))


# -- a commit is all or nothing -----------------------------------------------------------


async def crashed_during_an_import(opened: Opened) -> tuple[Path, bytes, int, dict[str, object]]:
    """Ten acknowledged live messages, then the one commit `import` writes for that user
    (delete the conversation, add it back merged with older messages), cut by a crash."""
    store = await opened()
    for n in range(10):
        await store.commit([user("1", n)])
    before = snapshot_of(store.state)
    segment = segment_file(store, 1)
    start = segment.stat().st_size
    await store.commit(
        [ConversationDeleted("1"), *(user("1", n, text=noise(n)) for n in range(-5, 10))]
    )
    await crash(store)
    return segment, segment.read_bytes(), start, before


async def test_a_commit_cut_short_by_a_crash_applies_none_of_it(opened: Opened) -> None:
    segment, data, start, before = await crashed_during_an_import(opened)
    assert len(data) - start > 1000  # the commit spans several blocks' worth of records
    for cut in range(start + 8, len(data), (len(data) - start) // 9):
        segment.write_bytes(data[:cut])
        again = await opened()
        assert snapshot_of(again.state) == before, f"cut at byte {cut}"
        assert len(contents(again.state)) == 10
        await crash(again)


async def test_a_commit_with_a_block_never_written_applies_none_of_it(opened: Opened) -> None:
    segment, data, start, before = await crashed_during_an_import(opened)
    for at in (start + 4, start + 300, (start + len(data)) // 2, len(data) - 512):
        segment.write_bytes(data[:at] + b"\0" * 512 + data[at + 512 :])
        again = await opened()
        assert snapshot_of(again.state) == before, f"zeros at byte {at}"
        await crash(again)


async def test_a_group_commit_larger_than_a_frame_budget_is_split_at_commits(
    opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "GROUP_BYTES", 2000)
    store = await opened()
    await asyncio.gather(*(store.commit([user(f"c{i}", i), user(f"c{i}", -i)]) for i in range(60)))
    assert len(split_frames(segment_file(store, 1))) > 5
    before = snapshot_of(store.state)
    await crash(store)
    assert snapshot_of((await opened()).state) == before


async def test_a_commit_larger_than_a_frame_is_refused_before_anything_is_written(
    opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(frames, "MAX_FRAME", 4096)
    store = await opened()
    before = segment_file(store, 1).stat().st_size  # the store's settings, recorded at open
    with pytest.raises(StorageError, match="larger than a journal frame"):
        await store.commit([user("1", n, text="x" * 500) for n in range(10)])
    assert segment_file(store, 1).stat().st_size == before
    await store.commit([user("1", 1)])


# -- damage is not a crash ----------------------------------------------------------------


async def sixty_commits(opened: Opened) -> tuple[DurableStore, Path]:
    store = await opened()
    for n in range(60):
        await store.commit([user("1", n)])
    await crash(store)
    return store, segment_file(store, 1)


@pytest.mark.parametrize("inserted", [False, True], ids=["overwritten", "inserted"])
async def test_a_hole_with_records_after_it_is_refused_and_the_file_kept(
    opened: Opened, inserted: bool
) -> None:
    store, segment = await sixty_commits(opened)
    data = segment.read_bytes()
    middle = len(data) // 2
    damaged = data[:middle] + HOLE + data[middle + (0 if inserted else len(HOLE)) :]
    segment.write_bytes(damaged)
    with pytest.raises(
        JournalDamage,
        match=r"00000001\.wal: .*a record written after it follows at byte \d+; refusing to "
        r"start; see README 'Damaged journal', or .*--accept-data-loss",
    ):
        await opened()
    with pytest.raises(JournalDamage, match="written after it"):
        load_state(store.profile, attempts=1)
    assert segment.read_bytes() == damaged
    assert journal_files(store) == [segment.name]  # nothing cut, nothing set aside


async def test_a_complete_last_record_that_fails_without_the_mark_of_a_crash_is_refused(
    opened: Opened,
) -> None:
    store, segment = await sixty_commits(opened)
    frames = split_frames(segment)
    last = bytearray(frames[-1])
    last[-5] ^= 0x01  # one flipped bit in a whole, synced record
    segment.write_bytes(b"".join(frames[:-1]) + bytes(last))
    with pytest.raises(JournalDamage, match=r"record at byte \d+ does not decrypt"):
        await opened()


async def test_accepting_the_loss_keeps_the_records_before_the_damage_and_sets_the_rest_aside(
    opened: Opened,
) -> None:
    store, segment = await sixty_commits(opened)
    frames = split_frames(segment)
    damage_at = sum(len(f) for f in frames[:31])  # the store's settings, then 30 commits
    data = segment.read_bytes()
    damaged = data[: damage_at + 20] + HOLE + data[damage_at + 20 + len(HOLE) :]
    segment.write_bytes(damaged)
    again = await opened(accept_data_loss=True)
    assert contents(again.state) == [f"hello {n}" for n in range(30)]
    aside = segment.with_name(f"{segment.name}.damaged-{damage_at}")
    assert aside.read_bytes() == damaged[damage_at:]
    assert aside.stat().st_mode & 0o777 == 0o600
    assert segment.stat().st_size == damage_at
    await again.commit([user("1", 100)])
    await crash(again)
    third = await opened()  # no flag needed any more
    assert contents(third.state) == [f"hello {n}" for n in (*range(30), 100)]


# -- the chain of segments ----------------------------------------------------------------


async def two_segments(opened: Opened) -> DurableStore:
    """120 messages in two segments, as a snapshot that never finished leaves them."""
    store = await opened()
    for n in range(60):
        await store.commit([user("1", n)])
    await store.journal.rotate()
    for n in range(60, 120):
        await store.commit([user("1", n)])
    await crash(store)
    return store


async def test_a_deleted_newest_segment_is_refused(opened: Opened) -> None:
    store = await two_segments(opened)
    segment_file(store, 2).unlink()
    with pytest.raises(
        MissingSegment,
        match=r"00000002\.wal: journal segment missing \(the end of 00000001\.wal says",
    ):
        await opened()
    with pytest.raises(MissingSegment):
        load_state(store.profile, attempts=1)
    assert journal_files(store) == ["00000001.wal"]


async def test_accepting_a_deleted_newest_segment_continues_in_a_new_one(opened: Opened) -> None:
    store = await two_segments(opened)
    segment_file(store, 2).unlink()
    again = await opened(accept_data_loss=True)
    assert len(contents(again.state)) == 60
    await again.commit([user("1", 200)])
    await crash(again)
    assert contents((await opened()).state)[-1] == "hello 200"


async def test_a_segment_cut_before_its_end_record_is_refused(opened: Opened) -> None:
    store = await two_segments(opened)
    first = segment_file(store, 1)
    first.write_bytes(b"".join(split_frames(first)[:-2]))  # a record and the end record gone
    with pytest.raises(
        JournalDamage, match=r"00000002\.wal: follows 00000001\.wal, which does not end"
    ):
        await opened()


async def test_a_rotation_that_failed_half_way_then_a_torn_write_loses_nothing(
    opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await opened()
    await store.commit([user("1", 0)])

    def failing_sync(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(journal, "fsync_dir", failing_sync)
    with pytest.raises(StorageError, match="Input/output error"):
        await store.journal.rotate()
    monkeypatch.undo()
    assert segment_file(store, 2).stat().st_size == 0  # created, never used
    await store.commit([user("1", 1)])
    await crash(store)
    first = segment_file(store, 1)
    with first.open("ab") as fh:
        fh.write(split_frames(first)[-1][:40])  # the next append, cut by a crash
    again = await opened()
    assert contents(again.state) == ["hello 0", "hello 1"]
    await again.commit([user("1", 2)])
    await again.snapshot()  # the rotation reuses the empty segment
    await again.commit([user("1", 3)])
    await crash(again)
    assert contents((await opened()).state) == [f"hello {n}" for n in range(4)]


async def test_a_segment_being_rotated_is_read_consistently_while_live(opened: Opened) -> None:
    store = await opened()
    for n in range(200):
        await store.commit([user("1", n)])

    async def rotations() -> None:
        for _ in range(20):
            await store.journal.rotate()
            await store.commit([user("2", 1)])

    task = asyncio.ensure_future(rotations())
    while not task.done():
        state = await asyncio.get_running_loop().run_in_executor(None, load_state, store.profile)
        assert len(contents(state)) == 200
    await task


# -- the previous release's journal -------------------------------------------------------


async def a_v2_store(opened: Opened) -> DurableStore:
    """A store as the previous release left it: a snapshot naming segment 2, then v2 frames
    in segments 2 and 3 (that release wrote no end records), the last one torn."""
    store = await opened()
    await store.commit([user("1", 0)])
    await store.snapshot()
    await crash(store)
    keyring = load_keyring(store.profile, create=False)
    seq = store.state.seq
    records = [(seq + n, user("1", n)) for n in range(1, 7)]
    write_v2_segment(segment_file(store, 2), keyring, "default", 2, records[:3])
    write_v2_segment(segment_file(store, 3), keyring, "default", 3, records[3:])
    third = segment_file(store, 3)
    with third.open("ab") as fh:
        fh.write(split_frames(third)[-1][:50])
    return store


async def test_a_store_of_the_previous_release_replays_and_continues(opened: Opened) -> None:
    await a_v2_store(opened)
    again = await opened()
    assert contents(again.state) == [f"hello {n}" for n in range(7)]
    await again.commit([user("1", 7)])  # a v3 frame after the v2 ones
    await crash(again)
    third = await opened()
    assert contents(third.state) == [f"hello {n}" for n in range(8)]
    await third.snapshot()  # ends the mixed segment with a v3 end record
    await third.commit([user("1", 8)])
    await crash(third)
    assert contents((await opened()).state) == [f"hello {n}" for n in range(9)]


async def test_a_hole_in_a_v2_segment_with_records_after_it_is_refused(opened: Opened) -> None:
    store = await a_v2_store(opened)
    newest = segment_file(store, 3)
    data = newest.read_bytes()
    newest.write_bytes(data[:30] + HOLE + data[94:])
    with pytest.raises(JournalDamage, match=r"00000003\.wal: .*written after it follows"):
        await opened()
