"""The journal: every change since the last snapshot, as encrypted records, fsynced in groups.

Files: `journal/00000001.wal`, `00000002.wal`, ... A snapshot starts a new segment and, once
the snapshot is durable, the older segments are deleted. A segment is a plain sequence of
frames (an empty segment is an empty file):

    frame  = length (u32 BE) | crc32 of those 4 length bytes (u32 BE) | sealed record
    sealed = key id (8 ASCII hex) | nonce (12) | AES-256-GCM ciphertext + tag (16)   (crypto.py)
    AAD    = "wab-journal-v2|<profile>|<segment>|<byte offset of the frame>" (+ "|<key id>")

The plaintext is `bridge.records.encode(seq, record)` (JSON). Binding the segment and offset
means a frame cannot be moved to another profile, file or place, dropped from the middle or
duplicated without failing authentication. The header CRC tells a damaged length field (an
error) from a record cut short by a crash (a torn tail, ignored): without it a flipped bit in
a length could make every later, acknowledged record look like a torn tail and be cut away.

Group commit: callers queue their records and wait; one writer task seals everything queued,
writes it with one write and one fsync (in the journal's own thread, so the event loop never
blocks on the disk and other blocking work cannot delay commits), then applies each caller's
records to memory in journal order and wakes the callers. Many concurrent webhook requests
thus share one fsync, and memory changes only after the disk has the change. If the write or
fsync fails, the file is cut back to its last good size (reopened first if need be) and every
waiting caller gets StorageError; nothing was applied, and a later commit tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bridge.errors import CorruptStateError, StorageError
from bridge.logs import get_logger
from bridge.persistence.crypto import OVERHEAD, DecryptError, Keyring
from bridge.persistence.files import atomic_write, fsync_dir, write_all

FRAME_HEADER = struct.Struct(">II")  # sealed length, CRC-32 of the 4 length bytes
MAX_FRAME = 64 * 1024 * 1024
SUFFIX = ".wal"
FORMAT = b"wab-journal-v2"
HOLE = b"\0" * 64  # see _crash_signature
ZERO_TAIL = 16

T = TypeVar("T")


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


def frame_aad(slug: str, segment: int, offset: int) -> bytes:
    return b"%s|%s|%d|%d" % (FORMAT, slug.encode(), segment, offset)


def _length_crc(length: int) -> int:
    return zlib.crc32(length.to_bytes(4, "big"))


def frame(sealed: bytes) -> bytes:
    return FRAME_HEADER.pack(len(sealed), _length_crc(len(sealed))) + sealed


def _crash_signature(tail: bytes) -> bool:
    """Whether bytes that do not parse look like an append cut short by a crash.

    A crash (power loss) can leave an append's blocks allocated but never written: they
    read as zeros, possibly with later blocks of the same append present. Ciphertext and
    frame headers never hold 64 zero bytes in a row, so such a run, or a tail ending in
    zeros, marks an unfinished write; any other damage is corruption.
    """
    return HOLE in tail or not any(tail[-ZERO_TAIL:])


def read_segment(
    path: Path, keyring: Keyring, slug: str, segment: int, is_last: bool
) -> tuple[list[bytes], int]:
    """Decrypt a segment's records; returns them and the size of its valid prefix.

    Only the last segment may end in a torn frame (a crash mid-append, never acknowledged,
    or an append being written right now when a reader looks): it is ignored. Anything else
    that does not check out is corruption, reported with the file and byte offset.
    """
    data = path.read_bytes()
    end = len(data)
    payloads: list[bytes] = []
    offset = 0
    while offset < end:
        torn = True  # whether the problem found below may be an unfinished append
        if end - offset < FRAME_HEADER.size:
            problem = f"incomplete record header at byte {offset}"
        else:
            length, crc = FRAME_HEADER.unpack_from(data, offset)
            body = offset + FRAME_HEADER.size
            if crc != _length_crc(length):
                problem = f"damaged record header at byte {offset}"
                torn = _crash_signature(data[offset:])
            elif length < OVERHEAD or length > MAX_FRAME:
                problem = f"invalid record length {length} at byte {offset}"
                torn = _crash_signature(data[offset:])
            elif body + length > end:
                problem = f"incomplete record at byte {offset}"
            else:
                try:
                    payloads.append(
                        keyring.open(data[body : body + length], frame_aad(slug, segment, offset))
                    )
                except DecryptError as exc:
                    problem = f"record at byte {offset} does not decrypt ({exc})"
                    torn = _crash_signature(data[offset:])
                else:
                    offset = body + length
                    continue
        if not (torn and is_last):
            where = "" if is_last else " of a segment that is not the newest"
            raise CorruptStateError(f"{path}: {problem}{where}")
        break
    return payloads, offset


def keep_torn_tail(path: Path, valid_size: int) -> tuple[int, Path | None]:
    """Before appending cuts a torn tail off, copy it aside (`<segment>.wal.torn-<offset>`)
    unless it is only zeros; returns the tail's size and the copy. The tail is almost always
    an append a crash cut short, but if it was damage instead, its bytes are not destroyed."""
    with path.open("rb") as fh:
        fh.seek(valid_size)
        tail = fh.read()
    if not any(tail):
        return len(tail), None
    aside = path.with_name(f"{path.name}.torn-{valid_size}")
    atomic_write(aside, [tail])
    return len(tail), aside


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
    """The open segment. Touched by one operation at a time: the writer task awaits each
    thread job before it starts the next, so no lock is needed."""

    segment: int
    size: int  # bytes of whole, fsynced frames: the next frame starts here
    fd: int | None = None
    broken: bool = False  # a write failed: reopen and cut back to `size` before the next


class Journal:
    """The append side of the journal of one profile (reading is `read_segment`)."""

    def __init__(self, directory: Path, keyring: Keyring, slug: str) -> None:
        self._dir = directory
        self._keyring = keyring
        self._slug = slug
        self._queue: deque[_Append | _Rotate] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # nothing queued and nothing being written
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None
        self._w = _WriterState(segment=1, size=0)
        self._log = get_logger(profile=slug)
        # One thread of its own: journal I/O runs strictly in order and never waits behind
        # unrelated blocking work in the loop's default executor.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"journal-{slug}")
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
        self._writer = asyncio.create_task(self._run(), name=f"journal:{self._slug}")

    def _open_segment(self) -> None:
        """(Re)open the current segment and cut it to its last good size."""
        w = self._w
        if w.fd is not None:
            with contextlib.suppress(OSError):
                os.close(w.fd)
            w.fd = None
        path = segment_path(self._dir, w.segment)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
            os.ftruncate(fd, w.size)
            os.fsync(fd)  # the cut must be durable before frames are appended after it
            # A new file's name must be durable too; cheap, and only on (re)open.
            fsync_dir(self._dir)
        except OSError:
            os.close(fd)
            raise
        w.fd = fd
        w.broken = False

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _check_running(self) -> None:
        if self._writer is None or self._writer.done():
            raise StorageError(f"profile {self._slug!r}: the journal is closed")

    async def append(self, payloads: list[bytes], apply: Callable[[], None]) -> None:
        """Queue records; return once they are fsynced and `apply` has run (StorageError if not).

        If the caller is cancelled meanwhile, the records are still written and applied:
        once queued they may already be on disk, and memory must match the disk.
        """
        self._check_running()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Append(payloads, apply, future))
        self._idle.clear()
        self._wake.set()
        await future

    async def rotate(self) -> int:
        """Finish everything queued so far in the current segment, then start a new one."""
        self._check_running()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(_Rotate(future))
        self._idle.clear()
        self._wake.set()
        return await future

    async def drop_before(self, segment: int) -> int:
        """Delete segments older than `segment` (their records are in a durable snapshot)."""
        return await self._in_thread(self._drop_before, segment)

    def _drop_before(self, segment: int) -> int:
        dropped = 0
        for old in list_segments(self._dir):  # oldest first: a crash leaves no gap after
            if old < segment:
                segment_path(self._dir, old).unlink(missing_ok=True)
                dropped += 1
        if dropped:
            fsync_dir(self._dir)
        return dropped

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                if isinstance(self._queue[0], _Rotate):
                    rotate = self._queue.popleft()
                    assert isinstance(rotate, _Rotate)
                    await self._rotate(rotate)
                    continue
                batch: list[_Append] = []
                while self._queue and isinstance(self._queue[0], _Append):
                    item = self._queue.popleft()
                    assert isinstance(item, _Append)
                    batch.append(item)
                await self._commit(batch)
            self._idle.set()

    async def _rotate(self, rotate: _Rotate) -> None:
        try:
            await self._in_thread(self._next_segment)
        except asyncio.CancelledError:
            _fail(rotate.future, StorageError("the journal stopped"))
            raise
        except Exception as exc:
            reason = exc.strerror if isinstance(exc, OSError) else repr(exc)
            _fail(rotate.future, StorageError(f"cannot start a journal segment: {reason}"))
        else:
            if not rotate.future.done():
                rotate.future.set_result(self._w.segment)

    async def _commit(self, batch: list[_Append]) -> None:
        """Seal, write and fsync one batch, then apply it; or fail every caller in it."""
        try:
            # `size` only changes inside the thread job awaited below, so offsets are exact.
            w = self._w
            offset = w.size
            frames = []
            for item in batch:
                for payload in item.payloads:
                    sealed = frame(
                        self._keyring.seal(payload, frame_aad(self._slug, w.segment, offset))
                    )
                    frames.append(sealed)
                    offset += len(sealed)
            await self._in_thread(self._write, b"".join(frames))
        except asyncio.CancelledError:
            for item in batch:
                _fail(item.future, StorageError("the journal stopped"))
            raise
        except Exception as exc:
            # Any failure, not only OSError: a writer task that died would hang every commit.
            reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else repr(exc)
            error = StorageError(f"journal write failed: {reason}")
            self._log.error(
                "journal_write_failed",
                error=str(error),
                records=sum(len(i.payloads) for i in batch),
            )
            for item in batch:
                _fail(item.future, error)
            return
        self.fsyncs += 1
        # Durable: now memory may change, in journal order, before anyone is told.
        for item in batch:
            try:
                item.apply()
            except Exception as exc:  # a bug in State.apply; the record is on disk anyway
                self._log.exception("journal_apply_failed")
                _fail(item.future, exc)
            else:
                if not item.future.done():
                    item.future.set_result(None)

    def _write(self, data: bytes) -> None:
        """Runs in the journal thread: append at the last good size and fsync, or cut back
        and raise."""
        w = self._w
        if w.broken or w.fd is None:
            self._open_segment()
        assert w.fd is not None
        try:
            os.lseek(w.fd, w.size, os.SEEK_SET)
            write_all(w.fd, data)
            os.fsync(w.fd)
        except BaseException:
            # After a failed fsync Linux may have dropped the dirty pages and a later fsync
            # on this descriptor proves nothing: cut back now if we can, and reopen (cutting
            # back again) before the next write. The callers' senders retry.
            w.broken = True
            with contextlib.suppress(OSError):
                os.ftruncate(w.fd, w.size)
            raise
        w.size += len(data)

    def _next_segment(self) -> None:
        """Runs in the journal thread: switch appends to a new, empty segment."""
        w = self._w
        if w.broken or w.fd is None:
            self._open_segment()  # the old segment must not keep a partial frame
        previous = (w.segment, w.size)
        w.segment += 1
        w.size = 0
        try:
            self._open_segment()
        except OSError:
            # Keep appending to the old segment; its fd was closed, so reopen it first.
            w.segment, w.size = previous
            w.broken = True
            raise

    async def close(self) -> None:
        """Finish what is queued and being written, then stop the writer and close the file."""
        if self._writer is not None:
            if not self._writer.done():
                await self._idle.wait()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._w.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._w.fd)
            self._w.fd = None
        self._thread.shutdown(wait=False)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
