"""`DurableStore.commit_decided`: an operator's write decides on the settled state and takes
the next place in the journal, while the webhook's commits go on around it."""

from __future__ import annotations

import asyncio

from bridge.records import ConversationDeleted, Record
from bridge.state import State
from tests.persistence.support import Opened, contents, user


async def test_a_deletion_takes_what_came_before_it_and_spares_what_arrives_meanwhile(
    opened: Opened,
) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    writing = asyncio.ensure_future(store.commit([user("1", 2)]))  # on its way to the disk
    await asyncio.sleep(0)
    seen: list[int] = []

    def decide(state: State) -> list[Record]:
        seen.append(len(state.conversations["1"].messages))
        deletion = state.deletion("1")
        assert deletion is not None
        return [deletion]

    deleting = asyncio.ensure_future(store.commit_decided(decide))
    await asyncio.sleep(0)  # the decision waits for `writing`: new commits wait for it
    arriving = asyncio.ensure_future(store.commit([user("1", 3)]))
    await asyncio.gather(writing, deleting, arriving)
    assert seen == [2]  # everything committed before the decision was applied when it ran
    assert contents(store.state, "1") == ["hello 3"]  # what arrived meanwhile survives
    await store.close()
    again = await opened()
    assert contents(again.state, "1") == ["hello 3"]  # and replay agrees


async def test_commits_go_on_once_the_decision_is_queued(opened: Opened) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    fsyncs = store.journal.fsyncs
    await asyncio.gather(
        store.commit_decided(lambda state: [ConversationDeleted("1", 1)]),
        *(store.commit([user(str(n), n)]) for n in range(2, 12)),
    )
    assert sorted(store.state.conversations) == sorted(str(n) for n in range(2, 12))
    # The waiting commits share fsyncs with the decision (group commit), not one each.
    assert store.journal.fsyncs - fsyncs <= 3
