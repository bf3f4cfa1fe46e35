"""Replies on two replicas when one loses its conversation lock (a database restart ends the
lock's session, and its holder learns so only when it next uses the connection): the other
replica takes the conversation over while the first is still producing its reply. Each
message is still answered once, whichever of the two records its reply first."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from bridge.assistants.base import Assistant, TurnLike
from bridge.assistants.echo import EchoAssistant
from bridge.config import AssistantConfig
from bridge.conversations import Message
from bridge.records import MessageAdded
from bridge.replies import Replier
from bridge.store.pg.locks import ConversationLocks
from bridge.store.postgres import PostgresStore
from tests.conftest import eventually
from tests.store.conftest import OpenStore

KEY = "34600000001"


class HeldEcho(Assistant):
    """The echo assistant, whose first reply waits until the test lets it go."""

    kind = "held-echo"

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.go = asyncio.Event()

    async def reply(self, key: str, history: Sequence[TurnLike]) -> str:
        if not self.asked.is_set():
            self.asked.set()
            await self.go.wait()
        return await EchoAssistant().reply(key, history)


@pytest.fixture
async def replicas(open_store: OpenStore) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two replicas of one profile; their lock connections closed after (ProfileRuntime
    closes them so: the store does not own them)."""
    a, b = await open_store(), await open_store()
    yield a, b
    for store in (a, b):
        await store.ownership.close()


def replier(store: PostgresStore, assistant: Assistant) -> Replier:
    return Replier(store, assistant, AssistantConfig(), profile="t", on_queued=lambda key: None)


async def user(store: PostgresStore, n: int) -> None:
    now = int(time.time() * 1000)
    await store.commit(
        [MessageAdded(KEY, Message("user", f"m{n}", now, id=f"wamid.{n}", type="text"))]
    )


async def lose_locks(store: PostgresStore, database_url: str) -> None:
    """End the session holding `store`'s conversation locks, as a database restart does."""
    locks = store.ownership
    assert isinstance(locks, ConversationLocks) and locks.held
    pid = locks._conn.get_server_pid()
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        # The signal is sent; the locks go when the backend has exited.
        for _ in range(250):
            if not await conn.fetchval("SELECT count(*) FROM pg_locks WHERE pid = $1", pid):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the locks' backend did not exit")
    finally:
        await conn.close()


def answers(store: PostgresStore) -> Counter[str]:
    """How often each user message was answered, read from the replies' texts."""
    view = store.state.get(KEY)
    assert view is not None
    counted: Counter[str] = Counter()
    for message in view.messages:
        if message.role == "assistant":
            counted.update(message.content.removeprefix("Echo: ").split(" / "))
    return counted


async def replies_of(store: PostgresStore, count: int) -> None:
    async def have() -> bool:
        await store.refresh()
        view = store.state.get(KEY)
        return view is not None and sum(m.role == "assistant" for m in view.messages) >= count

    for _ in range(250):
        if await have():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {count} replies")


async def test_a_reply_decided_before_its_lock_was_lost_is_not_recorded_after_anothers(
    replicas: tuple[PostgresStore, PostgresStore], database_url: str
) -> None:
    a, b = replicas
    held = HeldEcho()
    first, second = replier(a, held), replier(b, EchoAssistant())
    await user(a, 1)
    first.enqueue(KEY, "wamid.1", KEY)
    await held.asked.wait()  # a holds the conversation and its assistant is thinking
    await lose_locks(a, database_url)
    await user(b, 2)
    second.enqueue(KEY, "wamid.2", KEY)
    await replies_of(b, 1)  # b took the conversation over and answered m1 and m2 at once
    held.go.set()
    await eventually(lambda: not first.busy, what="a's replier to finish")
    await a.refresh()
    assert answers(a) == {"m1": 1, "m2": 1}


async def test_a_reply_decided_before_anothers_was_recorded_is_decided_again(
    replicas: tuple[PostgresStore, PostgresStore], database_url: str
) -> None:
    a, b = replicas
    held_a, held_b = HeldEcho(), HeldEcho()
    first, second = replier(a, held_a), replier(b, held_b)
    await user(a, 1)
    first.enqueue(KEY, "wamid.1", KEY)
    await held_a.asked.wait()
    await lose_locks(a, database_url)
    await user(b, 2)
    second.enqueue(KEY, "wamid.2", KEY)
    await held_b.asked.wait()  # b read m1 and m2 as unanswered
    held_a.go.set()
    await replies_of(b, 1)  # a's reply to m1 went in first
    held_b.go.set()
    await eventually(lambda: not second.busy, what="b's replier to finish")
    await replies_of(a, 2)
    assert answers(a) == {"m1": 1, "m2": 1}
