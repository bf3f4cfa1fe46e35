"""Sends on two replicas when one loses its conversation lock mid-send (a database restart
ends the lock's session; its holder learns so only later): the reply goes out once."""

from __future__ import annotations

import time

from bridge.conversations import Message
from bridge.outbox import Outbox
from bridge.records import MessageAdded, OutboxDone, OutboxItem, OutboxQueued, StatusChanged
from bridge.store.pg.locks import ConversationLocks
from bridge.store.postgres import PostgresStore
from bridge.whatsapp.graph import GraphClient
from tests.conftest import eventually
from tests.fakes.graph import FakeGraph
from tests.store.conftest import OpenStore
from tests.store.test_pg_replies import lose_locks

KEY = "34600000001"


async def queue_reply(store: PostgresStore) -> str:
    """A user's message and its reply queued, as the replier of `store`'s replica does."""
    now = int(time.time() * 1000)
    asked = Message("user", "hola", now, id="wamid.in.1", type="text")
    reply_id = "out.a1"
    reply = Message(
        "assistant", "Echo: hola", now, id=reply_id, status="pending", reply_to=asked.id
    )
    await store.commit(
        [
            MessageAdded(KEY, asked, received_ms=now),
            MessageAdded(KEY, reply),
            OutboxQueued(OutboxItem(reply_id, KEY, KEY, reply.content, now)),
        ]
    )
    return reply_id


async def test_a_reply_another_replica_is_sending_is_not_sent_again_by_its_own(
    open_store: OpenStore, database_url: str, graph: tuple[FakeGraph, GraphClient]
) -> None:
    fake, client = graph
    a, b = await open_store(), await open_store()
    mine = Outbox(a, client, profile="a", base_delay=0.01, max_delay=0.05, reconcile_seconds=5)
    other = Outbox(b, client, profile="b", base_delay=0.01, max_delay=0.05, reconcile_seconds=0.2)
    try:
        mine.start()  # before the reply is queued: to `mine` it is its own
        await queue_reply(a)  # and not handed to it yet (its replier would notify it)
        await b.refresh()
        # b holds the conversation (a replica that took it over), and its send is in flight
        # when b's locks go with their connection.
        fake.answer_delay = 1.0
        other.start()
        await eventually(lambda: len(fake.sent) == 1, what="b's send")
        await lose_locks(b, database_url)
        # a owns the conversation now: its own reply is queued and unrecorded.
        mine.notify(KEY)
        locks = a.ownership
        assert isinstance(locks, ConversationLocks)
        await eventually(lambda: KEY in locks.held, what="a to own the conversation")
        await eventually(lambda: not a.state.outbox, timeout=10, what="the reply recorded")
        await eventually(lambda: not mine.busy_with(KEY), what="a's worker done")
        assert len(fake.sent) == 1, fake.sent
    finally:
        await mine.stop(1)
        await other.stop(1)
        await a.ownership.close()
        await b.ownership.close()


async def test_a_wait_for_a_confirmation_ends_when_another_replica_records_the_send(
    open_store: OpenStore, graph: tuple[FakeGraph, GraphClient]
) -> None:
    fake, client = graph
    a, b = await open_store(), await open_store()
    reply_id = await queue_reply(a)
    await b.refresh()
    # b starts with a's reply queued: it may have been on the wire, so b waits for Meta's
    # confirmation (up to 5 s) before sending it.
    other = Outbox(b, client, profile="b", base_delay=0.01, max_delay=0.05, reconcile_seconds=5)
    try:
        other.start()
        await eventually(lambda: other.busy_with(KEY), what="b's worker")
        # a did send it, and records that (a replica whose lock went with a database
        # restart while its send was in flight).
        await a.commit([StatusChanged(reply_id, "sent", None, ("wamid.A1",)), OutboxDone(reply_id)])
        await eventually(lambda: not other.busy_with(KEY), timeout=2, what="b to stop waiting")
        assert fake.sent == []
    finally:
        await other.stop(1)
        await b.ownership.close()
