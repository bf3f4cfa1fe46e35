"""An erasure takes everything of the user: history, queued replies, the ids Meta gave us.

The outbox is drained to a local fake Graph API that keeps failing for the erased user, so
the reply is still queued (and being retried) when the conversation is erased.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from pytest_aiohttp import AiohttpServer
from structlog.testing import capture_logs

from bridge.config import ProfileConfig
from bridge.control.writes import merge_records
from bridge.conversations import Message
from bridge.outbox import Outbox
from bridge.persistence import layout
from bridge.persistence.compression import unpack
from bridge.persistence.journal import list_segments, segment_path
from bridge.persistence.keys import load_keyring
from bridge.persistence.segments import read_segment
from bridge.persistence.snapshot import ID_LEN, LENGTH, MAGIC, MAX_PLAIN, PACKED, ZSTD, _aad
from bridge.records import ConversationDeleted, MessageAdded, OutboxItem, OutboxQueued, Record
from bridge.store.durable import DurableStore, load_state
from bridge.whatsapp.graph import GraphClient
from tests.conftest import eventually, make_profile
from tests.fakes.graph import TOKEN, FakeGraph
from tests.persistence.support import NOW, Opened, unpacked_conversations, user

ANA = "34600000001"  # erased
BEN = "34600000002"  # kept: proves the search below finds what is there
SECRET = "Your test results are ready, Ana"
YEAR_MS = 365 * 24 * 3600 * 1000


def queued_reply(key: str, rid: str, text: str, ts: int = NOW) -> list[Record]:
    return [
        MessageAdded(key, Message("assistant", text, ts, id=rid, status="pending")),
        OutboxQueued(OutboxItem(rid, key, key, text, ts)),
    ]


def plaintext_on_disk(profile: ProfileConfig) -> bytes:
    """Every byte the profile's files hold, snapshot and journal decrypted."""
    keyring = load_keyring(profile, create=False)
    out = [p.read_bytes() for p in profile.state_dir.rglob("*") if p.is_file()]
    snapshot = layout.snapshot_path(profile.state_dir).read_bytes()
    assert snapshot.startswith(MAGIC)
    snapshot_id = snapshot[len(MAGIC) : len(MAGIC) + ID_LEN]
    offset, index = len(MAGIC) + ID_LEN, 0
    while offset < len(snapshot):
        (length,) = LENGTH.unpack_from(snapshot, offset)
        sealed = snapshot[offset + LENGTH.size : offset + LENGTH.size + length]
        plain = keyring.open(sealed, _aad(profile.slug, snapshot_id, index))
        if plain[0] & PACKED:
            out.append(orjson.dumps(unpacked_conversations(plain[1:])))
        else:
            out.append(unpack(plain[1:], MAX_PLAIN) if plain[0] & ZSTD else plain[1:])
        offset, index = offset + LENGTH.size + length, index + 1
    journal = layout.journal_dir(profile.state_dir)
    for segment in list_segments(journal):
        read = read_segment(segment_path(journal, segment), keyring, profile.slug, segment)
        out.append(orjson.dumps(read.commits, default=repr))
    return b"\n".join(out)


@pytest.fixture
async def graph(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[FakeGraph, GraphClient]]:
    fake = FakeGraph()
    fake.fail_next(500, times=10_000, to=ANA)  # Ana's replies stay queued
    server = await aiohttp_server(fake.app())
    client = GraphClient(str(server.make_url("")), "v21.0", "1", TOKEN, timeout=2)
    yield fake, client
    await client.close()


async def test_delete_erases_the_queued_reply_and_it_is_never_sent(
    opened: Opened, tmp_path: Path, graph: tuple[FakeGraph, GraphClient]
) -> None:
    fake, client = graph
    store = await opened()
    outbox = Outbox(store, client, profile="default", base_delay=0.3, max_delay=0.3)
    outbox.start()
    try:
        with capture_logs() as logs:
            await store.commit([user(ANA, 1), *queued_reply(ANA, "out.ana", SECRET)])
            await store.commit([user(BEN, 2)])
            outbox.notify(ANA)
            # The first attempt failed: the worker waits out its backoff, the reply queued.
            await eventually(lambda: any(e["event"] == "reply_retry" for e in logs))
            await store.commit([ConversationDeleted(ANA)])
            assert store.state.outbox == {} and store.state.queued_replies(ANA) == []
            attempts = len(fake.requests)
            outbox.kick()  # every waiting retry runs now: Ana's finds nothing to send
            for n in (3, 4):  # the outbox still works, with every chance to retry Ana's
                await store.commit(queued_reply(BEN, f"out.ben.{n}", f"hello Ben {n}"))
                outbox.notify(BEN)
                await eventually(lambda n=n: f"hello Ben {n}" in fake.bodies(BEN))  # type: ignore[misc]
        assert [r["to"] for r in fake.requests[attempts:]] == [BEN, BEN]
    finally:
        await outbox.stop()
    await store.snapshot()
    on_disk = plaintext_on_disk(store.profile)
    assert BEN.encode() in on_disk and b"hello Ben 4" in on_disk
    assert ANA.encode() not in on_disk and SECRET.encode() not in on_disk
    # Meta's redelivery of Ana's erased message is still known: not stored again.
    assert store.state.has_seen(f"wamid.{ANA}.1")


async def test_retention_erases_queued_replies_too(opened: Opened, tmp_path: Path) -> None:
    profile = make_profile(tmp_path, retention_days=30)
    store = await opened(profile)
    old = NOW - 2 * YEAR_MS
    await store.commit([user(ANA, 1, ts=old), *queued_reply(ANA, "out.ana", SECRET, ts=old)])
    await store.commit([user(BEN, 2), *queued_reply(BEN, "out.ben", "hello Ben")])
    await store.snapshot()
    assert list(store.state.outbox) == ["out.ben"]
    assert ANA.encode() not in plaintext_on_disk(profile)
    await store.close()
    assert list(load_state(profile).outbox) == ["out.ben"]


async def test_replay_of_a_deletion_erases_the_outbox_as_the_live_store_did(
    opened: Opened, tmp_path: Path
) -> None:
    store = await opened()
    await store.commit([user(ANA, 1), *queued_reply(ANA, "out.ana", SECRET)])
    await store.snapshot()  # the queued reply is in the snapshot, the deletion after it
    await store.commit([ConversationDeleted(ANA)])
    replayed = load_state(store.profile)
    assert replayed.outbox == {} and replayed.queued_replies(ANA) == []
    assert replayed.has_seen(f"wamid.{ANA}.1") and f"wamid.{ANA}.1" not in replayed.seen


async def test_an_import_merge_keeps_the_users_queued_reply(opened: Opened) -> None:
    """`import` merges by erasing and re-adding a conversation in one commit: the user's
    queued reply must survive that."""
    store: DurableStore = await opened()
    await store.commit([user(ANA, 1), *queued_reply(ANA, "out.ana", SECRET)])
    merge = merge_records(store.state, ANA, [Message("user", "from the old system", NOW - 1000)])
    await store.commit(merge.records)
    assert merge.left_out == 0 and list(store.state.outbox) == ["out.ana"]
    conv = store.state.conversations[ANA]
    assert [m.content for m in conv.messages][0] == "from the old system"
