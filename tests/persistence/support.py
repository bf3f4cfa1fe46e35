"""Record factories and state comparisons shared by the persistence tests."""

from __future__ import annotations

import base64
import random
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from bridge.conversations import Message
from bridge.persistence import layout, packed
from bridge.persistence.crypto import Keyring
from bridge.records import MessageAdded, OutboxItem, OutboxQueued, Record, encode
from bridge.state import State
from bridge.store.durable import DurableStore

NOW = int(time.time() * 1000)

Opened = Callable[..., Awaitable[DurableStore]]


def user(key: str, n: int, text: str | None = None, ts: int | None = None) -> MessageAdded:
    return MessageAdded(
        key,
        Message("user", text or f"hello {n}", ts or NOW + n, id=f"wamid.{key}.{n}", type="text"),
    )


def noise(n: int, chars: int = 200) -> str:
    """Text that zstd cannot shrink much (random base64), for tests about frames that span
    several disk blocks: chat-like text would compress to a fraction of a block."""
    return base64.b64encode(random.Random(n).randbytes(chars * 3 // 4)).decode()


def reply(key: str, n: int) -> list[Record]:
    rid = f"out.{key}.{n}"
    return [
        MessageAdded(key, Message("assistant", f"reply {n}", NOW + n, id=rid, status="pending")),
        OutboxQueued(OutboxItem(rid, key, key, f"reply {n}", NOW + n)),
    ]


def snapshot_of(state: State) -> dict[str, Any]:
    """Everything a restart must give back, in comparable form."""
    return {
        "conversations": {k: c.to_seed() for k, c in state.conversations.items()},
        "seen": dict(state.seen),
        "outbox": dict(state.outbox),
    }


async def crash(store: DurableStore) -> None:
    """What kill -9 leaves: the journal file as written, the lock released by the kernel."""
    journal = store.journal
    await journal.close()
    store._journal = None  # close() must not snapshot: a crash doesn't
    store._lock.release(clean=False)


def split_frames(path: Path) -> list[bytes]:
    """A journal segment cut into its frames (header included)."""
    data = path.read_bytes()
    frames, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        frames.append(data[offset : offset + 8 + length])
        offset += 8 + length
    return frames


def v2_frame(keyring: Keyring, slug: str, segment: int, offset: int, payload: bytes) -> bytes:
    """One frame exactly as the previous release (journal v2) wrote it: one record, a header
    CRC over the length alone, AAD tag `wab-journal-v2`. Kept here, independent of the
    production code, so the upgrade path is tested against the old format itself."""
    aad = b"wab-journal-v2|%s|%d|%d" % (slug.encode(), segment, offset)
    sealed = keyring.seal(payload, aad)
    size = len(sealed).to_bytes(4, "big")
    return size + zlib.crc32(size).to_bytes(4, "big") + sealed


def write_v2_segment(
    path: Path, keyring: Keyring, slug: str, segment: int, records: Sequence[tuple[int, Record]]
) -> None:
    """Append `records` (seq, record) to a segment as the v2 journal did: a frame each."""
    with path.open("ab") as fh:
        offset = fh.tell()
        for seq, record in records:
            data = v2_frame(keyring, slug, segment, offset, encode(seq, record))
            fh.write(data)
            offset += len(data)


def segment_file(store: DurableStore, segment: int) -> Path:
    return layout.journal_dir(store.profile.state_dir) / f"{segment:08d}.wal"


def contents(state: State, key: str = "1") -> list[str]:
    conv = state.conversations.get(key)
    return [m.content for m in conv.messages] if conv else []


def unpacked_conversations(body: bytes) -> list[list[Any]]:
    """The `[key, seed object]` pairs of a packed snapshot frame (format v3, flag 0x02), by
    hand as snapshot.py's docstring describes them: each entry is `head length | head JSON |
    packed length | packed`, the head the seed object without its messages (plus `count`,
    and `settled`), the packed part zstd(index length | index JSON | messages JSON)."""
    out, offset = [], 0
    while offset < len(body):
        (length,) = struct.unpack_from(">I", body, offset)
        key, fields = orjson.loads(body[offset + 4 : offset + 4 + length])
        offset += 4 + length
        (length,) = struct.unpack_from(">I", body, offset)
        messages = packed.messages(body[offset + 4 : offset + 4 + length])
        offset += 4 + length
        assert fields.pop("count") == len(messages)
        fields.pop("settled", None)
        out.append([key, {"messages": messages, **fields}])
    return out
