"""The media store: chunked, authenticated encryption; whole files only; damage detected."""

from __future__ import annotations

import os
import secrets
import struct
from pathlib import Path

import pytest

from bridge.assistants.media import attachments
from bridge.conversations import Message
from bridge.media.store import CHUNK, MAGIC, MediaFileError, MediaStore
from bridge.persistence.crypto import Keyring
from tests.conftest import eventually

KEYRING = Keyring([os.urandom(32)])


def store(tmp_path: Path, keyring: Keyring = KEYRING, slug: str = "shop") -> MediaStore:
    return MediaStore(tmp_path / "media", lambda: keyring, slug)


async def write(files: MediaStore, data: bytes, message_id: str = "wamid.A") -> str:
    writer = files.writer(message_id, "application/pdf")
    for start in range(0, len(data), 100_000):  # as a download streams it
        await writer.write(data[start : start + 100_000])
    return (await writer.finish()).name


def frames(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each frame of a media file."""
    data = path.read_bytes()
    offset, out = len(MAGIC), []
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        out.append((offset, 4 + length))
        offset += 4 + length
    return out


async def test_a_large_file_round_trips_in_chunks_with_no_plaintext_on_disk(
    tmp_path: Path,
) -> None:
    marker = secrets.token_bytes(16)
    data = (marker + os.urandom(4000)) * 700  # ~2.8 MB: three chunks
    files = store(tmp_path)
    name = await write(files, data)
    path = files.path(name)
    assert marker not in path.read_bytes()
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(frames(path)) == 1 + 3 + 1  # header, chunks, end
    chunks = list(files.chunks(name, "wamid.A"))
    assert [len(c) for c in chunks] == [CHUNK, CHUNK, len(data) - 2 * CHUNK]
    assert b"".join(chunks) == data
    checked = files.check(name)
    assert checked.size == len(data)
    assert [p.name for p in files.directory.iterdir()] == [path.name]  # no temp file left


async def test_an_empty_file_is_a_file(tmp_path: Path) -> None:
    files = store(tmp_path)
    name = await write(files, b"")
    assert files.read(name) == b""


async def test_a_file_cut_short_does_not_read(tmp_path: Path) -> None:
    files = store(tmp_path)
    name = await write(files, os.urandom(CHUNK + 10))
    path = files.path(name)
    whole = path.read_bytes()
    last = frames(path)[-1]
    path.write_bytes(whole[: last[0]])  # without the end frame: every chunk authenticates
    with pytest.raises(MediaFileError, match="truncated"):
        files.check(name)
    path.write_bytes(whole[:-1])
    with pytest.raises(MediaFileError, match="truncated"):
        files.check(name)


async def test_frames_cannot_be_moved_dropped_or_spliced(tmp_path: Path) -> None:
    files = store(tmp_path)
    first = await write(files, os.urandom(2 * CHUNK + 5))
    other = await write(files, os.urandom(2 * CHUNK + 5))
    path = files.path(first)
    data = path.read_bytes()
    (h, c1, c2, c3, end) = frames(path)
    swapped = data[: c1[0]] + data[c2[0] : c2[0] + c2[1]] + data[c1[0] : c1[0] + c1[1]]
    path.write_bytes(swapped + data[c3[0] :])
    with pytest.raises(MediaFileError, match="does not decrypt"):
        files.check(first)
    dropped = data[: c2[0]] + data[c3[0] :]  # a whole chunk taken out
    path.write_bytes(dropped)
    with pytest.raises(MediaFileError, match="does not decrypt"):
        files.check(first)
    # A file renamed to another's name: its frames are bound to their own name.
    files.path(other).write_bytes(data)
    with pytest.raises(MediaFileError, match="does not decrypt"):
        files.check(other)


async def test_a_file_is_bound_to_its_message_and_profile(tmp_path: Path) -> None:
    files = store(tmp_path)
    name = await write(files, b"photo", "wamid.A")
    with pytest.raises(MediaFileError, match="another message"):
        files.read(name, "wamid.B")
    with pytest.raises(MediaFileError, match="does not decrypt"):
        store(tmp_path, slug="clinic").read(name)


async def test_an_aborted_write_leaves_nothing(tmp_path: Path) -> None:
    files = store(tmp_path)
    writer = files.writer("wamid.A", None)
    await writer.write(os.urandom(CHUNK + 1))
    writer.abort()  # queued behind any write still running in its thread
    await eventually(lambda: not list(files.directory.iterdir()), what="the temp file to go")


async def test_reseal_moves_a_file_to_the_new_key_and_keeps_it_readable(tmp_path: Path) -> None:
    old = Keyring([os.urandom(32)])
    files = store(tmp_path, old)
    data = os.urandom(CHUNK + 3)
    name = await write(files, data)
    rotated = Keyring([os.urandom(32), *old.keys])
    moved = store(tmp_path, rotated)
    assert moved.sealed_with(name) == old.active_id
    moved.reseal(name)
    assert moved.sealed_with(name) == rotated.active_id
    new_only = store(tmp_path, Keyring([rotated.keys[0]]))
    assert new_only.read(name, "wamid.A") == data


async def test_sweep_deletes_what_is_not_kept_and_the_temps_of_dead_writers(
    tmp_path: Path,
) -> None:
    files = store(tmp_path)
    keep, drop = await write(files, b"a"), await write(files, b"b")
    dead = files.directory / f".{drop}.wam.999999999.tmp"
    dead.write_bytes(b"partial")
    removed = files.sweep(lambda name: name == keep)
    assert sorted(n for n, _ in removed) == sorted([drop, dead.name])
    assert files.names() == [keep]


def test_names_from_outside_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MediaFileError, match="not a media file name"):
        store(tmp_path).path("../../key")


async def test_a_file_the_disk_cannot_read_is_left_out_not_a_crash(tmp_path: Path) -> None:
    """A stored file the disk will not give back (permissions after a restore by another
    user, an I/O error; here a directory in its place) is a MediaFileError like a damaged
    one: the backend's attachments leave it out. An OSError instead crashed the reply, and
    every later reply of that conversation with it."""
    files = store(tmp_path)
    readable = await write(files, b"%PDF readable")
    unreadable = await write(files, b"%PDF unreadable", "wamid.B")
    files.path(unreadable).unlink()
    files.path(unreadable).mkdir()
    with pytest.raises(MediaFileError):
        await files.load(unreadable, "wamid.B")
    history = [
        Message(
            "user",
            "[document]",
            1,
            id=wamid,
            type="document",
            extra={"media": {"id": "m", "state": "stored", "file": name, "size": 20}},
        )
        for wamid, name in (("wamid.A", readable), ("wamid.B", unreadable))
    ]
    found = await attachments(history, files, types=("document",), max_items=3, max_bytes=1000)
    assert [(index, a.data) for index, a in found.items()] == [(0, b"%PDF readable")]
