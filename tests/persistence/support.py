"""Record factories and state comparisons shared by the persistence tests."""

from __future__ import annotations

import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bridge.conversations import Message
from bridge.records import MessageAdded, OutboxItem, OutboxQueued, Record
from bridge.state import State
from bridge.store.durable import DurableStore

NOW = int(time.time() * 1000)

Opened = Callable[..., Awaitable[DurableStore]]


def user(key: str, n: int, text: str | None = None, ts: int | None = None) -> MessageAdded:
    return MessageAdded(
        key,
        Message("user", text or f"hello {n}", ts or NOW + n, id=f"wamid.{key}.{n}", type="text"),
    )


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
