"""Meta's confirmations of our sends as shared, durable state (OutboxConfirmed).

A status webhook naming a part of a queued reply (its biz_opaque_callback_data) is committed
with the status, before the 200: a crash right after does not lose it (Meta does not send it
again), and with replicas the outbox that waits for it sees it whichever replica received it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.conversations import Message
from bridge.ingest import Ingestor
from bridge.outbox import Outbox
from bridge.persistence.keys import encode_key, load_keyring, new_key
from bridge.persistence.snapshot import read_snapshot, write_snapshot
from bridge.records import (
    MessageAdded,
    OutboxConfirmed,
    OutboxDone,
    OutboxItem,
    OutboxQueued,
    Record,
    decode,
    encode,
)
from bridge.state import State
from bridge.store.base import Store
from bridge.store.memory import MemoryStore
from bridge.store.postgres import PostgresStore
from bridge.whatsapp.graph import GraphClient
from bridge.whatsapp.models import StatusUpdate
from tests.conftest import eventually, make_profile
from tests.fakes.graph import FakeGraph

ANA = "34600000001"
BEN = "34600000002"
KEY = encode_key(new_key())


def queued(n: int = 1, key: str = ANA) -> list[Record]:
    """A user's message and the reply queued for it, as the replier commits them."""
    now = int(time.time() * 1000)
    rid = f"reply-{n}"
    return [
        MessageAdded(key, Message("user", f"question {n}", now, id=f"wamid.in.{n}"), None, now),
        MessageAdded(key, Message("assistant", f"reply {n}", now, id=rid, status="pending")),
        OutboxQueued(OutboxItem(rid, key, key, f"reply {n}", now)),
    ]


def status(wamid: str, callback: str | None, name: str = "sent") -> StatusUpdate:
    return StatusUpdate(wamid, name, int(time.time() * 1000), ANA, callback_data=callback)


class CountingStore(MemoryStore):
    """A memory store that keeps every record committed to it."""

    def __init__(self) -> None:
        super().__init__(State())
        self.records: list[Record] = []

    async def commit(self, records: Any) -> None:
        self.records.extend(records)
        await super().commit(records)


def test_the_record_survives_the_journal_encoding() -> None:
    record = OutboxConfirmed("reply-1", 2, "wamid.X")
    assert decode(encode(7, record)) == (7, record)


async def test_a_status_naming_a_queued_reply_commits_its_confirmation() -> None:
    store = CountingStore()
    await store.commit(queued())
    ingestor = Ingestor(store)
    await ingestor.ingest([], [status("wamid.A", "reply-1:0")])
    assert store.state.confirmed == {"reply-1": {0: "wamid.A"}}
    # Its `delivered` and `read` (same part, same wamid), and a redelivery, add nothing.
    before = len(store.records)
    await ingestor.ingest([], [status("wamid.A", "reply-1:0", "delivered")])
    assert not any(isinstance(r, OutboxConfirmed) for r in store.records[before:])
    # A later part before an earlier one: each is kept under its own number.
    await ingestor.ingest([], [status("wamid.C", "reply-1:2")])
    assert store.state.confirmed == {"reply-1": {0: "wamid.A", 2: "wamid.C"}}
    # The reply done, its confirmations go; statuses of it, or of something not ours,
    # confirm nothing more.
    await store.commit([OutboxDone("reply-1")])
    assert store.state.confirmed == {}
    before = len(store.records)
    await ingestor.ingest([], [status("wamid.A", "reply-1:0", "read"), status("w", "x")])
    assert not any(isinstance(r, OutboxConfirmed) for r in store.records[before:])
    assert store.state.confirmed == {}


async def test_confirmations_are_kept_by_the_snapshot(tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    keyring = load_keyring(profile, create=True)
    state = State()
    for seq, record in enumerate([*queued(1), *queued(2), OutboxConfirmed("reply-1", 0, "w")]):
        state.apply(seq + 1, record)
    path = tmp_path / "snapshot.wab"
    await write_snapshot(path, state, keyring, profile.slug, 1)
    loaded = State()
    read_snapshot(path, keyring, profile.slug, loaded)
    assert loaded.confirmed == {"reply-1": {0: "w"}}
    assert list(loaded.outbox) == ["reply-1", "reply-2"]


# -- replicas: the confirmation lands on one, the reply waits on another ---------------------


@pytest.fixture
async def replicas(tmp_path: Path, database_url: str) -> AsyncIterator[list[PostgresStore]]:
    """Two stores of one profile on one database (two replicas' views)."""
    stores = [
        PostgresStore(make_profile(tmp_path, key=KEY), database_url, poll_seconds=0.05)
        for _ in range(2)
    ]
    for store in stores:
        await store.open()
    yield stores
    for store in stores:
        await store.ownership.close()  # the conversation locks' own connection
        await store.close()


async def drained(store: Store, timeout: float) -> float:
    """Seconds until the store's outbox is empty (fails after `timeout`)."""
    started = time.monotonic()
    await eventually(lambda: not store.state.outbox, timeout=timeout, what="the outbox empty")
    return time.monotonic() - started


async def test_a_confirmation_another_replica_committed_ends_a_taken_over_reply(
    replicas: list[PostgresStore], graph: tuple[FakeGraph, GraphClient]
) -> None:
    """Replies that replica B queued (and was sending when it died) come to A: one by the
    takeover sweep, one because A's replier, answering that user, hands A's outbox what is
    queued for them. Meta's status for one reached B before, for the other it reaches B
    while A waits: A records both sent and sends nothing."""
    a, b = replicas
    fake, client = graph
    outbox = Outbox(a, client, profile="test", reconcile_seconds=10.0)
    outbox.start()
    try:
        await b.commit([*queued(1), *queued(2, key=BEN)])
        await Ingestor(b).ingest([], [status("wamid.A", "reply-1:0")])
        await a.refresh()
        outbox.take_over(ANA)
        outbox.notify(BEN)
        await asyncio.sleep(0.3)
        await Ingestor(b).ingest([], [status("wamid.B", "reply-2:0")])
        took = await drained(a, timeout=8)
    finally:
        await outbox.stop()
    assert fake.sent == [], "sent again"
    assert took < 3, f"waited {took:.1f} s: the confirmation was not seen"
    for key, wamid in ((ANA, "wamid.A"), (BEN, "wamid.B")):
        view = a.state.get(key)
        assert view is not None
        assert (view.messages[-1].status, view.messages[-1].wamids) == ("sent", (wamid,))


async def test_a_replica_starting_treats_queued_replies_as_uncertain(
    replicas: list[PostgresStore], graph: tuple[FakeGraph, GraphClient]
) -> None:
    """A replica restarted after a kill finds its own replies queued, unowned (its locks
    died with it): one may have been on the wire, confirmed to the other replica."""
    a, b = replicas
    fake, client = graph
    await a.commit(queued(1))
    await Ingestor(b).ingest([], [status("wamid.A", "reply-1:0")])
    await a.refresh()
    outbox = Outbox(a, client, profile="test", reconcile_seconds=10.0)
    outbox.start()
    try:
        took = await drained(a, timeout=8)
    finally:
        await outbox.stop()
    assert fake.sent == [], "sent again"
    assert took < 3


async def test_a_taken_over_reply_nobody_confirms_is_sent_after_the_window(
    replicas: list[PostgresStore], graph: tuple[FakeGraph, GraphClient]
) -> None:
    a, _ = replicas
    fake, client = graph
    outbox = Outbox(a, client, profile="test", reconcile_seconds=0.5)
    outbox.start()
    try:
        await a.commit(queued(1))
        outbox.take_over(ANA)
        took = await drained(a, timeout=8)
    finally:
        await outbox.stop()
    assert len(fake.sent) == 1
    assert took >= 0.4, "sent without waiting for a confirmation"


async def test_replicas_wait_less_than_a_single_file_store(
    replicas: list[PostgresStore], graph: tuple[FakeGraph, GraphClient]
) -> None:
    """The default window: every reply taken over waits it (most in vain)."""
    _, client = graph
    shared = Outbox(replicas[0], client, profile="test")
    alone = Outbox(MemoryStore(State()), client, profile="test")
    assert shared._reconcile_seconds == 10.0
    assert alone._reconcile_seconds == 20.0
