"""The journal: every change since the last snapshot, as encrypted records, fsynced in groups.

Files: `journal/00000001.wal`, `00000002.wal`, ... A snapshot starts a new segment and, once
the snapshot is durable, the older segments are deleted. Each record is a frame:
`length (4 bytes, big endian) | sealed record` (see crypto.py), sealed with associated data
naming the profile and the segment, so frames cannot be moved between profiles or files.

Group commit: callers queue their records and wait; one writer task writes everything queued,
fsyncs once (in a thread), then applies each caller's records to memory in journal order and
wakes the callers. Many concurrent webhook requests thus share one fsync, and memory changes
only after the disk has the change. If the write or fsync fails, the file is cut back to its
last good size and every waiting caller gets StorageError; nothing was applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bridge.errors import CorruptStateError, StorageError
from bridge.logs import get_logger
from bridge.persistence.crypto import DecryptError, Keyring
from bridge.persistence.files import fsync_dir, write_all

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
SUFFIX = ".wal"


def segment_path(directory: Path, segment: int) -> Path:
    return directory / f"{segment:08d}{SUFFIX}"


def list_segments(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    out = []
    for path in directory.iterdir():
        if path.suffix == SUFFIX and path.stem.isdigit():
            out.append(int(path.stem))
    return sorted(out)


def frame_aad(slug: str, segment: int) -> bytes:
    return f"wab-journal-v1|{slug}|{segment}".encode()


def read_segment(
    path: Path, keyring: Keyring, slug: str, segment: int, is_last: bool
) -> tuple[list[bytes], int]:
    """Decrypt a segment's records; returns them and the size of its valid prefix.

    Only the last segment may end in a torn frame (a crash mid-append, never acknowledged):
    it is ignored. A frame that is complete but does not authenticate is corruption.
    """
    data = path.read_bytes()
    aad = frame_aad(slug, segment)
    payloads: list[bytes] = []
    offset = 0
    while offset < len(data):
        rest = len(data) - offset
        length = HEADER.unpack_from(data, offset)[0] if rest >= HEADER.size else -1
        torn = (
            length < 0
            or offset + HEADER.size + length > len(data)
            or (length == 0 and not data[offset:].strip(b"\0"))  # zero-filled tail after a crash
        )
        if torn:
            if is_last:
                break
            raise CorruptStateError(f"{path}: truncated record at byte {offset}")
        if length == 0 or length > MAX_FRAME:
            raise CorruptStateError(f"{path}: invalid record length {length} at byte {offset}")
        sealed = data[offset + HEADER.size : offset + HEADER.size + length]
        try:
            payloads.append(keyring.open(sealed, aad))
        except DecryptError as exc:
            raise CorruptStateError(
                f"{path}: record at byte {offset} does not decrypt ({exc})"
            ) from None
        offset += HEADER.size + length
    return payloads, offset


@dataclass
class _Append:
    payloads: list[bytes]
    apply: Callable[[], None]
    future: asyncio.Future[None]


@dataclass
class _Rotate:
    future: asyncio.Future[int]


@dataclass
class _WriterState:
    """What the writer thread touches; only ever used by one write at a time."""

    segment: int
    size: int
    fd: int | None = None
    broken: bool = field(default=False)


class Journal:
    def __init__(self, directory: Path, keyring: Keyring, slug: str) -> None:
        self._dir = directory
        self._keyring = keyring
        self._slug = slug
        self._queue: deque[_Append | _Rotate] = deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._w = _WriterState(segment=1, size=0)
        self._log = get_logger(profile=slug)
        self._writing = False  # a batch is between the queue and its callers being woken
        self.fsyncs = 0  # for tests and metrics: how many group commits hit the disk

    @property
    def segment(self) -> int:
        return self._w.segment

    def use_keyring(self, keyring: Keyring) -> None:
        """Seal from now on with `keyring`'s active key (key rotation)."""
        self._keyring = keyring

    def start(self, segment: int, valid_size: int) -> None:
        """Append to `segment` from `valid_size` on (a torn tail beyond it is cut off)."""
        self._w = _WriterState(segment=segment, size=valid_size)
        self._open_segment()
        fsync_dir(self._dir)
        self._writer = asyncio.create_task(self._run(), name=f"journal:{self._slug}")

    def _open_segment(self) -> None:
        """(Re)open the current segment and cut it to its last good size."""
        w = self._w
        if w.fd is not None:
            with contextlib.suppress(OSError):
                os.close(w.fd)
            w.fd = None
        fd = os.open(segment_path(self._dir, w.segment), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, w.size)
        except OSError:
            os.close(fd)
            raise
        w.fd = fd
        w.broken = False

    async def append(self, payloads: list[bytes], apply: Callable[[], None]) -> None:
        """Queue records; return once they are fsynced and `apply` has run (StorageError if not)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Append(payloads, apply, future))
        self._wake.set()
        await future

    async def rotate(self) -> int:
        """Finish everything queued so far in the current segment, then start a new one."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(_Rotate(future))
        self._wake.set()
        return await future

    def drop_before(self, segment: int) -> int:
        """Delete segments older than `segment` (their records are in a durable snapshot)."""
        dropped = 0
        for old in list_segments(self._dir):
            if old < segment:
                segment_path(self._dir, old).unlink(missing_ok=True)
                dropped += 1
        if dropped:
            fsync_dir(self._dir)
        return dropped

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._writing = True
            try:
                await self._drain_queue(loop)
            finally:
                self._writing = False

    async def _drain_queue(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write queued appends in batches and perform rotations, in queue order."""
        while self._queue:
            batch: list[_Append] = []
            while self._queue and isinstance(self._queue[0], _Append):
                item = self._queue.popleft()
                assert isinstance(item, _Append)
                batch.append(item)
            if batch:
                await self._commit(loop, batch)
            if self._queue and isinstance(self._queue[0], _Rotate):
                rotate = self._queue.popleft()
                assert isinstance(rotate, _Rotate)
                try:
                    await loop.run_in_executor(None, self._next_segment)
                except OSError as exc:
                    if not rotate.future.done():
                        rotate.future.set_exception(
                            StorageError(f"cannot start a journal segment: {exc.strerror}")
                        )
                else:
                    if not rotate.future.done():
                        rotate.future.set_result(self._w.segment)

    async def _commit(self, loop: asyncio.AbstractEventLoop, batch: list[_Append]) -> None:
        aad = frame_aad(self._slug, self._w.segment)
        frames = []
        for item in batch:
            for payload in item.payloads:
                sealed = self._keyring.seal(payload, aad)
                frames.append(HEADER.pack(len(sealed)) + sealed)
        data = b"".join(frames)
        try:
            await loop.run_in_executor(None, self._write, data)
        except OSError as exc:
            error = StorageError(f"journal write failed: {exc.strerror or exc}")
            self._log.error("journal_write_failed", error=str(error), records=len(frames))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        self.fsyncs += 1
        # Durable: now memory may change, in journal order, before anyone is told.
        for item in batch:
            item.apply()
        for item in batch:
            if not item.future.done():
                item.future.set_result(None)

    def _write(self, data: bytes) -> None:
        """Runs in a thread: append at the last good size and fsync, or cut back and raise."""
        w = self._w
        if w.broken or w.fd is None:
            self._open_segment()
        assert w.fd is not None
        try:
            os.lseek(w.fd, w.size, os.SEEK_SET)
            write_all(w.fd, data)
            # After a failed fsync Linux may have dropped the dirty pages, so a later fsync
            # proves nothing about them: cut back and let the callers' senders retry.
            os.fsync(w.fd)
        except OSError:
            w.broken = True
            with contextlib.suppress(OSError):
                os.ftruncate(w.fd, w.size)
                w.broken = False
            raise
        w.size += len(data)

    def _next_segment(self) -> None:
        w = self._w
        if w.broken:
            self._open_segment()
        w.segment += 1
        w.size = 0
        self._open_segment()
        fsync_dir(self._dir)

    async def close(self) -> None:
        """Finish what is queued and being written, then stop the writer and close the file."""
        while self._queue or self._writing:
            await asyncio.sleep(0.001)
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._w.fd is not None:
            os.close(self._w.fd)
            self._w.fd = None
