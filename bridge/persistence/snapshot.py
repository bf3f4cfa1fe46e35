"""Snapshots: the whole state of a profile in one encrypted file, written without stalling.

File (format v3, written since this release): `WABSNAP3` magic, a 16-hex snapshot id, then
frames `length (u32 BE) | sealed record` (sealed as in crypto.py: key id | nonce | ciphertext
+ tag), each sealed with associated data `wab-snapshot-v3|<profile>|<snapshot id>|<index>`,
so a frame cannot be dropped, reordered or spliced in from another snapshot. Decrypted, a
frame is `flags (1 byte) | body`: flags bit 0 says the body is zstd-compressed
(compression.py; set per frame, when it pays); bit 1 (PACKED) says the body is conversations
in the packed layout below, else it is a JSON object. In this order:
- `{"v": 3, "profile", "segment", "created", "settings"?}`: the journal segment that
  continues it, and the store's settings (`{"max_messages", "retention_days"}`, absent in
  files of older versions); first, so the cap is known before any conversation is loaded;
- PACKED frames of conversations, as many as needed: for each conversation `head length
  (u32 BE) | head | packed length (u32 BE) | packed`, where head is the JSON `[key, {...}]`
  of the seed's conversation object without `messages` (`lastActivity`, `firstInteraction`,
  our optional fields) plus `count` (its messages) and `settled` (true when no user message
  waits for an answer), and packed is its messages, zstd-compressed with an index of the
  ids the store looks them up by (packed.py). Loading keeps that packed form and decodes a
  conversation only when it is touched; writing an untouched conversation copies it. The
  seed's sessions.json is `[[key, head + {"messages": decoded}], ...]` (`sessions-admin
  export` writes it);
- `{"seen": {wamid: ms, ...}}` (as many as needed), `{"identities": {user_id: key, ...}}`
  (business-scoped user ids linked to a phone's conversation; readers that predate it skip
  it), `{"erased_seen": {hash: ms, ...}}` (when there are any: the hashed ids of erased
  messages), `{"outbox": [[id, key, to, text, created_ms(, 1 when a send of it may have
  reached Meta unconfirmed, else 0 when a template follows)(, template)], ...]}` (a template
  item's `{"name", "language", "params"}`: absent in files of older versions);
- `{"end": true, "seq": n, "frames": count}`: a file without it is truncated.

Formats v1 and v2, written by earlier releases, are still read: `WABSNAP1` / `WABSNAP2`,
associated data `wab-snapshot-v1|...` / `-v2|...`, conversations as JSON frames
`{"conversations": [[key, {...}], ...]}` (the seed's format, decoded at once), `"v": 1` / `2`;
v1 frames are the JSON object alone, without flags. Backups are snapshots too, so archives of
any of these formats verify and restore.

It is a fuzzy checkpoint: conversations are serialized in slices of a few milliseconds while
traffic goes on. That is safe because the journal segment started just before the snapshot
holds every later change, and replay skips what a conversation already contains (per
conversation sequence numbers) or re-applies idempotent changes. The event loop only builds
and serializes each slice (an untouched conversation costs a head of a few dozen bytes);
compression, sealing, writing and fsync run in a thread of the snapshot's own, one slice
behind, so the disk, zstd and the cipher overlap with serialization.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import struct
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from bridge import seen as seen_set
from bridge.conversations import Conversation
from bridge.errors import CorruptStateError
from bridge.persistence import compression, packed
from bridge.persistence.crypto import DecryptError, Keyring
from bridge.persistence.files import fsync_dir, temp_path, write_all
from bridge.records import (
    OutboxItem,
    settings_from_dict,
    settings_to_dict,
    template_from_dict,
)
from bridge.state import State, packed_parts

T = TypeVar("T")

MAGIC_V1 = b"WABSNAP1"
MAGIC_V2 = b"WABSNAP2"
MAGIC = b"WABSNAP3"
VERSION = 3
VERSIONS = {MAGIC_V1: 1, MAGIC_V2: 2, MAGIC: VERSION}
ID_LEN = 16
LENGTH = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024
# What one frame's body may decompress to: far above any frame we write (a slice of a few
# milliseconds of serialization, 20,000 seen ids), far below what would exhaust memory.
MAX_PLAIN = 1024 * 1024 * 1024
PLAIN, ZSTD, PACKED = 0, 0x01, 0x02
KNOWN_FLAGS = ZSTD | PACKED
# Longest stretch of serialization (to_seed + orjson) on the loop between two yields. The
# slice size adapts to it, so it holds whatever the conversations' sizes.
SLICE_SECONDS = 0.003
# Bytes of packed conversations per frame: the cipher holds the GIL while it seals a frame
# (about 1 ms a MB here), so a frame of a hundred untouched conversations, which costs the
# loop almost nothing to gather, would otherwise stall it while sealed.
FRAME_BYTES = 256 * 1024
SEEN_PER_FRAME = seen_set.STEP  # ~2 ms to build and serialize
SYNC_EVERY = 8 * 1024 * 1024


def _aad(slug: str, snapshot_id: bytes, index: int, version: int = VERSION) -> bytes:
    tag = b"wab-snapshot-v%d|" % version
    return tag + slug.encode() + b"|" + snapshot_id + b"|" + str(index).encode()


def _frame_plaintext(body: bytes) -> bytes:
    """flags | body, compressed when that pays."""
    packed = compression.pack(body)
    return bytes((ZSTD,)) + packed if packed is not None else bytes((PLAIN,)) + body


# One conversation of a packed frame: its head (JSON), and either its packed messages as
# they are (a cold conversation: copied, nothing encoded) or its messages JSON and index JSON
# to pack (compressed in the writer thread).
_Entry = tuple[bytes, bytes | None, bytes, bytes]


def _packed_plaintext(entries: list[_Entry]) -> bytes:
    """PACKED | (head length | head | packed length | packed) for each conversation."""
    out = [bytes((PACKED,))]
    for head, cold, rows, index in entries:
        body = cold if cold is not None else packed.pack(rows, index)
        out.append(LENGTH.pack(len(head)) + head + LENGTH.pack(len(body)))
        out.append(body)
    return b"".join(out)


@dataclass
class SnapshotInfo:
    """What `read_snapshot` found besides the state: the format, and how well it packed."""

    version: int = 0
    frames: int = 0
    compressed_frames: int = 0
    file_bytes: int = 0
    json_bytes: int = 0  # the frames' JSON, uncompressed: what format v1 would have stored
    cold: int = 0  # conversations stored packed (format v3)

    def describe(self) -> str:
        """One phrase for `verify`: "format v2, zstd: 1.2 MB for 6.1 MB of JSON (0.20x)"."""
        if self.version == 1:
            return "format v1 (uncompressed, written before compression)"
        ratio = self.file_bytes / self.json_bytes if self.json_bytes else 1.0
        packed = f", {self.cold:,} conversations packed" if self.version >= 3 else ""
        return (
            f"format v{self.version}, zstd ({self.compressed_frames} of {self.frames} frames"
            f"{packed}): {self.file_bytes:,} bytes for {self.json_bytes:,} bytes of JSON "
            f"({ratio:.2f}x)"
        )


class _Writer:
    """Streams frames into a temp file; the file appears under its name only when complete.

    The file descriptor belongs to the writer's single thread: every job on it, including
    the clean-up after a failure or a cancellation, runs there in order, so the descriptor
    is never closed under a write still running (nor its number reused by another file).
    """

    def __init__(self, path: Path, keyring: Keyring, slug: str) -> None:
        self.path = path
        self.tmp = temp_path(path)
        self.keyring = keyring
        self.slug = slug
        self.id = os.urandom(ID_LEN // 2).hex().encode()
        self.index = 0
        self.size = 0
        self.unsynced = 0
        self.fd = -1
        self.pending: list[tuple[int, bytes | list[_Entry]]] = []
        self.inflight: asyncio.Future[None] | None = None
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"snapshot-{slug}")

    def add(self, record: dict[str, Any]) -> None:
        self.pending.append((self.index, orjson.dumps(record)))
        self.index += 1

    def add_conversations(self, entries: list[_Entry]) -> None:
        """A frame of conversations in the packed layout (see the module's docstring)."""
        self.pending.append((self.index, entries))
        self.index += 1

    def _open_sync(self) -> None:
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(self.fd, 0o600)  # a leftover temp file of an earlier run keeps its mode
        write_all(self.fd, MAGIC + self.id)
        self.size += len(MAGIC) + len(self.id)

    def _write_sync(self, records: list[tuple[int, bytes | list[_Entry]]], finish: bool) -> None:
        if self.fd < 0:
            self._open_sync()
        out = []
        for index, body in records:
            plaintext = (
                _frame_plaintext(body) if isinstance(body, bytes) else _packed_plaintext(body)
            )
            sealed = self.keyring.seal(plaintext, _aad(self.slug, self.id, index))
            out.append(LENGTH.pack(len(sealed)) + sealed)
        data = b"".join(out)
        write_all(self.fd, data)
        self.size += len(data)
        self.unsynced += len(data)
        if self.unsynced >= SYNC_EVERY and not finish:
            # Flush as we go: one fsync of hundreds of MB at the end would hold up the
            # journal's fsyncs (ext4 commits them together) and so every commit behind them.
            os.fdatasync(self.fd)
            self.unsynced = 0
        if finish:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, self.path)
            fsync_dir(self.path.parent)

    async def flush(self, finish: bool = False) -> None:
        """Hand the pending frames to the thread; waits for the previous hand-over only
        (or for everything, with `finish`)."""
        if self.inflight is not None:
            await self.inflight
        records, self.pending = self.pending, []
        loop = asyncio.get_running_loop()
        self.inflight = loop.run_in_executor(self.thread, self._write_sync, records, finish)
        if finish:
            await self.inflight
            self.thread.shutdown(wait=False)

    def _abort_sync(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Queue the clean-up behind any write still running; do not wait for it."""
        if self.inflight is not None:
            # Mark its outcome as seen: the error being handled is what the caller gets.
            self.inflight.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.thread.submit(self._abort_sync)
        self.thread.shutdown(wait=False)


Progress = Callable[[int, int], None]


def _outbox_entry(item: OutboxItem, state: State) -> list[Any]:
    """`[id, key, to, text, created_ms]`, then 1 when uncertain, then a template item's
    template (with 0 before it when certain): readers of older versions load entries
    without a template unchanged."""
    entry: list[Any] = [item.id, item.key, item.to, item.text, item.created_ms]
    uncertain = item.id in state.uncertain
    if uncertain or item.template is not None:
        entry.append(1 if uncertain else 0)
    if item.template is not None:
        entry.append(item.template.to_dict())
    return entry


async def write_snapshot(
    path: Path,
    state: State,
    keyring: Keyring,
    slug: str,
    segment: int,
    progress: Progress | None = None,
) -> int:
    """Write `state` to `path` atomically, yielding to the event loop every few ms.

    `progress(done, total)` is called after each slice of conversations (for a terminal)."""
    writer = _Writer(path, keyring, slug)
    try:
        head: dict[str, Any] = {
            "v": VERSION,
            "profile": slug,
            "segment": segment,
            "created": int(time.time() * 1000),
        }
        if state.settings is not None:
            head["settings"] = settings_to_dict(state.settings)
        writer.add(head)
        keys = list(state.conversations)
        per_slice = 16  # conversations per slice; adapted to SLICE_SECONDS as we go
        done = 0
        while done < len(keys):
            started = time.perf_counter()
            entries: list[_Entry] = []
            size = 0
            for key in keys[done : done + per_slice]:
                done += 1
                conv = state.conversations.get(key)
                if conv is None:
                    continue  # deleted while we were yielding
                cold = conv.cold
                if cold is not None:
                    line = orjson.dumps([key, conv.head(conv.settled)])
                    entries.append((line, cold, b"", b""))
                    size += len(cold)
                else:
                    rows, index = packed_parts(conv)
                    line = orjson.dumps([key, conv.head(conv.unanswered() is None)])
                    entries.append((line, None, rows, index))
                    size += len(rows) // 4  # about what it compresses to
                if size >= FRAME_BYTES or time.perf_counter() - started >= SLICE_SECONDS:
                    break  # a run of touched conversations after many untouched ones
            writer.add_conversations(entries)
            elapsed = time.perf_counter() - started
            per_slice = max(
                1, min(per_slice * 2, int(per_slice * SLICE_SECONDS / max(elapsed, 1e-6)))
            )
            await writer.flush()
            await asyncio.sleep(0)  # flush may not have suspended; let requests in
            if progress:
                progress(min(done, len(keys)), len(keys))
        if progress and not keys:
            progress(0, 0)
        # Cut from the seen-set's day buckets a step at a time (bridge/seen.py): no step
        # grows with the set, and ids arriving meanwhile are in the journal.
        for seen in state.seen.frames():
            writer.add({"seen": seen})
            await writer.flush()
            await asyncio.sleep(0)
        if state.aliases:
            writer.add({"identities": dict(state.aliases)})
        if state.erased_seen:
            writer.add({"erased_seen": dict(state.erased_seen)})
        writer.add({"outbox": [_outbox_entry(i, state) for i in state.outbox.values()]})
        if state.confirmed:
            # After the outbox (a confirmation is kept only for a queued reply); readers of
            # older versions skip a frame they do not know.
            confirmed = {i: sorted(parts.items()) for i, parts in state.confirmed.items()}
            writer.add({"confirmed": confirmed})
        writer.add({"end": True, "seq": state.seq, "frames": writer.index + 1})
        await writer.flush(finish=True)
    except BaseException:
        writer.abort()
        raise
    return writer.size


@dataclass(frozen=True, slots=True)
class _Frame:
    index: int
    end: int  # the byte after it
    body: bytes | memoryview  # its JSON, or its packed conversations
    compressed: bool
    packed: bool = False


def _packed_entries(body: bytes | memoryview) -> Iterator[tuple[Any, bytes]]:
    """(head, packed messages) of each conversation of a packed frame."""
    view, offset = memoryview(body), 0
    while offset < len(view):
        if len(view) - offset < LENGTH.size:
            raise ValueError(f"packed entry cut short at byte {offset}")
        length = LENGTH.unpack_from(view, offset)[0]
        offset += LENGTH.size
        head = orjson.loads(view[offset : offset + length])
        offset += length
        if len(view) - offset < LENGTH.size:
            raise ValueError(f"packed entry cut short at byte {offset}")
        length = LENGTH.unpack_from(view, offset)[0]
        offset += LENGTH.size
        if offset + length > len(view):
            raise ValueError(f"packed entry cut short at byte {offset}")
        # A copy: a view would keep the whole frame (and the file's bytes) alive.
        yield head, bytes(view[offset : offset + length])
        offset += length


def _frame_spans(data: bytes) -> Iterator[tuple[int, int, int] | str]:
    """(index, offset, length) of each frame in turn; a problem with the bytes where the
    next frame should be ends it, as a message."""
    offset, index = len(MAGIC) + ID_LEN, 0
    while offset < len(data):
        if len(data) - offset < LENGTH.size:
            yield f"truncated at byte {offset}"
            return
        length = LENGTH.unpack_from(data, offset)[0]
        if length == 0 or length > MAX_FRAME or offset + LENGTH.size + length > len(data):
            yield f"truncated or damaged record at byte {offset}"
            return
        yield index, offset, length
        offset += LENGTH.size + length
        index += 1


def _decoded(
    items: Iterator[T], decode: Callable[[T], _Frame], ahead: int = 2
) -> Generator[_Frame, None, None]:
    """`decode` each item in a thread of its own, up to `ahead` items ahead of the caller.

    Decryption and decompression release the GIL, so at start-up they run on the second
    core while this thread turns the previous frame's JSON into conversations; a few frames
    ahead at most, so memory holds only those. An exception reaches the caller at the frame
    that raised it, in order."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-read") as pool:
        pending = collections.deque(
            pool.submit(decode, item) for item in itertools.islice(items, ahead)
        )
        try:
            while pending:
                frame = pending.popleft().result()
                for item in itertools.islice(items, 1):
                    pending.append(pool.submit(decode, item))
                yield frame
        finally:
            for future in pending:
                future.cancel()


def read_snapshot(
    path: Path, keyring: Keyring, slug: str, state: State, info: SnapshotInfo | None = None
) -> int:
    """Load a snapshot (either format) into an empty `state`; returns the journal segment
    that continues it. `info`, when given, is filled with the format and sizes.

    Any problem (not a snapshot, wrong key, changed or missing bytes, a body that does not
    decompress) is a CorruptStateError naming the file; the file itself is never touched.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptStateError(f"{path}: cannot read snapshot: {exc.strerror}") from None
    version = VERSIONS.get(data[: len(MAGIC)])
    if version is None or len(data) < len(MAGIC) + ID_LEN:
        raise CorruptStateError(f"{path}: not a whatsapp-bridge snapshot")
    info = info if info is not None else SnapshotInfo()
    info.version, info.file_bytes = version, len(data)
    info.frames = info.compressed_frames = info.json_bytes = info.cold = 0  # may read again
    snapshot_id = data[len(MAGIC) : len(MAGIC) + ID_LEN]

    def decode(span: tuple[int, int, int] | str) -> _Frame:
        """Runs in the reading thread: one frame's JSON, decrypted and decompressed."""
        if isinstance(span, str):
            raise CorruptStateError(f"{path}: {span}")
        index, offset, length = span
        sealed = data[offset + LENGTH.size : offset + LENGTH.size + length]
        compressed = is_packed = False
        try:
            plaintext = keyring.open(sealed, _aad(slug, snapshot_id, index, version))
            body: bytes | memoryview = plaintext
            if version >= 2:
                flags = plaintext[0] if plaintext else PLAIN
                if not plaintext or flags & ~KNOWN_FLAGS:
                    raise CorruptStateError(
                        f"{path}: record {index} has flags {flags:#04x}, unknown to this "
                        "version (a newer bridge?)"
                    )
                body = memoryview(plaintext)[1:]
                if flags & ZSTD:
                    body, compressed = compression.unpack(body, MAX_PLAIN), True
                is_packed = bool(flags & PACKED)
                if is_packed and version < 3:
                    raise CorruptStateError(
                        f"{path}: record {index} is packed, unknown to format v{version}"
                    )
        except DecryptError as exc:
            raise CorruptStateError(f"{path}: record {index} does not decrypt ({exc})") from None
        except compression.DecompressError as exc:
            raise CorruptStateError(f"{path}: record {index}: {exc}") from None
        return _Frame(index, offset + LENGTH.size + length, body, compressed, is_packed)

    offset = len(MAGIC) + ID_LEN
    segment: int | None = None
    ended = False
    frames = _decoded(_frame_spans(data), decode)
    try:
        for frame in frames:
            index = frame.index
            info.compressed_frames += frame.compressed
            if frame.packed:
                if index == 0:
                    raise CorruptStateError(f"{path}: snapshot of another profile or format")
                try:
                    for head, cold in _packed_entries(frame.body):
                        key, fields = head
                        conv = Conversation.frozen(str(key), fields, cold, state.max_messages)
                        state.add_conversation(conv)
                        info.json_bytes += len(orjson.dumps(head)) + packed.plain_size(cold)
                        info.cold += 1
                except (AttributeError, KeyError, TypeError, ValueError) as exc:
                    raise CorruptStateError(
                        f"{path}: record {index} is malformed ({exc!r})"
                    ) from None
                offset = frame.end
                info.frames = index + 1
                continue
            info.json_bytes += len(frame.body)
            try:
                record = orjson.loads(frame.body)
            except orjson.JSONDecodeError:
                raise CorruptStateError(f"{path}: record {index} is not valid JSON") from None
            try:
                if index == 0:
                    if record.get("v") != version or record.get("profile") != slug:
                        raise CorruptStateError(f"{path}: snapshot of another profile or format")
                    segment = int(record["segment"])
                    if "settings" in record:
                        state.use_settings(settings_from_dict(record["settings"]))
                elif "conversations" in record:
                    for key, seed in record["conversations"]:
                        state.add_conversation(
                            Conversation.from_seed(str(key), seed, state.max_messages)
                        )
                elif "seen" in record:
                    state.seen.update({str(k): int(v) for k, v in record["seen"].items()})
                elif "identities" in record:
                    state.aliases.update({str(k): str(v) for k, v in record["identities"].items()})
                elif "erased_seen" in record:
                    state.erased_seen.update(
                        {str(k): int(v) for k, v in record["erased_seen"].items()}
                    )
                elif "outbox" in record:
                    for item_id, key, to, text, created, *rest in record["outbox"]:
                        template = template_from_dict(rest[1]) if len(rest) > 1 else None
                        state.queue_reply(
                            OutboxItem(item_id, key, to, text, int(created), template)
                        )
                        if rest and rest[0]:
                            state.uncertain.add(item_id)
                elif "confirmed" in record:
                    for item_id, parts in record["confirmed"].items():
                        if item_id in state.outbox:
                            state.confirmed[item_id] = {int(p): str(w) for p, w in parts}
                elif record.get("end") is True:
                    if int(record["frames"]) != index + 1:
                        raise CorruptStateError(f"{path}: record count does not match")
                    state.seq = max(state.seq, int(record["seq"]))
                    ended = True
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise CorruptStateError(f"{path}: record {index} is malformed ({exc!r})") from None
            offset = frame.end
            info.frames = index + 1
            if ended:
                break
    finally:
        frames.close()  # stops the reading thread
    if not ended or segment is None:
        raise CorruptStateError(f"{path}: truncated (no end record)")
    if offset != len(data):
        raise CorruptStateError(f"{path}: {len(data) - offset} unexpected bytes after the end")
    return segment
