"""Retention and erasure against live traffic: a deletion never takes a message acknowledged
after it was decided, and time that decides anything is the time we received a message."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import simulate
from bridge.config import StoreSettings
from bridge.conversations import Conversation, Message
from bridge.records import ConversationDeleted, MessageAdded, Record
from bridge.seen import SEEN_TTL_MS
from bridge.state import State
from bridge.store.durable import DurableStore
from tests.conftest import PHONE_NUMBER_ID, StartBridge, make_profile
from tests.persistence.support import Opened, crash, snapshot_of

DAY_MS = 24 * 3600 * 1000
NOW = int(time.time() * 1000)


def received(key: str, n: int, at_ms: int, stamped_ms: int | None = None) -> MessageAdded:
    """A user message received at `at_ms`, whose delivery says `stamped_ms`."""
    message = Message("user", f"m{n}", stamped_ms or at_ms, id=f"wamid.{key}.{n}", type="text")
    return MessageAdded(key, message, received_ms=at_ms)


async def test_retention_sweep_keeps_a_message_being_committed(
    opened: Opened, tmp_path: Path
) -> None:
    """The sweep decides from memory while a message for that idle user waits for its fsync:
    the message is acknowledged, so the erasure behind it must leave it (and the history it
    erases is only what the sweep saw)."""
    store = await opened(make_profile(tmp_path, retention_days=30))
    idle = "34600000001"
    await store.commit([received(idle, n, NOW - 40 * DAY_MS + n) for n in range(3)])
    # Queued in the journal, not yet applied to memory: exactly the window of the race.
    late = asyncio.create_task(store.commit([received(idle, 3, NOW)]))
    await asyncio.sleep(0)
    assert store.state.conversations[idle].appended == 3
    await store.snapshot()  # runs the retention sweep
    await late
    conv = store.state.conversations.get(idle)
    assert conv is not None, "the acknowledged message was erased with the idle history"
    assert [m.content for m in conv.messages] == ["m3"]
    before = snapshot_of(store.state)
    await crash(store)
    again = await opened(make_profile(tmp_path, retention_days=30))
    assert snapshot_of(again.state) == before


async def test_retention_still_erases_idle_conversations(opened: Opened, tmp_path: Path) -> None:
    store = await opened(make_profile(tmp_path, retention_days=30))
    await store.commit([received("34600000001", 1, NOW - 40 * DAY_MS)])
    await store.commit([received("34600000002", 1, NOW - 10 * DAY_MS)])
    await store.snapshot()
    assert list(store.state.conversations) == ["34600000002"]


async def test_retention_and_seen_set_use_the_receive_time_not_the_delivery_stamp(
    opened: Opened, tmp_path: Path
) -> None:
    """A message stamped 1970 and one stamped 2100, both received now: neither drops out of
    the seen-set early nor escapes retention later."""
    store = await opened(make_profile(tmp_path, retention_days=30))
    await store.commit([received("34600000001", 1, NOW, stamped_ms=1000)])
    await store.commit([received("34600000002", 1, NOW - 40 * DAY_MS, stamped_ms=4102444800000)])
    await store.snapshot()  # prunes the seen-set and runs retention
    assert store.state.has_seen("wamid.34600000001.1")
    assert "34600000001" in store.state.conversations
    assert "34600000002" not in store.state.conversations
    await store.close()
    again = await opened(make_profile(tmp_path, retention_days=30))
    assert again.state.seen["wamid.34600000001.1"] == NOW


async def test_redelivery_of_a_message_stamped_1970_is_recorded_once(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    """Through the real webhook: the delivery's timestamp says 1970, the snapshot in between
    prunes the seen-set, and Meta's redelivery must still be recognised."""

    bridge = await start_bridge(store_factory=DurableStore)
    message = simulate.text_message("hola", "34600000001", "wamid.OLD1")
    message["timestamp"] = "1"
    body = simulate.delivery(simulate.change_value([message], phone_number_id=PHONE_NUMBER_ID))
    assert (await bridge.post(body)).status == 200
    await bridge.settle()
    await bridge.runtimes["default"].store.snapshot()
    response = await bridge.post(body)
    assert response.status == 200
    assert (await response.json())["duplicates"] == 1
    conv = bridge.state().get("34600000001")
    assert conv is not None
    assert [m.id for m in conv.messages if m.role == "user"] == ["wamid.OLD1"]


async def test_delete_bounded_to_the_decision_keeps_a_later_message(
    opened: Opened, tmp_path: Path
) -> None:
    store = await opened()
    key = "34600000001"
    await store.commit([received(key, n, NOW + n) for n in range(3)])
    deletion = store.state.deletion(key)
    assert deletion == ConversationDeleted(key, 3)
    await store.commit([received(key, 3, NOW + 3), deletion])
    conv = store.state.conversations[key]
    assert [m.content for m in conv.messages] == ["m3"]
    assert all(store.state.has_seen(f"wamid.{key}.{n}") for n in range(4))


def test_seen_set_horizon_counts_from_receipt() -> None:
    state = State()
    state.apply(1, received("34600000001", 1, NOW, stamped_ms=1000))
    assert state.prune_seen(NOW + SEEN_TTL_MS - 1) == 0
    # Pruned by whole days: gone once the day it was received on is past the horizon.
    assert state.prune_seen(NOW + SEEN_TTL_MS + DAY_MS) == 1


# -- the fuzzy-snapshot property, with bounded erasures in the mix ---------------------------

KEYS = ("34600000001", "34600000002")


@st.composite
def histories(draw: st.DrawFn) -> list[Record]:
    """Messages to two users interleaved with bounded and whole erasures of either."""
    records: list[Record] = []
    counts = dict.fromkeys(KEYS, 0)  # messages appended since the conversation was created
    for step in range(draw(st.integers(1, 30))):
        key = draw(st.sampled_from(KEYS))
        if draw(st.integers(0, 4)) == 0 and counts[key]:
            upto = draw(st.one_of(st.none(), st.integers(0, counts[key])))
            records.append(ConversationDeleted(key, upto))
            if upto is None or upto >= counts[key]:
                counts[key] = 0
        else:
            records.append(received(key, step, NOW + step))
            counts[key] += 1
    return records


def replayed(records: list[Record], cap: int) -> State:
    state = State(StoreSettings(cap, 365))
    for seq, record in enumerate(records, 1):
        state.apply(seq, record)
    return state


@settings(max_examples=300, deadline=None)
@given(histories(), st.data(), st.sampled_from([3, 250]))
def test_replay_over_a_fuzzy_snapshot_gives_the_live_state(
    records: list[Record], data: st.DataObject, cap: int
) -> None:
    """A snapshot starts at a rotation point and captures each conversation at some later
    moment; replaying the journal from the rotation over it must give the live state."""
    live = replayed(records, cap)
    rotation = data.draw(st.integers(0, len(records)))
    snapshot = State(StoreSettings(cap, 365))
    for key in KEYS:
        captured_at = data.draw(st.integers(rotation, len(records)))
        conv = replayed(records[:captured_at], cap).conversations.get(key)
        if conv is not None:
            snapshot.add_conversation(Conversation.from_seed(key, conv.to_seed(), cap))
    for seq, record in enumerate(records[rotation:], rotation + 1):
        snapshot.apply(seq, record)
    assert {k: c.to_seed() for k, c in snapshot.conversations.items()} == {
        k: c.to_seed() for k, c in live.conversations.items()
    }
