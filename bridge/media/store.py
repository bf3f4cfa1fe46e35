"""The media store: each inbound file encrypted in chunks, in the profile's `media/` directory.

A file is `media/<name>.wam`, `name` 32 random hex digits (nothing of the user's: a wamid
embeds the phone number). Format: the magic `WABMEDIA`, then frames `length (u32 BE) |
sealed` (sealed as in persistence/crypto.py: key id | nonce | ciphertext + tag), each sealed
with associated data `wab-media-v1|<profile>|<name>|<index>`, so a frame cannot be moved to
another place, file or profile. Decrypted, frame 0 is `H` + JSON `{"v": 1, "message": wamid,
"mime_type"}`, frames 1..n are `C` + up to 1 MiB of the file, and the last is `E` + JSON
`{"size", "sha256", "chunks"}`: a file without it, or whose chunks do not add up to it, is
truncated or damaged, and reading it fails.

No plaintext byte reaches the disk: chunks are sealed before they are written, the file is
written to a temp file (`.<name>.wam.<pid>.tmp`), fsynced, renamed, the directory fsynced,
so a file under its name is always whole. Only one chunk is in memory at a time, so a 100 MB
document is streamed in and out. Sealing and writing run in a thread of the writer's own,
off the event loop.

The store knows nothing of messages: which files are still wanted is the state's business
(`State.media_files`); `sweep` deletes the rest (erased conversations, a download a crash
interrupted before it was recorded).

Replicas (the PostgreSQL store) share the files through a `SharedMedia` (the database,
bridge/store/pg/media.py): a finished file is `publish`ed before its record is committed,
and a replica that lacks a file (another one fetched it) gets it with `ensure_local` before
reading it, byte for byte as sealed. The directory is then each replica's cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import re
import secrets
import struct
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson

from bridge.errors import BridgeError
from bridge.persistence.crypto import KEY_ID_BYTES, DecryptError, Keyring
from bridge.persistence.files import fsync_dir, remove_stale_temps, secure_dir, temp_path, write_all

MAGIC = b"WABMEDIA"
CHUNK = 1024 * 1024
SUFFIX = ".wam"
LENGTH = struct.Struct(">I")
# A sealed chunk: the chunk, its type byte and crypto overhead; anything larger is damage.
MAX_FRAME = CHUNK + 1024
_NAME = re.compile(r"[0-9a-f]{32}")


class MediaFileError(BridgeError):
    """A media file that is missing, does not decrypt, or is truncated or changed."""


@dataclass(frozen=True, slots=True)
class StoredMedia:
    """What a finished file holds: its plaintext size and SHA-256 (hex)."""

    name: str
    size: int
    sha256: str


def new_name() -> str:
    return secrets.token_hex(16)


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def frame_aad(slug: str, name: str, index: int) -> bytes:
    """The associated data of a file's frame: binds it to its profile, file and place."""
    return f"wab-media-v1|{slug}|{name}|{index}".encode()


@contextlib.contextmanager
def _open_media(path: Path) -> Iterator[BinaryIO]:
    """The file opened for reading, past its magic; MediaFileError when it is missing or
    not one of ours."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise MediaFileError(f"{path}: missing") from None
    with fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise MediaFileError(f"{path}: not a whatsapp-bridge media file")
        yield fh


class SharedMedia(Protocol):
    """The copy of a profile's media files that replicas share (bridge/store/pg/media.py).
    Failures to reach it are StorageError; a file it does not hold is MediaFileError."""

    async def upload(self, files: MediaStore, name: str) -> None:
        """Store the finished local file `name`, whole or not at all."""

    async def fetch(self, files: MediaStore, name: str) -> None:
        """Write the shared file `name` into the local directory (atomically)."""

    async def recorded(self, name: str) -> None:
        """A committed record names `name` (a hint that lets an erasure free it at once)."""

    async def sweep(self) -> int:
        """Delete the shared files no message refers to; returns how many."""


class MediaStore:
    """The encrypted files of one profile in `directory` (its `media/`, or a backup's copy).
    `keyring` is asked for at each use: a key rotation changes the store's keyring while
    the bridge runs. With `shared` (replicas), the directory is a cache of the shared copy."""

    def __init__(
        self,
        directory: Path,
        keyring: Callable[[], Keyring],
        slug: str,
        shared: SharedMedia | None = None,
    ) -> None:
        self.directory = directory
        self._keyring = keyring
        self.slug = slug
        self.shared = shared
        self._fetching: dict[str, asyncio.Lock] = {}

    def path(self, name: str) -> Path:
        if not valid_name(name):
            raise MediaFileError(f"not a media file name: {name!r}")
        return self.directory / f"{name}{SUFFIX}"

    def names(self) -> list[str]:
        """The names of the files in the store (temp files excluded)."""
        try:
            entries = list(self.directory.iterdir())
        except FileNotFoundError:
            return []
        return [
            p.name[: -len(SUFFIX)]
            for p in entries
            if p.name.endswith(SUFFIX) and valid_name(p.name[: -len(SUFFIX)])
        ]

    # -- writing ----------------------------------------------------------------------------

    def writer(self, message_id: str, mime_type: str | None) -> MediaWriter:
        """A new file, written as the bytes come; it exists under its name once finished."""
        secure_dir(self.directory)
        return MediaWriter(self, new_name(), message_id, mime_type, self._keyring())

    # -- shared with other replicas ---------------------------------------------------------

    async def publish(self, name: str) -> None:
        """A finished file goes to the shared copy (before any record names it)."""
        if self.shared is not None:
            await self.shared.upload(self, name)

    async def recorded(self, name: str) -> None:
        if self.shared is not None:
            await self.shared.recorded(name)

    async def sweep_shared(self) -> int:
        return 0 if self.shared is None else await self.shared.sweep()

    async def ensure_local(self, name: str) -> None:
        """The file is in the local directory, fetched from the shared copy if it was not
        (one fetch per name at a time). Without a shared copy: nothing to do."""
        path = self.path(name)
        if self.shared is None or path.exists():
            return
        lock = self._fetching.setdefault(name, asyncio.Lock())
        try:
            async with lock:
                if not path.exists():
                    secure_dir(self.directory)
                    await self.shared.fetch(self, name)
        finally:
            if not lock.locked() and self._fetching.get(name) is lock:
                del self._fetching[name]

    async def load(
        self, name: str, message_id: str | None = None, max_bytes: int | None = None
    ) -> bytes:
        """`read`, off the event loop, fetching the file from the shared copy first if
        this replica lacks it; a cached copy that does not read is fetched again (it is
        replaced only by a whole copy: one the shared store lacks stays as it is)."""
        await self.ensure_local(name)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self._read_or_fail, name, message_id, max_bytes)
        except MediaFileError:
            if self.shared is None:
                raise
        await self.shared.fetch(self, name)
        return await loop.run_in_executor(None, self._read_or_fail, name, message_id, max_bytes)

    def _read_or_fail(self, name: str, message_id: str | None, max_bytes: int | None) -> bytes:
        """`read`, with what the disk refuses (permissions, an I/O error) as a MediaFileError:
        the callers leave out or give up on a file they cannot read, as on a damaged one,
        instead of crashing a reply, and every later one of its conversation, on it."""
        try:
            return self.read(name, message_id, max_bytes)
        except OSError as exc:
            raise MediaFileError(f"{self.path(name)}: {exc.strerror or exc}") from None

    def frames(self, name: str) -> Generator[bytes]:
        """The file's frames as sealed on disk, in order (not decrypted: `chunks` checks
        them when the file is read); MediaFileError for a file not framed as it should be."""
        path = self.path(name)
        with _open_media(path) as fh:
            index = 0
            while head := fh.read(LENGTH.size):
                (length,) = LENGTH.unpack(head) if len(head) == LENGTH.size else (0,)
                sealed = fh.read(length) if 0 < length <= MAX_FRAME else b""
                if not sealed or len(sealed) < length:
                    raise MediaFileError(f"{path}: damaged or truncated in frame {index}")
                yield sealed
                index += 1

    def installer(self, name: str) -> MediaInstaller:
        """Writes a file from its sealed frames (a copy fetched from the shared store)."""
        return MediaInstaller(self.path(name))

    # -- reading (blocking: call from a thread) ---------------------------------------------

    def chunks(self, name: str, message_id: str | None = None) -> Iterator[bytes]:
        """The file's plaintext, a chunk at a time, each authenticated; the last chunk is
        followed by the check of the end frame (size, digest, count). MediaFileError on any
        problem. `message_id`, when given, must be the message the file was written for."""
        path = self.path(name)
        keyring = self._keyring()
        with _open_media(path) as fh:
            digest = hashlib.sha256()
            size = 0
            index = 0
            while True:
                head = fh.read(LENGTH.size)
                if len(head) < LENGTH.size:
                    raise MediaFileError(f"{path}: truncated (no end frame)")
                (length,) = LENGTH.unpack(head)
                if not 0 < length <= MAX_FRAME:
                    raise MediaFileError(f"{path}: damaged frame {index}")
                sealed = fh.read(length)
                if len(sealed) < length:
                    raise MediaFileError(f"{path}: truncated in frame {index}")
                try:
                    plain = keyring.open(sealed, frame_aad(self.slug, name, index))
                except DecryptError as exc:
                    raise MediaFileError(
                        f"{path}: frame {index} does not decrypt ({exc})"
                    ) from None
                kind, body = plain[:1], plain[1:]
                if index == 0:
                    if kind != b"H":
                        raise MediaFileError(f"{path}: no header")
                    header = orjson.loads(body)
                    if message_id is not None and header.get("message") != message_id:
                        raise MediaFileError(f"{path}: written for another message")
                elif kind == b"C":
                    digest.update(body)
                    size += len(body)
                    yield body
                elif kind == b"E":
                    end = orjson.loads(body)
                    if (
                        end.get("size") != size
                        or end.get("sha256") != digest.hexdigest()
                        or end.get("chunks") != index - 1
                    ):
                        raise MediaFileError(f"{path}: content does not match its end frame")
                    if fh.read(1):
                        raise MediaFileError(f"{path}: unexpected bytes after the end")
                    return
                else:
                    raise MediaFileError(f"{path}: damaged frame {index}")
                index += 1

    def read(self, name: str, message_id: str | None = None, max_bytes: int | None = None) -> bytes:
        """The whole file; MediaFileError if it is larger than `max_bytes`."""
        parts: list[bytes] = []
        size = 0
        for chunk in self.chunks(name, message_id):
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise MediaFileError(f"media file {name} is larger than {max_bytes} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def header(self, name: str) -> dict[str, Any]:
        """The file's header frame: `{"v", "message", "mime_type"}`."""
        path = self.path(name)
        try:
            with path.open("rb") as fh:
                if fh.read(len(MAGIC)) != MAGIC:
                    raise MediaFileError(f"{path}: not a whatsapp-bridge media file")
                head = fh.read(LENGTH.size)
                (length,) = LENGTH.unpack(head) if len(head) == LENGTH.size else (0,)
                sealed = fh.read(length) if 0 < length <= MAX_FRAME else b""
        except FileNotFoundError:
            raise MediaFileError(f"{path}: missing") from None
        try:
            plain = self._keyring().open(sealed, frame_aad(self.slug, name, 0))
        except DecryptError as exc:
            raise MediaFileError(f"{path}: header does not decrypt ({exc})") from None
        if plain[:1] != b"H":
            raise MediaFileError(f"{path}: no header")
        header: dict[str, Any] = orjson.loads(plain[1:])
        return header

    def sealed_with(self, name: str) -> bytes:
        """The id of the key the file's header is sealed with (all its frames are)."""
        path = self.path(name)
        try:
            with path.open("rb") as fh:
                head = fh.read(len(MAGIC) + LENGTH.size + KEY_ID_BYTES)
        except FileNotFoundError:
            raise MediaFileError(f"{path}: missing") from None
        if not head.startswith(MAGIC) or len(head) < len(MAGIC) + LENGTH.size + KEY_ID_BYTES:
            raise MediaFileError(f"{path}: not a whatsapp-bridge media file")
        return head[len(MAGIC) + LENGTH.size :]

    def stale(self, name: str) -> bool:
        """Whether the file is sealed with another key than the keyring's active one."""
        return self.sealed_with(name) != self._keyring().active_id

    def reseal(self, name: str) -> None:
        """Rewrite a file under the keyring's active key (`rotate-key`), atomically: the
        old file is read (with whichever key of the ring sealed it) into a temp file that
        then replaces it."""
        header = self.header(name)
        writer = MediaWriter(
            self, name, str(header.get("message")), header.get("mime_type"), self._keyring()
        )
        try:
            for chunk in self.chunks(name):
                writer.size += len(chunk)
                writer.chunk_sync(chunk)
            writer.finish_sync(b"")
        except BaseException:
            writer.abort_sync()
            raise

    def check(self, name: str, message_id: str | None = None) -> StoredMedia:
        """Decrypt and check the whole file without keeping it."""
        digest = hashlib.sha256()
        size = 0
        for chunk in self.chunks(name, message_id):
            digest.update(chunk)
            size += len(chunk)
        return StoredMedia(name, size, digest.hexdigest())

    # -- removal ----------------------------------------------------------------------------

    def delete(self, name: str) -> int:
        """Remove a file (gone already is fine); returns the bytes freed."""
        path = self.path(name)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def sweep(self, keep: Callable[[str], bool]) -> list[tuple[str, int]]:
        """Delete every file `keep(name)` is false for, and the temp files of writers that
        died; returns (name, bytes) of each file deleted. The directory is fsynced after,
        so a deletion that was reported is not undone by a crash."""
        removed = []
        for name in self.names():
            if not keep(name):
                size = self.delete(name)
                removed.append((name, size))
        with contextlib.suppress(OSError):
            stale = remove_stale_temps(self.directory)
            removed.extend((p.name, size) for p, size in stale)
        if removed:
            with contextlib.suppress(OSError):
                fsync_dir(self.directory)
        return removed


class MediaInstaller:
    """A file rebuilt from its sealed frames: a temp file, renamed into place once whole
    (blocking: call from a thread, one step after the other)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Named apart from any other fetch of the same file (temp_path's form: a dead
        # process's leftover is still swept).
        self._tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.{os.getpid()}.tmp")
        self._fd = -1

    def add(self, frame: bytes) -> None:
        if self._fd < 0:
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(self._fd, 0o600)
            write_all(self._fd, MAGIC)
        write_all(self._fd, LENGTH.pack(len(frame)) + frame)

    def finish(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tmp.unlink(missing_ok=True)


class MediaWriter:
    """Streams one file into the store: `write` as bytes arrive, then `finish` (or `abort`).

    The file descriptor belongs to the writer's own thread: every step on it, the clean-up
    after a failure or a cancellation included, runs there in order."""

    def __init__(
        self,
        store: MediaStore,
        name: str,
        message_id: str,
        mime_type: str | None,
        keyring: Keyring,
    ) -> None:
        self.name = name
        self.path = store.path(name)
        self._tmp = temp_path(self.path)
        self._slug = store.slug
        self._keyring = keyring
        self._header = {"v": 1, "message": message_id, "mime_type": mime_type}
        self._buffer = bytearray()
        self._digest = hashlib.sha256()
        self._index = 0
        self.size = 0
        self._fd = -1
        self._thread_pool: ThreadPoolExecutor | None = None
        self._done = False

    @property
    def _thread(self) -> ThreadPoolExecutor:
        if self._thread_pool is None:
            self._thread_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="media")
        return self._thread_pool

    async def _run(self, job: Callable[[], None]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, job)

    def _frame(self, kind: bytes, body: bytes) -> bytes:
        sealed = self._keyring.seal(kind + body, frame_aad(self._slug, self.name, self._index))
        self._index += 1
        return LENGTH.pack(len(sealed)) + sealed

    def _open_sync(self) -> None:
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(self._fd, 0o600)
        write_all(self._fd, MAGIC + self._frame(b"H", orjson.dumps(self._header)))

    def chunk_sync(self, chunk: bytes) -> None:
        if self._fd < 0:
            self._open_sync()
        self._digest.update(chunk)
        write_all(self._fd, self._frame(b"C", chunk))

    def finish_sync(self, rest: bytes) -> str:
        if self._fd < 0:
            self._open_sync()
        if rest:
            self.chunk_sync(rest)
        sha256 = self._digest.hexdigest()
        end = {"size": self.size, "sha256": sha256, "chunks": self._index - 1}
        write_all(self._fd, self._frame(b"E", orjson.dumps(end)))
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)
        return sha256

    async def write(self, data: bytes) -> None:
        """Take the next bytes; a full chunk is sealed and written before this returns."""
        self.size += len(data)
        self._buffer += data
        while len(self._buffer) >= CHUNK:
            chunk = bytes(self._buffer[:CHUNK])
            del self._buffer[:CHUNK]
            await self._run(functools.partial(self.chunk_sync, chunk))

    async def finish(self) -> StoredMedia:
        """Seal the end frame, make the file durable under its name."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        loop = asyncio.get_running_loop()
        sha256 = await loop.run_in_executor(self._thread, self.finish_sync, rest)
        self._done = True
        self._thread.shutdown(wait=False)
        return StoredMedia(self.name, self.size, sha256)

    def abort_sync(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop the temp file, after any write still running; does not wait."""
        if self._done:
            return
        self._done = True
        if self._thread_pool is None:
            self.abort_sync()  # nothing was written: no thread to wait for
            return
        self._thread.submit(self.abort_sync)
        self._thread.shutdown(wait=False)
