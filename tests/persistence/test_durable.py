"""The durable store on real files: round trips, crashes, corruption, failing disks, secrecy."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
from pathlib import Path

import pytest

from bridge.errors import ConfigError, CorruptStateError, ProfileLockedError, StorageError
from bridge.persistence import layout
from bridge.persistence.keys import encode_key, new_key
from bridge.records import (
    ConversationDeleted,
    OutboxDone,
    Record,
    StatusChanged,
)
from bridge.store.durable import DurableStore, load_state
from tests.conftest import make_profile
from tests.persistence.support import (
    NOW,
    Opened,
    crash,
    reply,
    snapshot_of,
    split_frames,
    user,
)


async def commit_everything(store: DurableStore) -> None:
    await store.commit([user("34600000001", 1), user("34600000002", 2)])
    await store.commit(reply("34600000001", 3))
    await store.commit(
        [
            StatusChanged("out.34600000001.3", "sent", None, ("wamid.OUT1",)),
            OutboxDone("out.34600000001.3"),
        ]
    )
    await store.commit([StatusChanged("wamid.OUT1", "read")])
    await store.commit(reply("34600000002", 4))  # stays in the outbox
    await store.commit([user("34600000003", 5), ConversationDeleted("34600000003")])


async def test_round_trip_through_close_and_reopen(opened: Opened, tmp_path: Path) -> None:
    store = await opened()
    await commit_everything(store)
    before = snapshot_of(store.state)
    await store.close()
    again = await opened()
    assert snapshot_of(again.state) == before
    conv = again.state.get("34600000001")
    assert conv is not None and conv.messages[-1].status == "read"
    assert list(again.state.outbox) == ["out.34600000002.4"]
    assert "34600000003" not in again.state.conversations
    assert again.state.has_seen("wamid.34600000003.5")


async def test_crash_recovers_everything_from_the_journal(opened: Opened) -> None:
    store = await opened()
    await commit_everything(store)
    before = snapshot_of(store.state)
    await crash(store)
    assert not layout.snapshot_path(store.profile.state_dir).exists()
    again = await opened()
    assert snapshot_of(again.state) == before


async def test_snapshot_then_more_commits_then_crash(opened: Opened) -> None:
    store = await opened()
    await commit_everything(store)
    await store.snapshot()
    await store.commit([user("34600000001", 10), user("34600000009", 11)])
    before = snapshot_of(store.state)
    await crash(store)
    again = await opened()
    assert snapshot_of(again.state) == before
    # After a crash the store records that the queued reply may have been on the wire.
    assert again.state.seq == store.state.seq + 1
    assert again.state.uncertain == {"out.34600000002.4"}


async def test_a_clean_close_leaves_no_reply_uncertain(opened: Opened) -> None:
    store = await opened()
    await commit_everything(store)
    await store.close()
    again = await opened()
    assert list(again.state.outbox) == ["out.34600000002.4"]
    assert again.state.uncertain == set()


async def test_queued_replies_are_found_per_user_after_a_snapshot_restart(
    opened: Opened,
) -> None:
    store = await opened()
    await commit_everything(store)
    await store.snapshot()
    await store.close()
    again = await opened()
    item = again.state.next_reply("34600000002")
    assert item is not None and item.id == "out.34600000002.4"
    assert again.state.outbox_keys() == ["34600000002"]
    assert again.state.next_reply("34600000001") is None


async def test_snapshot_hides_the_state_from_the_garbage_collector(opened: Opened) -> None:
    store = await opened()
    await store.commit([user(f"3460000{n:04d}", n) for n in range(200)])
    gc.unfreeze()  # whatever earlier tests froze
    await store.snapshot()
    # The messages are now in the permanent generation, which collections never traverse.
    assert gc.get_freeze_count() >= 200
    message = next(iter(store.state.conversations.values())).messages[0]
    assert gc.is_tracked(message)
    assert all(message is not o for o in gc.get_objects())


async def test_snapshot_drops_older_journal_segments(opened: Opened) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.snapshot()
    await store.commit([user("1", 2)])
    await store.snapshot()
    assert [p.name for p in sorted(layout.journal_dir(store.profile.state_dir).iterdir())] == [
        "00000003.wal"
    ]


async def test_fuzzy_snapshot_during_concurrent_commits_reopens_exactly(opened: Opened) -> None:
    store = await opened()
    for i in range(200):
        await store.commit([user(f"k{i % 40}", i)])

    async def traffic() -> None:
        for i in range(200, 600):
            await store.commit([user(f"k{i % 40}", i)] + reply(f"k{i % 40}", i))

    await asyncio.gather(traffic(), store.snapshot(), store.snapshot())
    before = snapshot_of(store.state)
    await crash(store)
    again = await opened()
    assert snapshot_of(again.state) == before


async def test_torn_final_record_is_ignored(opened: Opened) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.commit([user("1", 2)])
    before = snapshot_of(store.state)
    await crash(store)
    (segment,) = layout.journal_dir(store.profile.state_dir).iterdir()
    last = split_frames(segment)[-1]
    with segment.open("ab") as fh:
        fh.write(last[: len(last) // 2])  # the first half of an append, as a crash leaves it
    again = await opened()
    assert snapshot_of(again.state) == before
    await again.commit([user("1", 3)])  # appends after cutting the torn tail
    await crash(again)
    third = await opened()
    assert [m.content for m in third.state.conversations["1"].messages] == [
        "hello 1",
        "hello 2",
        "hello 3",
    ]


async def test_corrupted_middle_record_is_a_clear_error(opened: Opened, tmp_path: Path) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.commit([user("1", 2)])
    await crash(store)
    (segment,) = layout.journal_dir(store.profile.state_dir).iterdir()
    data = bytearray(segment.read_bytes())
    data[30] ^= 0xFF  # inside the first frame's ciphertext
    segment.write_bytes(bytes(data))
    with pytest.raises(
        CorruptStateError, match=r"00000001\.wal: record at byte 0 does not decrypt"
    ):
        await opened()
    assert segment.read_bytes() == bytes(data)


async def test_wrong_key_is_refused_and_nothing_is_overwritten(
    opened: Opened, tmp_path: Path
) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.close()
    snapshot = layout.snapshot_path(store.profile.state_dir)
    original = snapshot.read_bytes()
    other = make_profile(tmp_path, key=encode_key(new_key()))
    with pytest.raises(
        CorruptStateError, match="snapshot.wab: record 0 does not decrypt .*wrong key"
    ):
        await opened(other)
    assert snapshot.read_bytes() == original
    with pytest.raises(CorruptStateError):
        load_state(other)


async def test_corrupted_snapshot_is_refused_and_kept(opened: Opened) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.close()
    snapshot = layout.snapshot_path(store.profile.state_dir)
    damaged = snapshot.read_bytes()[:-10]
    snapshot.write_bytes(damaged)
    with pytest.raises(CorruptStateError, match="snapshot.wab: truncated"):
        await opened()
    assert snapshot.read_bytes() == damaged


async def test_failing_disk_answers_storage_error_and_recovers(
    opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    real_fsync = os.fsync

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(StorageError, match="No space left on device"):
        await store.commit([user("1", 2)])
    assert [m.content for m in store.state.conversations["1"].messages] == ["hello 1"]
    assert not store.state.has_seen("wamid.1.2")
    monkeypatch.setattr(os, "fsync", real_fsync)
    await store.commit([user("1", 3)])
    await crash(store)
    again = await opened()
    assert [m.content for m in again.state.conversations["1"].messages] == ["hello 1", "hello 3"]


async def test_nothing_readable_reaches_the_disk(opened: Opened) -> None:
    store = await opened()
    marker, phone = "PLAINTEXT-MARKER-123", "34699999999"
    await store.commit([user(phone, 1, text=f"my secret {marker}")] + reply(phone, 2))
    await store.snapshot()
    await store.commit([user(phone, 3, text=marker)])
    await store.close()
    files = [p for p in store.profile.state_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"snapshot.wab", "key", "lock"}
    for path in files:
        data = path.read_bytes()
        assert marker.encode() not in data, path
        assert phone.encode() not in data, path
        assert b"hello" not in data, path


async def test_files_are_private(opened: Opened) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.close()
    state_dir = store.profile.state_dir
    assert state_dir.stat().st_mode & 0o777 == 0o700
    assert layout.journal_dir(state_dir).stat().st_mode & 0o777 == 0o700
    for path in state_dir.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o600, path


async def test_second_process_on_a_profile_is_refused(opened: Opened, tmp_path: Path) -> None:
    await opened()
    with pytest.raises(
        ProfileLockedError, match=f"profile 'default' is in use .*pid {os.getpid()}"
    ):
        await opened()


async def test_retention_drops_idle_conversations_for_good(opened: Opened, tmp_path: Path) -> None:
    profile = make_profile(tmp_path, retention_days=30)
    store = await opened(profile)
    old = 1_600_000_000_000  # 2020: long idle
    await store.commit([user("old", 1, ts=old), user("fresh", 2, ts=NOW)])
    await store.snapshot()
    assert list(store.state.conversations) == ["fresh"]
    await crash(store)
    again = await opened(profile)
    assert list(again.state.conversations) == ["fresh"]


async def test_concurrent_commits_share_fsyncs(opened: Opened) -> None:
    store = await opened()
    await asyncio.gather(*(store.commit([user(f"c{i}", i)]) for i in range(200)))
    assert len(store.state.conversations) == 200
    assert store.journal.fsyncs < 50


async def test_load_state_reads_a_live_store_without_the_lock(opened: Opened) -> None:
    store = await opened()
    await commit_everything(store)
    await store.snapshot()
    await store.commit([user("34600000007", 7)])
    seen = load_state(store.profile)
    assert snapshot_of(seen) == snapshot_of(store.state)
    await store.commit([user("34600000007", 8)])  # the store still works after the read


async def test_generated_key_is_private_and_reused(opened: Opened) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.close()
    key_file = layout.key_path(store.profile.state_dir)
    assert key_file.stat().st_mode & 0o777 == 0o600
    key_before = key_file.read_bytes()
    again = await opened()
    assert key_file.read_bytes() == key_before
    assert "1" in again.state.conversations


def test_missing_key_for_a_reader_is_a_config_error(tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    profile.state_dir.mkdir(parents=True)
    with pytest.raises(ConfigError, match="key file .* not found"):
        load_state(profile)


async def test_snapshot_reports_progress_up_to_the_total(opened: Opened) -> None:
    store = await opened()
    await store.commit([user(f"p{i}", i) for i in range(30)])
    calls: list[tuple[int, int]] = []
    await store.snapshot(lambda done, total: calls.append((done, total)))
    assert calls[-1] == (30, 30)
    assert all(total == 30 and 0 < done <= 30 for done, total in calls)


async def test_100_concurrent_commits_share_a_few_fsyncs(
    opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await opened()
    calls: list[int] = []
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    await asyncio.gather(*(store.commit([user(f"c{i}", i)]) for i in range(100)))
    assert len(store.state.conversations) == 100
    assert len(calls) <= 3


async def test_a_commit_whose_caller_gave_up_is_still_applied_and_durable(
    opened: Opened,
) -> None:
    store = await opened()
    task = asyncio.ensure_future(store.commit([user("1", 1)]))
    await asyncio.sleep(0)  # queued, being written
    task.cancel()
    await store.commit([user("1", 2)])
    assert [m.content for m in store.state.conversations["1"].messages] == ["hello 1", "hello 2"]
    before = snapshot_of(store.state)
    await crash(store)
    assert snapshot_of((await opened()).state) == before


async def test_close_finishes_commits_in_flight(opened: Opened) -> None:
    store = await opened()
    tasks = [asyncio.ensure_future(store.commit([user(f"c{i}", i)])) for i in range(20)]
    await store.close()
    await asyncio.gather(*tasks)
    assert len((await opened()).state.conversations) == 20


async def test_a_commit_after_close_is_a_storage_error(opened: Opened) -> None:
    store = await opened()
    await store.close()
    with pytest.raises(StorageError, match="not open"):
        await store.commit([user("1", 1)])


async def test_a_failing_apply_does_not_stop_the_journal(
    opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await opened()
    real_apply = store.state.apply

    def buggy(seq: int, record: Record) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(store.state, "apply", buggy)
    with pytest.raises(RuntimeError, match="bug"):
        await store.commit([user("1", 1)])
    monkeypatch.setattr(store.state, "apply", real_apply)
    await store.commit([user("1", 2)])
    assert "1" in store.state.conversations


async def test_a_state_dir_open_to_others_is_tightened(tmp_path: Path, opened: Opened) -> None:
    profile = make_profile(tmp_path)
    profile.state_dir.mkdir(parents=True, mode=0o755)
    os.chmod(profile.state_dir, 0o755)
    await opened(profile)
    assert profile.state_dir.stat().st_mode & 0o777 == 0o700
