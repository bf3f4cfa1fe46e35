"""The journal: every change since the last snapshot, encrypted, fsynced in group commits.

Files: `journal/00000001.wal`, `00000002.wal`, ... A snapshot starts a new segment and, once
the snapshot is durable, the older segments are deleted. A segment is a sequence of frames
(frames.py; an empty segment is an empty file). Reading them back, and what counts as a
torn tail, is segments.py.

Group commit: callers queue their commits and wait; one writer task takes everything queued
(up to GROUP_BYTES), seals it as ONE frame, writes it with one write and one fsync (in the
journal's own thread, so the event loop never blocks on the disk and other blocking work
cannot delay commits), then applies each caller's records to memory in journal order and
wakes the callers. Many concurrent webhook requests thus share one fsync and one seal, and a
crash leaves each commit on disk whole or not at all: a frame is one write, and replay keeps
only whole frames. Memory changes only after the disk has the change. If the write or fsync
fails, the file is cut back to its last good size (reopened first if need be) and every
waiting caller gets StorageError; nothing was applied, and a later commit tries again.

Rotation (before each snapshot): create the next segment and sync the directory, then append
the end record "continues in n+1" to the current one and fsync, then switch. A crash or a
failure between the two steps leaves an empty next segment after one without the end record,
which replay reads as "the rotation did not happen" and the next rotation reuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bridge.errors import StorageError
from bridge.ops.logs import get_logger
from bridge.persistence import frames
from bridge.persistence.crypto import OVERHEAD, Keyring
from bridge.persistence.files import atomic_write, fsync_dir, write_all

SUFFIX = ".wal"
# One group commit's frame stops growing here (the next commits wait for the next fsync);
# a single larger commit still goes alone, up to what a frame holds.
GROUP_BYTES = 4 * 1024 * 1024
# A commit's plaintext as one frame: kind, flags, "[[", "]]", and a comma per record.
_FRAME_EXTRA = 2 + 4 + frames.HEADER.size + OVERHEAD

T = TypeVar("T")


def segment_path(directory: Path, segment: int) -> Path:
    return directory / f"{segment:08d}{SUFFIX}"


def create_segment(directory: Path, segment: int) -> None:
    """An empty segment, durable with its name, for a snapshot written after it to continue
    in: a snapshot must never name a segment that is not there (a missing newest segment
    refuses to start)."""
    fd = os.open(segment_path(directory, segment), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(directory)


def list_segments(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    out = []
    for path in directory.iterdir():
        if path.suffix == SUFFIX and path.stem.isdigit():
            out.append(int(path.stem))
    return sorted(out)


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


def set_aside(path: Path, offset: int) -> Path:
    """Move the bytes of `path` from `offset` on out of the journal, to
    `<segment>.wal.damaged-<offset>` (the whole file is renamed; a tail is copied, and
    appending cuts it off later). Never deletes anything; returns where the bytes are."""
    aside = path.with_name(f"{path.name}.damaged-{offset}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{offset}.{n}")
    if offset == 0:
        os.rename(path, aside)
        fsync_dir(path.parent)
    else:
        with path.open("rb") as fh:
            fh.seek(offset)
            tail = fh.read()
        atomic_write(aside, [tail])
    return aside


@dataclass
class _Append:
    payloads: list[bytes]
    apply: Callable[[], None]
    future: asyncio.Future[None]
    size: int  # bytes in the frame's plaintext


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
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop `start` ran in
        self._w = _WriterState(segment=1, size=0)
        self._log = get_logger(profile=slug)
        # One thread of its own: journal I/O runs strictly in order and never waits behind
        # unrelated blocking work in the loop's default executor.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"journal-{slug}")
        self.fsyncs = 0  # for tests and metrics: how many group commits hit the disk

    @property
    def segment(self) -> int:
        return self._w.segment

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being written: memory holds every commit made so far."""
        return self._idle.is_set()

    def use_keyring(self, keyring: Keyring) -> None:
        """Seal from now on with `keyring`'s active key (key rotation)."""
        self._keyring = keyring

    def start(self, segment: int, valid_size: int) -> None:
        """Append to `segment` from `valid_size` on (a torn tail beyond it is cut off)."""
        self._w = _WriterState(segment=segment, size=valid_size)
        self._open_segment()
        # Kept: on Python 3.11 every get_running_loop() is a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self._writer = self._loop.create_task(self._run(), name=f"journal:{self._slug}")

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
        return await self._running_loop().run_in_executor(self._thread, fn, *args)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop if self._loop is not None else asyncio.get_running_loop()

    def _check_running(self) -> None:
        if self._writer is None or self._writer.done():
            raise StorageError(f"profile {self._slug!r}: the journal is closed")

    async def append(self, payloads: list[bytes], apply: Callable[[], None]) -> None:
        """Queue records; return once they are fsynced and `apply` has run (StorageError if not).

        If the caller is cancelled meanwhile, the records are still written and applied:
        once queued they may already be on disk, and memory must match the disk.
        """
        await self.submit(payloads, apply)

    def submit(self, payloads: list[bytes], apply: Callable[[], None]) -> asyncio.Future[None]:
        """Queue records now, without awaiting (journal order is call order); the future is
        done once they are fsynced and applied. For a caller that must take its place in the
        queue before anything else can run (`DurableStore.commit_decided`)."""
        self._check_running()
        size = sum(len(p) for p in payloads) + len(payloads) + 2
        if size + _FRAME_EXTRA > frames.MAX_FRAME:
            raise StorageError(f"a commit of {size} bytes is larger than a journal frame")
        future: asyncio.Future[None] = self._running_loop().create_future()
        self._queue.append(_Append(payloads, apply, future, size))
        self._idle.clear()
        self._wake.set()
        return future

    async def settled(self) -> None:
        """Return once everything queued so far is written and applied (or failed)."""
        self._check_running()
        await self._idle.wait()

    async def rotate(self) -> int:
        """Finish everything queued so far in the current segment, then start a new one."""
        self._check_running()
        future: asyncio.Future[int] = self._running_loop().create_future()
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
                size = 0
                while self._queue and isinstance(self._queue[0], _Append):
                    if batch and size + self._queue[0].size > GROUP_BYTES:
                        break  # the rest go in the next frame
                    item = self._queue.popleft()
                    assert isinstance(item, _Append)
                    batch.append(item)
                    size += item.size
                await self._commit(batch)
            self._idle.set()

    async def _rotate(self, rotate: _Rotate) -> None:
        try:
            await self._in_thread(self._next_segment)
        except asyncio.CancelledError:
            _fail(rotate.future, StorageError("the journal stopped"))
            raise
        except Exception as exc:
            if isinstance(exc, StorageError):
                error = exc
            else:
                reason = exc.strerror if isinstance(exc, OSError) else repr(exc)
                error = StorageError(f"cannot start a journal segment: {reason}")
            _fail(rotate.future, error)
        else:
            if not rotate.future.done():
                rotate.future.set_result(self._w.segment)

    async def _commit(self, batch: list[_Append]) -> None:
        """Seal, write and fsync one batch as one frame, then apply it; or fail every caller
        in it."""
        try:
            plaintext = frames.commits_plaintext([item.payloads for item in batch])
            await self._in_thread(self._append_frame, plaintext)
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

    def _append_frame(self, plaintext: bytes) -> None:
        """Runs in the journal thread: compress (when it pays) and seal `plaintext` for the
        next offset, and write it.

        Sealing here, in order with the writes, keeps the offset in the AAD exact and the
        compressor's and the cipher's work off the event loop."""
        w = self._w
        if w.broken or w.fd is None:
            self._open_segment()  # before sealing: it may be a segment switch back
        sealed = frames.seal(
            self._keyring, frames.compressed(plaintext), self._slug, w.segment, w.size
        )
        self._write(sealed)

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
        """Runs in the journal thread: create the next segment, end the current one with the
        record that says so, then append to the new one.

        The next segment exists (and its name is durable) before the end record does, so a
        segment that ends with the record always has its successor on disk; a crash or an
        error in between leaves an empty successor that replay ignores and this reuses."""
        w = self._w
        if w.broken or w.fd is None:
            self._open_segment()  # the old segment must not keep a partial frame
        following = w.segment + 1
        fd = self._create_segment(segment_path(self._dir, following))
        try:
            self._write(
                frames.seal(
                    self._keyring, frames.end_plaintext(following), self._slug, w.segment, w.size
                )
            )
        except BaseException:
            os.close(fd)
            raise
        assert w.fd is not None
        with contextlib.suppress(OSError):
            os.close(w.fd)
        w.fd, w.segment, w.size, w.broken = fd, following, 0, False

    def _create_segment(self, path: Path) -> int:
        """Open `path` as a new, empty segment, durably named; reuse one left empty by an
        earlier attempt, but never one that holds data."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size:
                raise StorageError(
                    f"cannot start journal segment {path}: it exists and is not empty"
                )
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
            os.fsync(fd)
            fsync_dir(self._dir)
        except BaseException:
            os.close(fd)
            raise
        return fd

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
