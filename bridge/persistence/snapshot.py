"""Snapshots: the whole state of a profile in one encrypted file, written without stalling.

File: `WABSNAP1` magic, a 16-hex snapshot id, then frames `length (4) | sealed record`, each
sealed with associated data `wab-snapshot-v1|<profile>|<snapshot id>|<index>`, so a frame
cannot be dropped, reordered or spliced in from another snapshot. Decrypted, the frames are
JSON objects in this order:
- `{"v": 1, "profile", "segment", "created"}`: the journal segment that continues it;
- `{"conversations": [[key, {...}], ...]}`, as many as needed: concatenated, these lists are
  the seed's sessions.json format (`messages`, `lastActivity`, `firstInteraction`, plus our
  optional fields);
- `{"seen": {wamid: ms, ...}}`, `{"outbox": [[id, key, to, text, created_ms], ...]}`;
- `{"end": true, "seq": n, "frames": count}`: a file without it is truncated.

It is a fuzzy checkpoint: conversations are serialized in slices of a few milliseconds while
traffic goes on. That is safe because the journal segment started just before the snapshot
holds every later change, and replay skips what a conversation already contains (per
conversation sequence numbers) or re-applies idempotent changes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bridge.conversations import Conversation
from bridge.errors import CorruptStateError
from bridge.persistence.crypto import DecryptError, Keyring
from bridge.persistence.files import fsync_dir, write_all
from bridge.persistence.journal import HEADER, MAX_FRAME
from bridge.records import OutboxItem
from bridge.state import State

MAGIC = b"WABSNAP1"
ID_LEN = 16
SLICE_SECONDS = 0.004  # longest stretch of serialization between two yields to the loop
SEEN_PER_FRAME = 20_000


def _aad(slug: str, snapshot_id: bytes, index: int) -> bytes:
    return b"wab-snapshot-v1|" + slug.encode() + b"|" + snapshot_id + b"|" + str(index).encode()


class _Writer:
    """Streams frames into a temp file; the file appears under its name only when complete."""

    def __init__(self, path: Path, keyring: Keyring, slug: str) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.keyring = keyring
        self.slug = slug
        self.id = os.urandom(ID_LEN // 2).hex().encode()
        self.index = 0
        self.size = 0
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.pending: list[bytes] = [MAGIC + self.id]

    def add(self, record: dict[str, Any]) -> None:
        sealed = self.keyring.seal(orjson.dumps(record), _aad(self.slug, self.id, self.index))
        self.pending.append(HEADER.pack(len(sealed)) + sealed)
        self.index += 1

    def _flush_sync(self, data: bytes, finish: bool) -> None:
        write_all(self.fd, data)
        if finish:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, self.path)
            fsync_dir(self.path.parent)

    async def flush(self, finish: bool = False) -> None:
        data = b"".join(self.pending)
        self.pending.clear()
        self.size += len(data)
        await asyncio.get_running_loop().run_in_executor(None, self._flush_sync, data, finish)

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.tmp.unlink(missing_ok=True)


Progress = Callable[[int, int], None]


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
        writer.add(
            {"v": 1, "profile": slug, "segment": segment, "created": int(time.time() * 1000)}
        )
        batch: list[list[Any]] = []
        started = time.monotonic()
        keys = list(state.conversations)
        for done, key in enumerate(keys, 1):
            conv = state.conversations.get(key)
            if conv is None:
                continue  # deleted while we were yielding
            batch.append([key, conv.to_seed()])
            if time.monotonic() - started > SLICE_SECONDS:
                writer.add({"conversations": batch})
                batch = []
                await writer.flush()
                if progress:
                    progress(done, len(keys))
                started = time.monotonic()
        if progress:
            progress(len(keys), len(keys))
        if batch:
            writer.add({"conversations": batch})
        seen = list(state.seen.items())
        for start in range(0, len(seen), SEEN_PER_FRAME):
            writer.add({"seen": dict(seen[start : start + SEEN_PER_FRAME])})
            await writer.flush()
        writer.add(
            {"outbox": [[i.id, i.key, i.to, i.text, i.created_ms] for i in state.outbox.values()]}
        )
        writer.add({"end": True, "seq": state.seq, "frames": writer.index + 1})
        await writer.flush(finish=True)
    except BaseException:
        writer.abort()
        raise
    return writer.size


def read_snapshot(path: Path, keyring: Keyring, slug: str, state: State) -> int:
    """Load a snapshot into an empty `state`; returns the journal segment that continues it.

    Any problem (not a snapshot, wrong key, changed or missing bytes) is a CorruptStateError
    naming the file; the file itself is never touched.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptStateError(f"{path}: cannot read snapshot: {exc.strerror}") from None
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + ID_LEN:
        raise CorruptStateError(f"{path}: not a whatsapp-bridge snapshot")
    snapshot_id = data[len(MAGIC) : len(MAGIC) + ID_LEN]
    offset = len(MAGIC) + ID_LEN
    index = 0
    segment: int | None = None
    ended = False
    while offset < len(data) and not ended:
        if len(data) - offset < HEADER.size:
            raise CorruptStateError(f"{path}: truncated at byte {offset}")
        length = HEADER.unpack_from(data, offset)[0]
        if length == 0 or length > MAX_FRAME or offset + HEADER.size + length > len(data):
            raise CorruptStateError(f"{path}: truncated or damaged record at byte {offset}")
        sealed = data[offset + HEADER.size : offset + HEADER.size + length]
        try:
            record = orjson.loads(keyring.open(sealed, _aad(slug, snapshot_id, index)))
        except DecryptError as exc:
            raise CorruptStateError(f"{path}: record {index} does not decrypt ({exc})") from None
        except orjson.JSONDecodeError:
            raise CorruptStateError(f"{path}: record {index} is not valid JSON") from None
        try:
            if index == 0:
                if record.get("v") != 1 or record.get("profile") != slug:
                    raise CorruptStateError(f"{path}: snapshot of another profile or format")
                segment = int(record["segment"])
            elif "conversations" in record:
                for key, seed in record["conversations"]:
                    state.add_conversation(
                        Conversation.from_seed(str(key), seed, state.max_messages)
                    )
            elif "seen" in record:
                state.seen.update({str(k): int(v) for k, v in record["seen"].items()})
            elif "outbox" in record:
                for item_id, key, to, text, created in record["outbox"]:
                    state.outbox[item_id] = OutboxItem(item_id, key, to, text, int(created))
            elif record.get("end") is True:
                if int(record["frames"]) != index + 1:
                    raise CorruptStateError(f"{path}: record count does not match")
                state.seq = max(state.seq, int(record["seq"]))
                ended = True
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStateError(f"{path}: record {index} is malformed ({exc!r})") from None
        offset += HEADER.size + length
        index += 1
    if not ended or segment is None:
        raise CorruptStateError(f"{path}: truncated (no end record)")
    return segment
