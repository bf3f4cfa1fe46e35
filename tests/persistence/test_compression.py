"""zstd before encryption: snapshots a fraction of their JSON, old files still load, bad
compressed data refused with a clear error."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import orjson
import pytest
import zstandard

from bridge.errors import CorruptStateError
from bridge.persistence import compression, frames, layout, snapshot
from bridge.persistence.crypto import Keyring
from bridge.persistence.keys import load_keyring
from bridge.persistence.snapshot import SnapshotInfo, read_snapshot
from bridge.state import State
from bridge.store.durable import DurableStore, load_state
from tests.chattext import conversations, seed_json
from tests.conftest import make_profile
from tests.persistence.support import NOW, Opened, crash, noise, segment_file, user

LEGACY = Path(__file__).parent / "data" / "release-e34dbc6"
LEGACY_KEY = "ZmFrZS1rZXktZm9yLWEtdGVzdC1maXh0dXJlLTMyYiE="


def frame_flags(path: Path, keyring: Keyring, slug: str, segment: int) -> list[int]:
    """The flags byte of each v3 frame of a journal segment, decrypted by hand."""
    data, offset, out = path.read_bytes(), 0, []
    while offset < len(data):
        length = struct.unpack_from(">I", data, offset)[0]
        sealed = data[offset + 8 : offset + 8 + length]
        plain = keyring.open(sealed, frames.aad(frames.V3, slug, segment, offset))
        out.append(plain[1])
        offset += 8 + length
    return out


async def test_a_snapshot_of_chat_text_is_under_a_quarter_of_its_json(opened: Opened) -> None:
    store = await opened()
    for conv in conversations(200, 250, NOW):
        store.state.add_conversation(conv)
    plain_json = len(orjson.dumps(seed_json(list(store.state.conversations.values()))))
    await store.snapshot()

    size = layout.snapshot_path(store.profile.state_dir).stat().st_size
    assert size <= 0.25 * plain_json, f"{size / plain_json:.3f}x of the plaintext JSON"
    info = SnapshotInfo()
    read_snapshot(
        layout.snapshot_path(store.profile.state_dir),
        store.keyring,
        store.profile.slug,
        State(),
        info,
    )
    # Every conversation is stored packed (its messages compressed on their own).
    assert info.version == 3 and info.cold == 200
    assert info.json_bytes >= plain_json and info.file_bytes == size


async def test_a_compressed_snapshot_reloads_exactly(opened: Opened) -> None:
    store = await opened()
    for conv in conversations(30, 40, NOW):
        store.state.add_conversation(conv)
    await store.commit([user("34600000999", 1)])
    before = seed_json(list(store.state.conversations.values()))
    await store.close()

    again = await opened()
    assert seed_json(list(again.state.conversations.values())) == before


async def test_journal_frames_are_compressed_only_when_it_pays(opened: Opened) -> None:
    store = await opened()
    await store.commit([user("1", 1, text="hola")])  # one short record: stays plain
    chatty = [user("1", n, text=f"¿Tenéis la chaqueta en azul, talla {n}?") for n in range(2, 40)]
    await store.commit(chatty)  # repetitive JSON: compressed
    await crash(store)

    flags = frame_flags(segment_file(store, 1), store.keyring, "default", 1)
    # The store's settings (committed at open), the short one, the chatty one.
    assert flags == [frames.PLAIN, frames.PLAIN, frames.ZSTD]
    again = await opened()
    assert len(again.state.conversations["1"].messages) == 39


def test_bytes_that_do_not_shrink_are_left_plain() -> None:
    assert compression.pack(os.urandom(5000)) is None
    assert compression.pack(b"short") is None
    packed = compression.pack(noise(1, 5000).encode() * 2)
    assert packed is not None and compression.unpack(packed, 10_000) == noise(1, 5000).encode() * 2


def legacy_store(tmp_path: Path) -> DurableStore:
    shutil.copytree(LEGACY, tmp_path / "legacy")
    profile = make_profile(
        tmp_path / "legacy",
        slug="legacy",
        key=LEGACY_KEY,
        state_dir=tmp_path / "legacy" / "profiles" / "legacy",
    )
    return DurableStore(profile)


async def test_a_store_written_before_compression_loads_and_moves_to_the_new_format(
    tmp_path: Path,
) -> None:
    store = legacy_store(tmp_path)
    path = layout.snapshot_path(store.profile.state_dir)
    assert path.read_bytes().startswith(snapshot.MAGIC_V1)
    old = load_state(store.profile)  # v1 snapshot + v3 frames with flags 0
    assert [m.content for m in old.conversations["34600000001"].messages][-1] == (
        "¿Y el envío es gratis?"
    )
    assert old.message_count() == 9

    await store.open()
    await store.close()  # the final snapshot is written in the new format
    assert path.read_bytes().startswith(snapshot.MAGIC)
    again = load_state(store.profile)
    assert {k: c.to_seed()["messages"] for k, c in again.conversations.items()} == {
        k: c.to_seed()["messages"] for k, c in old.conversations.items()
    }


def test_an_archive_written_before_compression_still_reads(tmp_path: Path) -> None:
    keyring = load_keyring(make_profile(tmp_path, key=LEGACY_KEY), create=False)
    state, info = State(), SnapshotInfo()
    read_snapshot(LEGACY / "legacy-20260101T000000000000Z.wab", keyring, "legacy", state, info)
    assert info.version == 1 and "format v1" in info.describe()
    assert state.message_count() == 8


# -- damaged compressed data: a clear CorruptStateError, never a crash -------------------------

BAD_BODIES = {
    "garbage": b"\x28\xb5\x2f\xfd" + b"not zstd at all" * 4,
    "truncated": zstandard.ZstdCompressor().compress(b"[[" + b"{}" * 1000 + b"]]")[:-5],
    "trailing-bytes": zstandard.ZstdCompressor().compress(b"[[{}]]") + b"extra",
    "no-size": zstandard.ZstdCompressor(write_content_size=False).compress(b"[[{}]]"),
    # A header claiming 2 GiB: refused before anything is allocated.
    "bomb": bytes.fromhex("28b52ffd") + b"\xa4" + (2**31).to_bytes(4, "little") + b"\0" * 8,
    "not-json": zstandard.ZstdCompressor().compress(b"\xff" * 200),
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_a_journal_frame_that_does_not_decompress_is_a_clear_error(
    opened: Opened, body: bytes
) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await crash(store)
    path = segment_file(store, 1)
    offset = path.stat().st_size
    plaintext = bytes((frames.COMMITS, frames.ZSTD)) + body
    with path.open("ab") as fh:  # sealed with the right key: only the content is wrong
        fh.write(frames.seal(store.keyring, plaintext, "default", 1, offset))

    with pytest.raises(CorruptStateError, match=rf"00000001\.wal: record at byte {offset}: "):
        await opened()
    with pytest.raises(CorruptStateError):
        load_state(store.profile)


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_a_snapshot_frame_that_does_not_decompress_is_a_clear_error(
    opened: Opened, body: bytes
) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.close()
    path = layout.snapshot_path(store.profile.state_dir)
    data = path.read_bytes()
    snapshot_id = data[8:24]
    # Replace the last frame (the end record) with one whose compressed body is bad.
    offsets, offset = [], 24
    while offset < len(data):
        offsets.append(offset)
        offset += 4 + struct.unpack_from(">I", data, offset)[0]
    index = len(offsets) - 1
    sealed = store.keyring.seal(
        bytes((snapshot.ZSTD,)) + body, snapshot._aad("default", snapshot_id, index)
    )
    path.write_bytes(data[: offsets[-1]] + struct.pack(">I", len(sealed)) + sealed)

    with pytest.raises(CorruptStateError, match=rf"snapshot\.wab: record {index}"):
        await opened()
    assert path.read_bytes()[: offsets[-1]] == data[: offsets[-1]]  # never overwritten


async def test_a_snapshot_frame_with_unknown_flags_is_refused(opened: Opened) -> None:
    store = await opened()
    await store.close()
    path = layout.snapshot_path(store.profile.state_dir)
    data = path.read_bytes()
    sealed = store.keyring.seal(b"\x04{}", snapshot._aad("default", data[8:24], 0))
    first = 24 + 4 + struct.unpack_from(">I", data, 24)[0]
    path.write_bytes(data[:24] + struct.pack(">I", len(sealed)) + sealed + data[first:])

    with pytest.raises(CorruptStateError, match="flags 0x04, unknown to this version"):
        await opened()
