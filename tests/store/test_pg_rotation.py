"""Key rotation on the PostgreSQL store: the hashing secrets kept in the database, the live
re-sealing of `rotate-key`, and replicas meeting data sealed with a key they lack."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from structlog.testing import capture_logs

from admin.database import _fingerprint
from bridge import simulate
from bridge.conversations import Message
from bridge.errors import ConfigError, StorageError
from bridge.persistence.crypto import Keyring, key_id
from bridge.persistence.keys import encode_key, new_key
from bridge.records import MessageAdded
from bridge.store.pg import rotation
from bridge.store.pg.locks import ConversationLocks
from bridge.store.pg.schema import migrations
from bridge.store.pg.sealing import Sealer
from bridge.store.postgres import PostgresStore, read_database_state
from tests.admin.support import admin
from tests.conftest import APP_SECRET, make_profile
from tests.fakes.graph import FakeGraph
from tests.fakes.threaded import serve_in_thread
from tests.store.conftest import OpenStore
from tests.test_cli import clean_env, graph_env, start_serve

OLD, NEW = new_key(), new_key()
PHONE = "34600000009"


def keys(*ring: bytes) -> str:
    return ",".join(encode_key(k) for k in ring)


@pytest.fixture
def open_replica(tmp_path: Path, open_store: OpenStore) -> OpenStore:
    """Opens replicas of one profile (tests/store/conftest.py), each with the key list
    given."""

    async def open_one(*ring: bytes, **options: Any) -> PostgresStore:
        return await open_store(make_profile(tmp_path, key=keys(*ring)), **options)

    return open_one


def user(n: int, key: str = "34600000001") -> MessageAdded:
    now = int(time.time() * 1000)
    return MessageAdded(key, Message("user", f"hola {n}", now, id=f"wamid.{n}"), "Ana", now)


async def rotate(url: str, *ring: bytes) -> rotation.Rotation:
    conn = await asyncpg.connect(url)
    try:
        return await rotation.rotate(conn, "default", Keyring(list(ring)), "BRIDGE_KEY")
    finally:
        await conn.close()


async def key_ids_in(url: str) -> set[bytes]:
    """The id of every key something of the profile is sealed with, from the tables."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT substring(sealed from 1 for 8) AS kid FROM bridge_records "
            "UNION SELECT substring(key_check from 1 for 8) FROM bridge_profiles "
            "UNION SELECT substring(secrets from 1 for 8) FROM bridge_profiles "
            "UNION SELECT substring(sealed from 29 for 8) FROM bridge_snapshots"
        )
        assert await conn.fetchval("SELECT count(*) FROM bridge_snapshots") == 1
        assert await conn.fetchval("SELECT count(*) FROM bridge_records") > 0
    finally:
        await conn.close()
    return {bytes(r["kid"]) for r in rows}


def lock_id(store: PostgresStore, key: str) -> int:
    assert isinstance(store.ownership, ConversationLocks)
    return store.ownership._lock_id(key)


async def test_rotate_reseals_every_row_under_the_new_key(
    open_replica: OpenStore, database_url: str, tmp_path: Path
) -> None:
    old = await open_replica(OLD)
    await old.commit([user(n) for n in range(20)])
    await old.snapshot()
    await old.commit([user(n) for n in range(20, 30)])
    await old.close()
    before = _fingerprint(await read_database_state(old.profile, database_url))
    assert await key_ids_in(database_url) == {key_id(OLD)}

    done = await rotate(database_url, NEW, OLD)
    assert (done.records, done.snapshot, done.profile_row, done.left) == (
        31,
        True,
        True,
        {},
    )  # settings + 30 messages
    assert await key_ids_in(database_url) == {key_id(NEW)}
    again = await rotate(database_url, NEW, OLD)
    assert (again.records, again.snapshot, again.profile_row) == (0, False, False)

    fresh = await open_replica(NEW)
    assert _fingerprint(fresh.state) == before
    assert fresh.state.has_seen("wamid.0") and fresh.state.has_seen("wamid.29")
    assert await fresh.commit_new([user(3)]) == {"wamid.3"}  # the seen hashes still hold
    with pytest.raises(ConfigError, match="does not match the database"):
        await open_replica(OLD)


async def test_a_replica_keeps_committing_while_rotate_key_runs(
    open_replica: OpenStore, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(rotation, "CHUNK", 7)  # many chunks, commits between them
    writer = await open_replica(OLD)
    spread = [user(n, key=f"3461{n % 20:07d}") for n in range(1000)]  # under the cap each
    await writer.commit(spread[:200])
    await writer.snapshot()
    await writer.commit(spread[200:])
    await writer.close()
    replica = await open_replica(NEW, OLD)  # step 2 done: seals with NEW
    stop = asyncio.Event()
    committed: list[int] = []

    async def keep_committing() -> None:
        n = 1000
        while not stop.is_set():
            await replica.commit([user(n, key=f"3462{n % 50:07d}")])
            committed.append(n)
            n += 1
            if n == 1030:  # compaction meets the re-sealing: records <= 201 go
                await replica.snapshot()
            await asyncio.sleep(0)

    task = asyncio.create_task(keep_committing())
    try:
        # sessions-admin as the operator runs it, another process; then twice more here.
        env = clean_env(
            BRIDGE_VAR_DIR=str(tmp_path / "admin"),
            BRIDGE_STORE="postgres",
            BRIDGE_DATABASE_URL=database_url,
            BRIDGE_KEY=keys(NEW, OLD),
        )
        result = await asyncio.to_thread(admin, ["rotate-key", "--json"], env)
        assert result.returncode == 0, result.stderr
        # The records after the first snapshot (seq 202..1001) at least; the snapshot,
        # unless the replica's compaction wrote its own (with NEW) first.
        assert json.loads(result.stdout)["records"] >= 800, result.stdout
        for _ in range(2):
            done = await rotate(database_url, NEW, OLD)
            assert done.left == {}
    finally:
        stop.set()
        await task
    assert len(committed) > 10
    assert await key_ids_in(database_url) == {key_id(NEW)}
    reader = await open_replica(NEW)
    for n in [*range(1000), *committed]:
        assert reader.state.has_seen(f"wamid.{n}"), n
    stored = sum(len(v.messages) for v in reader.state.views())
    assert stored == 1000 + len(committed)


async def test_rotate_key_reports_rows_a_replica_sealed_meanwhile_with_the_old_key(
    open_replica: OpenStore, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await (await open_replica(OLD)).commit([user(1)])
    laggard = await open_replica(OLD, NEW)  # step 2 not done here: still seals with OLD
    real = rotation.sealed_with
    calls = 0

    async def committed_meanwhile(conn: Any, slug: str) -> dict[bytes, int]:
        nonlocal calls
        calls += 1
        if calls == 2:  # after the re-sealing, before the count
            await laggard.commit([user(2)])
        return await real(conn, slug)

    monkeypatch.setattr(rotation, "sealed_with", committed_meanwhile)
    done = await rotate(database_url, NEW, OLD)
    assert done.left == {key_id(OLD).decode(): 1}
    monkeypatch.setattr(rotation, "sealed_with", real)
    reader = await open_replica(NEW, OLD)
    assert reader.state.has_seen("wamid.1") and reader.state.has_seen("wamid.2")


async def test_hashes_and_lock_ids_are_the_same_whatever_the_key_order(
    open_replica: OpenStore, database_url: str
) -> None:
    first = await open_replica(OLD)
    both = [await open_replica(OLD, NEW), await open_replica(NEW, OLD)]
    replicas = [first, *both]
    assert len({s.sealer.seen_hash("wamid.x") for s in replicas}) == 1
    assert len({lock_id(s, "34600000001") for s in replicas}) == 1
    # Dedupe holds across the rolling change: one message at both, recorded once.
    for n in range(10):
        results = await asyncio.gather(*(s.commit_new([user(n)]) for s in both))
        assert sorted(len(r) for r in results) == [0, 1], results
    await rotate(database_url, NEW, OLD)
    last = await open_replica(NEW)
    assert last.sealer.seen_hash("wamid.x") == first.sealer.seen_hash("wamid.x")
    assert lock_id(last, "34600000001") == lock_id(first, "34600000001")
    assert await last.commit_new([user(5)]) == {"wamid.5"}
    view = last.state.get("34600000001")
    assert view is not None and len(view.messages) == 10


def legacy_seen_hash(oldest: bytes, message_id: str) -> bytes:
    """How schema-1 versions hashed seen ids (written out here, independent of the code)."""
    seen_key = hmac.new(oldest, b"whatsapp-bridge seen-id hash v1", hashlib.sha256).digest()
    return hmac.new(seen_key, message_id.encode(), hashlib.sha256).digest()


async def test_a_schema_1_database_keeps_its_seen_hashes_and_lock_ids_after_the_upgrade(
    open_replica: OpenStore, database_url: str
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        (_, name, sql) = migrations()[0]
        await conn.execute(
            "CREATE TABLE bridge_schema (version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute(sql)
        await conn.execute("INSERT INTO bridge_schema (version, name) VALUES (1, $1)", name)
        await conn.execute(
            "INSERT INTO bridge_profiles (slug, key_check) VALUES ('default', $1)",
            Sealer(Keyring([OLD]), "default").key_check(),
        )
        now = int(time.time() * 1000)
        await conn.execute(
            "INSERT INTO bridge_seen (profile, id_hash, received_ms) VALUES ('default', $1, $2)",
            legacy_seen_hash(OLD, "wamid.7"),
            now,
        )
    finally:
        await conn.close()
    # The first replica of this version opens it during a rolling change ("NEW" second):
    # still the values the replicas of schema 1 (holding "OLD" alone) hashed with.
    upgraded = await open_replica(OLD)
    assert await upgraded.commit_new([user(7)]) == {"wamid.7"}
    other = await open_replica(NEW, OLD)
    assert await other.commit_new([user(7)]) == {"wamid.7"}
    legacy_lock = hmac.new(
        hmac.new(OLD, b"whatsapp-bridge conversation lock v1default", hashlib.sha256).digest(),
        b"34600000001",
        hashlib.sha256,
    ).digest()
    assert lock_id(other, "34600000001") == int.from_bytes(legacy_lock[:8], "big", signed=True)
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval("SELECT secrets FROM bridge_profiles")
    finally:
        await conn.close()
    assert stored is not None and bytes(stored[:8]) == key_id(OLD)


async def test_a_replica_lacking_the_new_key_answers_503_and_says_so_once(
    open_replica: OpenStore, tmp_path: Path
) -> None:
    behind = await open_replica(OLD)  # never given NEW (step 1 missed)
    ahead = await open_replica(NEW, OLD)
    await ahead.commit([user(1)])
    with capture_logs() as logs:
        for n in range(3):
            with pytest.raises(StorageError, match=key_id(NEW).decode()) as caught:
                await behind.commit([user(10 + n)])
            assert "add it to the key source" in str(caught.value)
            assert "\n" not in str(caught.value)
        await asyncio.sleep(0.3)  # the poll meets it too, and stays alive
    missing = [e for e in logs if e["event"] == "encryption_key_missing"]
    assert len(missing) == 1 and missing[0]["key_id"] == key_id(NEW).decode()
    assert missing[0]["log_level"] == "error"
    assert behind._poller is not None and not behind._poller.done()
    await ahead.refresh()
    assert not ahead.state.has_seen("wamid.10")  # refused: Meta retries it (503)
    # Restarted without the key, it refuses to start, one line, exit 2.
    with pytest.raises(ConfigError, match=r"sealed with key \w+.*refusing to start"):
        await open_replica(OLD)


async def test_a_serving_replica_lacking_the_key_answers_503_with_one_log_line(
    tmp_path: Path, database_url: str, open_replica: OpenStore
) -> None:
    await (await open_replica(OLD)).commit([user(1)])
    graph = FakeGraph()
    with serve_in_thread(graph.app()) as graph_url:
        var = tmp_path / "replica"
        var.mkdir()
        env = graph_env(
            var,
            graph_url,
            BRIDGE_STORE="postgres",
            BRIDGE_DATABASE_URL=database_url,
            BRIDGE_KEY=keys(OLD),  # missed step 1 of the rotation
        )
        served = start_serve(var, env=env)
        try:
            ahead = await open_replica(NEW, OLD)
            await ahead.commit([user(2)])
            raw = simulate.encode(
                simulate.delivery(simulate.change_value([simulate.text_message("hola", PHONE)]))
            )
            async with aiohttp.ClientSession() as session:
                for _ in range(3):
                    async with session.post(
                        f"http://127.0.0.1:{served.port}/webhook",
                        data=raw,
                        headers=simulate.signed_headers(raw, APP_SECRET),
                    ) as resp:
                        assert resp.status == 503
                await asyncio.sleep(1)  # its poll meets the record too
            assert served.proc.poll() is None
            code, logged = served.stop()
        finally:
            if served.proc.poll() is None:
                served.proc.kill()
    missing = [e for e in logged if e["event"] == "encryption_key_missing"]
    assert len(missing) == 1 and missing[0]["key_id"] == key_id(NEW).decode()
    assert "add it to the key source" in missing[0]["error"]
    assert not [e for e in logged if e.get("exception") or e["level"] == "critical"], logged
    assert code == 0
