"""Every Store implementation honours one contract; a new backend must pass these too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.conversations import Message
from bridge.persistence.keys import encode_key, new_key
from bridge.records import (
    ConversationDeleted,
    MessageAdded,
    OutboxDone,
    OutboxItem,
    OutboxQueued,
    Record,
    StatusChanged,
)
from bridge.runtime import durable_store, memory_store
from bridge.state import State
from bridge.store.base import Store
from bridge.store.durable import DurableStore
from bridge.store.postgres import PostgresStore
from tests.conftest import make_profile


@pytest.fixture(params=["memory", "durable", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    profile = make_profile(tmp_path, max_messages=3, key=encode_key(new_key()))
    if request.param == "postgres":
        opened: Store = PostgresStore(profile, request.getfixturevalue("database_url"))
    else:
        opened = (memory_store if request.param == "memory" else durable_store)(profile)
    await opened.open()
    yield opened
    await opened.close()


def msg(n: int, role: str = "user") -> Message:
    return Message(role, f"m{n}", 1_700_000_000_000 + n, id=f"w{n}")


async def test_committed_messages_are_visible_in_order(store: Store) -> None:
    await store.commit([MessageAdded("k", msg(1)), MessageAdded("k", msg(2))])
    view = store.state.get("k")
    assert view is not None and [m.content for m in view.messages] == ["m1", "m2"]
    assert store.state.has_seen("w1") and store.state.has_seen("w2")


async def test_cap_drops_the_oldest(store: Store) -> None:
    await store.commit([MessageAdded("k", msg(n)) for n in range(5)])
    view = store.state.get("k")
    assert view is not None and [m.content for m in view.messages] == ["m2", "m3", "m4"]


async def test_views_are_copies(store: Store) -> None:
    await store.commit([MessageAdded("k", msg(1))])
    view = store.state.get("k")
    await store.commit([MessageAdded("k", msg(2))])
    assert view is not None and len(view.messages) == 1


async def test_deleted_conversation_is_gone_but_ids_stay_seen(store: Store) -> None:
    await store.commit([MessageAdded("k", msg(1)), ConversationDeleted("k")])
    assert store.state.get("k") is None
    assert store.state.has_seen("w1")


async def test_outbox_keeps_insertion_order_until_done(store: Store) -> None:
    items = [OutboxItem(f"o{i}", "k", "k", f"t{i}", i) for i in range(3)]
    await store.commit([OutboxQueued(i) for i in items])
    await store.commit([OutboxDone("o1")])
    assert [i.id for i in store.state.pending_outbox()] == ["o0", "o2"]


async def test_outbox_is_indexed_per_conversation(store: Store) -> None:
    items = [OutboxItem(f"o{i}", key, key, f"t{i}", i) for i, key in enumerate("abab")]
    await store.commit([OutboxQueued(i) for i in items])
    assert store.state.outbox_keys() == ["a", "b"]
    assert store.state.next_reply("a") == items[0]
    await store.commit([OutboxDone("o0"), OutboxDone("o1")])
    assert store.state.next_reply("a") == items[2] and store.state.next_reply("b") == items[3]
    await store.commit([OutboxDone("o2")])
    assert store.state.next_reply("a") is None
    assert store.state.outbox_keys() == ["b"]


async def test_empty_commit_is_a_no_op(store: Store) -> None:
    seq = store.state.seq
    await store.commit([])
    assert store.state.seq == seq


async def test_a_decided_commit_sees_every_earlier_commit_and_is_applied(store: Store) -> None:
    earlier = asyncio.ensure_future(store.commit([MessageAdded("k", msg(1))]))
    await asyncio.sleep(0)  # queued; with a journal, not yet written
    seen: list[int] = []

    def decide(state: State) -> list[Record]:
        conv = state.conversations.get("k")
        seen.append(len(conv.messages) if conv else 0)
        return [MessageAdded("k", msg(2))]

    records = await store.commit_decided(decide)
    await earlier
    assert seen == [1] and len(records) == 1
    view = store.state.get("k")
    assert view is not None and [m.content for m in view.messages] == ["m1", "m2"]


async def test_a_conditional_commit_is_checked_after_every_earlier_commit(store: Store) -> None:
    def one_message(state: State) -> bool:
        conv = state.conversations.get("k")
        return conv is not None and len(conv.messages) == 1

    earlier = asyncio.ensure_future(store.commit([MessageAdded("k", msg(1))]))
    await asyncio.sleep(0)  # queued; with a journal, not yet written
    assert await store.commit_if([MessageAdded("k", msg(2))], one_message)
    await earlier
    # Now two: refused, and nothing of it committed.
    assert not await store.commit_if([MessageAdded("k", msg(3))], one_message)
    view = store.state.get("k")
    assert view is not None and [m.content for m in view.messages] == ["m1", "m2"]
    assert not store.state.has_seen("w3")


async def test_a_decision_that_raises_commits_nothing(store: Store) -> None:
    def decide(state: State) -> list[Record]:
        raise ValueError("no")

    with pytest.raises(ValueError):
        await store.commit_decided(decide)
    await store.commit([MessageAdded("k", msg(1))])  # and commits go on
    assert store.state.get("k") is not None


async def test_statuses_that_change_nothing_are_not_committed(store: Store) -> None:
    reply = Message("assistant", "r", 1_700_000_000_000, id="r1")
    await store.commit([MessageAdded("k", reply), StatusChanged("r1", "sent", None, ("wA",))])
    effective = [StatusChanged("wA", "delivered")]
    assert await store.commit_effective(effective) == 1
    view = store.state.get("k")
    assert view is not None and view.messages[-1].status == "delivered"
    noops = [
        StatusChanged("wA", "delivered"),  # redelivered
        StatusChanged("wA", "sent"),  # late: the reply is past it
        StatusChanged("wamid.not-ours", "read"),  # a message this store does not hold
    ]
    # A replica's memory may be behind the database (a reply another replica sent), so the
    # PostgreSQL store commits every status; the others leave out what changes nothing.
    shared = isinstance(store, PostgresStore)
    assert await store.commit_effective(noops) == (3 if shared else 0)
    assert await store.commit_effective([StatusChanged("wA", "read"), *noops]) == (
        4 if shared else 1
    )
    view = store.state.get("k")
    assert view is not None and view.messages[-1].status == "read"


async def test_statuses_are_all_committed_while_the_journal_is_busy(tmp_path: Path) -> None:
    """With a commit on its way into memory the state is not the one a status would be
    applied to: nothing is left out then."""
    store = durable_store(make_profile(tmp_path))
    await store.open()
    try:
        assert isinstance(store, DurableStore)
        fsyncs = store.journal.fsyncs
        assert await store.commit_effective([StatusChanged("wamid.x", "read")]) == 0
        assert store.journal.fsyncs == fsyncs  # nothing written
        pending = asyncio.ensure_future(store.commit([MessageAdded("k", msg(1))]))
        await asyncio.sleep(0)
        assert not store.journal.idle
        assert await store.commit_effective([StatusChanged("wamid.x", "read")]) == 1
        await pending
        assert store.journal.fsyncs > fsyncs
    finally:
        await store.close()
