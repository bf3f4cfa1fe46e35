"""`replace_database_state` (sessions-admin restore on the database) seen from a running
replica: it reloads at its next poll, and its takeover sweep looks at the restored
conversations (a reload applies no records, so it sees them only by noticing the new
state)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from bridge.conversations import Message
from bridge.modes import owed_answer
from bridge.outbox import Outbox
from bridge.persistence.keys import encode_key, new_key
from bridge.records import MessageAdded, OutboxItem, OutboxQueued
from bridge.replies import Replier
from bridge.state import State
from bridge.store.postgres import PostgresStore, replace_database_state
from bridge.takeover import Takeover
from tests.conftest import make_profile

KEY = encode_key(new_key())
ANA = "34600000001"


class Replies:
    """What the sweep hands over (the replier's and the outbox's side of it)."""

    def __init__(self) -> None:
        self.enqueued: list[tuple[str, str]] = []
        self.taken_over: list[str] = []

    def busy_with(self, key: str) -> bool:
        return False

    def enqueue(self, key: str, message_id: str, recipient: str) -> None:
        self.enqueued.append((key, message_id))

    def take_over(self, key: str) -> None:
        self.taken_over.append(key)


@pytest.fixture
async def replica(tmp_path: Path, database_url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(make_profile(tmp_path, key=KEY), database_url, poll_seconds=0.5)
    await store.open()
    yield store
    await store.ownership.close()  # the locks' own connection (ProfileRuntime closes it so)
    await store.close()


def archived_state() -> State:
    """A state with a user message nobody answered and a queued reply."""
    now = int(time.time() * 1000)
    state = State()
    state.apply(7, MessageAdded(ANA, Message("user", "hola", now, id="wamid.A"), "Ana", now))
    item = OutboxItem("out.1", "34600000002", "34600000002", "pendiente", now)
    state.apply(8, MessageAdded("34600000002", Message("assistant", "pendiente", now, id="out.1")))
    state.apply(9, OutboxQueued(item))
    return state


async def test_a_replica_reloads_a_restored_state_within_a_poll(
    replica: PostgresStore,
) -> None:
    await replica.commit([MessageAdded("34600000009", Message("user", "x", 1, id="wamid.X"))])
    replaced: list[State] = []

    async def keep(current: State) -> None:
        replaced.append(current)

    started = time.monotonic()
    upto = await replace_database_state(
        replica.profile, replica.database_url, archived_state(), keep
    )
    assert [sorted(s.conversations) for s in replaced] == [["34600000009"]]
    while sorted(replica.state.conversations) != [ANA, "34600000002"]:
        assert time.monotonic() - started < 1.5, "not reloaded within a poll"
        await asyncio.sleep(0.02)
    # The next commit numbers after everything the archive holds.
    await replica.commit([MessageAdded(ANA, Message("user", "otra", 2, id="wamid.B"))])
    conv = replica.state.conversations[ANA]
    assert [m.id for m in conv.messages] == ["wamid.A", "wamid.B"]
    assert conv.seq > upto > 9


async def test_the_takeover_sweep_looks_at_a_restored_state(replica: PostgresStore) -> None:
    handed = Replies()
    takeover = Takeover(
        replica,
        cast(Replier, handed),
        cast(Outbox, handed),
        owed_answer,
        profile="default",
        grace=0,
        outbox_grace=0,
    )

    async def keep(current: State) -> None:
        return None

    await replace_database_state(replica.profile, replica.database_url, archived_state(), keep)
    await replica.refresh()
    await takeover.sweep()
    assert handed.enqueued == [(ANA, "wamid.A")]
    assert handed.taken_over == ["34600000002"]
