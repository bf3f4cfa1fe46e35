"""The PostgreSQL store against a real server: replicas sharing a profile, keys, schema, outages."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import asyncpg
import pytest

from bridge.conversations import OPTED_OUT, ConversationMode, Message
from bridge.errors import ConfigError, StorageError
from bridge.operators import ModeConflict, Operators, WindowClosed
from bridge.persistence.keys import encode_key, new_key
from bridge.records import (
    ConversationDeleted,
    MessageAdded,
    ModeChanged,
    OutboxItem,
    OutboxQueued,
    Record,
    StatusChanged,
)
from bridge.store.pg.schema import latest_version
from bridge.store.postgres import PostgresStore
from tests.conftest import make_profile
from tests.pg import PostgresServer
from tests.store.conftest import OpenStore


def user(n: int, key: str = "34600000001", text: str = "hola") -> MessageAdded:
    now = int(time.time() * 1000)  # received now: retention keeps it
    return MessageAdded(key, Message("user", f"{text} {n}", now, id=f"wamid.{n}"), "Ana", now)


async def test_a_replica_sees_what_another_committed(open_store: OpenStore) -> None:
    a, b = await open_store(), await open_store()
    await a.commit([user(1), user(2)])
    await b.refresh()
    view = b.state.get("34600000001")
    assert view is not None and [m.content for m in view.messages] == ["hola 1", "hola 2"]
    # ... and its own commit brings in anything it had not seen yet, in order.
    await a.commit([user(3)])
    await b.commit([user(4)])
    view = b.state.get("34600000001")
    assert view is not None and [m.id for m in view.messages] == [
        f"wamid.{n}" for n in (1, 2, 3, 4)
    ]


async def test_a_follower_catches_up_by_itself(open_store: OpenStore) -> None:
    a, b = await open_store(), await open_store()
    await a.commit([user(1)])
    for _ in range(100):
        if b.state.get("34600000001") is not None:
            break
        await asyncio.sleep(0.02)
    assert b.state.has_seen("wamid.1")


async def test_the_same_message_at_two_replicas_at_once_is_recorded_once(
    open_store: OpenStore,
) -> None:
    a, b = await open_store(), await open_store()
    for n in range(30):
        results = await asyncio.gather(a.commit_new([user(n)]), b.commit_new([user(n)]))
        assert sorted(len(r) for r in results) == [0, 1], results
    await a.refresh()
    view = a.state.get("34600000001")
    assert view is not None and len(view.messages) == 30
    assert len({m.id for m in view.messages}) == 30


async def test_duplicates_within_one_group_commit_are_left_out(open_store: OpenStore) -> None:
    a = await open_store()
    first, second = await asyncio.gather(a.commit_new([user(1)]), a.commit_new([user(1)]))
    assert first == frozenset() and second == {"wamid.1"}
    view = a.state.get("34600000001")
    assert view is not None and len(view.messages) == 1


async def test_a_reopened_store_holds_everything_committed(open_store: OpenStore) -> None:
    a = await open_store()
    item = OutboxItem("out.1", "34600000001", "34600000001", "respuesta", 1)
    await a.commit([user(1), user(2), OutboxQueued(item), ConversationDeleted("x")])
    await a.close()
    b = await open_store()
    assert b.state.pending_outbox() == [item]
    assert b.state.has_seen("wamid.2")
    assert b.state.seq == a.state.seq


async def test_a_replica_with_another_key_refuses_to_start(
    open_store: OpenStore, tmp_path: Path
) -> None:
    await open_store()
    with pytest.raises(ConfigError, match="does not match the database"):
        await open_store(make_profile(tmp_path, key=encode_key(new_key())))


async def test_no_key_is_ever_generated_in_postgres_mode(tmp_path: Path, database_url: str) -> None:
    store = PostgresStore(make_profile(tmp_path), database_url)
    with pytest.raises(ConfigError, match="needs a configured encryption key"):
        await store.open()
    assert not (tmp_path / "profiles" / "default" / "key").exists()


async def test_an_older_replica_refuses_a_newer_schema(
    open_store: OpenStore, database_url: str
) -> None:
    await open_store()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO bridge_schema (version, name) VALUES ($1, 'future')", latest_version() + 1
        )
    finally:
        await conn.close()
    with pytest.raises(ConfigError, match=r"schema is version \d+, this bridge knows up to"):
        await open_store()


async def test_replicas_starting_together_migrate_once(open_store: OpenStore) -> None:
    stores = await asyncio.gather(*(open_store() for _ in range(4)))
    await stores[0].commit([user(1)])
    conn = await asyncpg.connect(stores[0].database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM bridge_schema") == latest_version()
    finally:
        await conn.close()


async def test_database_down_fails_commits_then_recovers_by_itself(
    open_store: OpenStore, pg_server: PostgresServer
) -> None:
    a = await open_store()
    await a.commit([user(1)])
    stopped = asyncio.get_running_loop().run_in_executor(None, pg_server.stop)
    await stopped
    try:
        with pytest.raises(StorageError):
            await a.commit([user(2)])
    finally:
        pg_server.start()
    for _ in range(100):
        try:
            await a.commit([user(3)])
            break
        except StorageError:
            await asyncio.sleep(0.1)
    view = a.state.get("34600000001")
    assert view is not None and [m.id for m in view.messages] == ["wamid.1", "wamid.3"]


async def test_nothing_readable_in_a_dump(
    open_store: OpenStore, pg_server: PostgresServer, database_url: str
) -> None:
    a = await open_store()
    phone = "34611223344"
    wamid = "wamid.HBgLMzQ2MTEyMjMzNDQVAgASGBQzQUNBMkY5RjE2"  # Meta's: base64 of the phone
    marker = "MARKER-cebolla-caramelizada"
    await a.commit([MessageAdded(phone, Message("user", marker, 1, id=wamid), "Ana Marker-Name")])
    dump = pg_server.dump(database_url.rsplit("/", 1)[1])
    for needle in (marker, phone, "Marker-Name", wamid, base64.b64encode(phone.encode()).decode()):
        assert needle.encode() not in dump, needle
    assert b"MzQ2MTEyMjMzNDQ" not in dump  # the phone as base64 inside a wamid


async def _count_records(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM bridge_records"))
    finally:
        await conn.close()


async def test_snapshots_compact_the_log_and_a_new_replica_loads_the_same_state(
    open_store: OpenStore, database_url: str
) -> None:
    a = await open_store()
    await a.commit([user(n) for n in range(20)])
    await a.snapshot()
    await a.commit([user(n) for n in range(20, 30)])
    await a.snapshot()  # deletes what the first snapshot covered
    assert await _count_records(database_url) == 10
    b = await open_store()
    assert b.state.seq == a.state.seq
    view_a, view_b = a.state.get("34600000001"), b.state.get("34600000001")
    assert view_a is not None and view_b is not None
    assert view_a.messages == view_b.messages
    assert b.state.has_seen("wamid.0") and b.state.has_seen("wamid.29")


async def test_an_erased_conversation_leaves_the_database_after_two_snapshots(
    open_store: OpenStore, pg_server: PostgresServer, database_url: str
) -> None:
    a = await open_store()
    marker = "ERASE-ME-pimientos-del-padron"
    await a.commit([user(1, key="34699887766", text=marker)])
    await a.commit([ConversationDeleted("34699887766")])
    await a.commit([user(2)])
    await a.snapshot()
    await a.commit([user(3)])
    await a.snapshot()
    # Encrypted, it was never readable; now it is gone altogether. Check by key: the
    # records left are the ones after the first snapshot.
    b = await open_store()
    assert b.state.get("34699887766") is None
    conn = await asyncpg.connect(database_url)
    try:
        seqs = [r["seq"] for r in await conn.fetch("SELECT seq FROM bridge_records")]
    finally:
        await conn.close()
    assert seqs and min(seqs) > 3  # the message and its erasure were records 2 and 3


async def test_a_replica_behind_the_compaction_reloads(open_store: OpenStore) -> None:
    a = await open_store()
    b = await open_store(poll_seconds=3600)  # never follows by itself
    await a.commit([user(1)])
    await a.snapshot()
    await a.commit([user(2)])
    await a.snapshot()  # records up to the first snapshot are gone; b never applied them
    await b.refresh()
    view = b.state.get("34600000001")
    assert view is not None and [m.id for m in view.messages] == ["wamid.1", "wamid.2"]


async def test_a_duplicate_s_keyword_reaction_is_left_out_with_it(open_store: OpenStore) -> None:
    """Two replicas recording the same "STOP" at once: one opt-out, one automatic reply."""
    a, b = await open_store(), await open_store()

    def stop_and_reaction(replica: str) -> list[Record]:
        now = int(time.time() * 1000)
        reply = OutboxItem(f"out.{replica}", "34600000001", "34600000001", "baja", now)
        return [
            MessageAdded("34600000001", Message("user", "STOP", now, id="wamid.STOP"), None, now),
            ModeChanged("34600000001", ConversationMode(OPTED_OUT, now, "user")),
            MessageAdded(
                "34600000001",
                Message("assistant", "baja", now, id=reply.id, reply_to="wamid.STOP"),
            ),
            OutboxQueued(reply),
            StatusChanged("wamid.OTHER", "read"),
        ]

    results = await asyncio.gather(
        a.commit_new(stop_and_reaction("a")), b.commit_new(stop_and_reaction("b"))
    )
    assert sorted(len(r) for r in results) == [0, 1]
    await a.refresh()
    assert len(a.state.outbox) == 1
    view = a.state.get("34600000001")
    assert view is not None and [m.content for m in view.messages] == ["STOP", "baja"]


async def test_operators_on_a_replica_decide_on_what_other_replicas_recorded(
    open_store: OpenStore,
) -> None:
    """An operator's action on one replica (its API, or sessions-admin) meets the state
    every replica committed, not this replica's memory of it: a window the user reopened
    through another replica is open, an opt-out made there is respected."""
    a, b = await open_store(poll_seconds=3600), await open_store(poll_seconds=3600)
    day_ago = int(time.time() * 1000) - 25 * 3600 * 1000
    old = Message("user", "hace mucho", day_ago, id="wamid.old")
    await a.commit([MessageAdded("34600000001", old, "Ana", day_ago)])
    await b.refresh()
    operators = Operators(b, b.profile)
    with pytest.raises(WindowClosed):
        await operators.send("34600000001", "hola", operator="ana")
    await a.commit([user(1)])  # the user writes again, to the other replica
    sent = await operators.send("34600000001", "te ayudo", operator="ana")
    assert sent.id in b.state.outbox
    await a.commit([ModeChanged("34600000001", ConversationMode(OPTED_OUT, 1, "user", None))])
    with pytest.raises(ModeConflict):
        await operators.pause("34600000001", who="ana")
    await a.commit([user(2, key="34600000002")])  # a conversation only the other one saw
    paused = await operators.pause("34600000002", who="ana")
    await a.refresh()
    assert a.state.conversations["34600000002"].mode == paused.mode
