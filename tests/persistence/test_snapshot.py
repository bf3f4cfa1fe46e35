"""Snapshots: the seed's format inside, fuzzy under traffic, atomic when cut short."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from bridge.errors import CorruptStateError, StorageError
from bridge.persistence import layout, snapshot
from bridge.persistence.keys import load_keyring
from bridge.records import ConversationDeleted, OutboxDone, Record, StatusChanged
from bridge.store.durable import DurableStore
from tests.persistence.support import (
    NOW,
    Opened,
    crash,
    reply,
    snapshot_of,
    unpacked_conversations,
    user,
)


def decrypted_frames(store: DurableStore) -> list[dict[str, Any]]:
    """Open a snapshot by hand, as the module docstring describes it."""
    path = layout.snapshot_path(store.profile.state_dir)
    keyring = load_keyring(store.profile, create=False)
    data = path.read_bytes()
    assert data.startswith(b"WABSNAP3")
    snapshot_id, offset = data[8:24], 24
    out: list[dict[str, Any]] = []
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        aad = b"wab-snapshot-v3|default|" + snapshot_id + b"|" + str(len(out)).encode()
        plain = keyring.open(data[offset + 4 : offset + 4 + length], aad)
        assert plain[0] in (0, 1, 2)  # flags: bit 0 is zstd, bit 1 packed conversations
        if plain[0] == 2:
            out.append({"conversations": unpacked_conversations(plain[1:])})
        else:
            out.append(orjson.loads(zstandard.decompress(plain[1:]) if plain[0] else plain[1:]))
        offset += 4 + length
    return out


async def test_conversations_inside_are_the_seeds_format(opened: Opened) -> None:
    store = await opened()
    for i in range(300):
        await store.commit([user(f"3460000{i:04d}", i), *reply(f"3460000{i:04d}", i)])
    await store.snapshot()
    frames = decrypted_frames(store)
    assert frames[0]["v"] == 3 and frames[0]["segment"] == 2
    assert frames[-1]["end"] is True and frames[-1]["frames"] == len(frames)
    seed = [pair for f in frames if "conversations" in f for pair in f["conversations"]]
    assert seed == [[k, c.to_seed()] for k, c in store.state.conversations.items()]
    first = seed[0][1]
    assert {"messages", "lastActivity", "firstInteraction"} <= set(first)
    assert set(first["messages"][0]) >= {"role", "content", "timestamp"}


async def test_a_large_seen_set_survives_in_several_frames(opened: Opened) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    store.state.seen.update({f"wamid.extra.{i}": NOW for i in range(snapshot.SEEN_PER_FRAME + 5)})
    await store.snapshot()
    assert sum("seen" in f for f in decrypted_frames(store)) == 2
    before = snapshot_of(store.state)
    await crash(store)
    assert snapshot_of((await opened()).state) == before


async def test_fuzzy_snapshots_under_mixed_traffic_reopen_exactly(opened: Opened) -> None:
    store = await opened()
    rng = random.Random(7)
    keys = [f"3460000{i:04d}" for i in range(60)]
    for n, key in enumerate(keys):
        await store.commit([user(key, n), *reply(key, n)])

    async def traffic(worker: int) -> None:
        for n in range(1000 * worker, 1000 * worker + 150):
            key = rng.choice(keys)
            records: list[Record] = [user(key, n)]
            roll = rng.random()
            if roll < 0.3:
                records += reply(key, n)
            elif roll < 0.5 and store.state.outbox:
                item = next(iter(store.state.outbox.values()))
                records += [StatusChanged(item.id, "sent", None, (f"wamid.out.{n}",))]
                records += [OutboxDone(item.id)]
            elif roll < 0.6:
                records.append(ConversationDeleted(rng.choice(keys)))
            await store.commit(records)
            await asyncio.sleep(0)

    async def snapshots() -> None:
        for _ in range(4):
            await store.snapshot()

    await asyncio.gather(traffic(1), traffic(2), traffic(3), snapshots())
    before = snapshot_of(store.state)
    await crash(store)
    again = await opened()
    assert snapshot_of(again.state) == before
    assert {i: again.state.reply_ref(i) for i in again.state.replies} == {
        i: store.state.reply_ref(i) for i in store.state.replies
    }


async def test_a_failing_snapshot_keeps_the_journal_and_the_old_snapshot(
    opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.snapshot()
    path = layout.snapshot_path(store.profile.state_dir)
    old = path.read_bytes()
    await store.commit([user("1", 2)])

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StorageError, match="snapshot failed: No space left on device"):
        await store.snapshot()
    monkeypatch.undo()
    assert path.read_bytes() == old
    await store.commit([user("1", 3)])
    before = snapshot_of(store.state)
    await crash(store)
    again = await opened()
    assert snapshot_of(again.state) == before
    assert not list(path.parent.glob(".*.tmp"))
    await again.snapshot()  # and the next one works


async def test_a_cancelled_snapshot_leaves_no_temp_file_and_no_damage(opened: Opened) -> None:
    store = await opened()
    for i in range(400):
        await store.commit([user(f"k{i}", i)])
    await store.snapshot()
    path = layout.snapshot_path(store.profile.state_dir)
    old = path.read_bytes()
    task = asyncio.ensure_future(store.snapshot())
    for _ in range(3):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):  # the clean-up runs in the snapshot's thread
        if not list(path.parent.glob(".*.tmp")):
            break
        await asyncio.sleep(0.01)
    assert not list(path.parent.glob(".*.tmp"))
    assert path.read_bytes() == old
    await store.commit([user("k1", 999)])
    before = snapshot_of(store.state)
    await crash(store)
    assert snapshot_of((await opened()).state) == before


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: d[:-10], id="truncated"),
        pytest.param(lambda d: d + b"\0\0\0\1x", id="trailing-bytes"),
        pytest.param(lambda d: d[:30] + bytes([d[30] ^ 1]) + d[31:], id="bit-flip"),
        pytest.param(lambda d: b"WABSNAP3" + os.urandom(16).hex()[:16].encode() + d[24:], id="id"),
    ],
)
async def test_a_damaged_snapshot_is_refused_and_kept(opened: Opened, damage: Any) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.close()
    path = layout.snapshot_path(store.profile.state_dir)
    damaged = damage(path.read_bytes())
    path.write_bytes(damaged)
    with pytest.raises(CorruptStateError, match=r"snapshot\.wab: "):
        await opened()
    assert path.read_bytes() == damaged


async def test_a_frame_from_another_snapshot_is_refused(opened: Opened, tmp_path: Path) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.snapshot()
    path = layout.snapshot_path(store.profile.state_dir)
    first = path.read_bytes()
    await store.commit([user("2", 2)])
    await store.close()
    second = path.read_bytes()
    (length,) = struct.unpack_from(">I", first, 24)
    spliced = second[:24] + first[24 : 28 + length] + second[28 + length :]
    path.write_bytes(spliced)
    with pytest.raises(CorruptStateError, match="record 0 does not decrypt"):
        await opened()
