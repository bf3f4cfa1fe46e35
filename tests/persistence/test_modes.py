"""Conversation modes are journaled state: replayed after a crash, in snapshots and backups,
guarded by sequence numbers like messages, erased with their conversation."""

from __future__ import annotations

import pytest

from bridge.conversations import ASSISTANT, OPTED_OUT, PAUSED, Conversation, ConversationMode
from bridge.errors import CorruptStateError
from bridge.records import (
    ConversationDeleted,
    IdentityLinked,
    ModeChanged,
    decode,
    encode,
    record_from_dict,
)
from bridge.state import State
from bridge.store.durable import load_state
from tests.persistence.support import NOW, Opened, crash, snapshot_of, user

KEY = "34600000001"
PAUSE = ConversationMode(PAUSED, NOW, "ana", "big order", NOW + 3_600_000)


def test_a_mode_change_round_trips_through_its_record() -> None:
    for mode in (PAUSE, ConversationMode(OPTED_OUT, NOW, "user", "opted out by keyword")):
        assert decode(encode(7, ModeChanged(KEY, mode))) == (7, ModeChanged(KEY, mode))


@pytest.mark.parametrize(
    "data",
    [
        {"t": "mo", "k": KEY, "mode": "sleeping", "at": NOW, "by": "x"},
        {"t": "mo", "k": KEY, "mode": "paused", "at": "now", "by": "x"},
        {"t": "mo", "k": KEY, "mode": "assistant", "at": NOW, "by": "x", "until": NOW},
        {"t": "mo", "k": KEY, "mode": "paused", "at": NOW, "by": 3},
    ],
)
def test_a_malformed_mode_record_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="mode"):
        record_from_dict(data)


async def test_modes_survive_a_crash_and_a_snapshot(opened: Opened) -> None:
    store = await opened()
    await store.commit([user(KEY, 1), user("34600000002", 1)])
    await store.commit([ModeChanged(KEY, PAUSE)])
    opt_out = ConversationMode(OPTED_OUT, NOW, "user", "opted out by keyword")
    await store.commit([ModeChanged("34600000002", opt_out)])
    await crash(store)
    state = load_state(store.profile)  # journal replay
    assert state.conversations[KEY].mode == PAUSE
    assert state.conversations["34600000002"].mode == opt_out
    again = await opened(store.profile)
    await again.snapshot()
    await crash(again)
    from_snapshot = load_state(store.profile)
    assert from_snapshot.conversations[KEY].mode == PAUSE
    assert snapshot_of(from_snapshot) == snapshot_of(state)


async def test_a_malformed_mode_in_a_snapshot_is_corruption(opened: Opened) -> None:
    store = await opened()
    await store.commit([user(KEY, 1)])
    conv = store.state.conversations[KEY]
    conv.mode = ConversationMode(PAUSED, NOW, "ana")
    object.__setattr__(conv.mode, "at_ms", "yesterday")  # what a damaged file would hold
    await store.snapshot()
    await crash(store)
    with pytest.raises(CorruptStateError, match="mode"):
        load_state(store.profile)


def test_replay_over_a_snapshot_that_holds_the_change_skips_it() -> None:
    state = State()
    state.apply(1, user(KEY, 1))
    state.apply(2, ModeChanged(KEY, PAUSE))
    resumed = ConversationMode(ASSISTANT, NOW + 5, "ana")
    state.apply(3, ModeChanged(KEY, resumed))
    # The fuzzy snapshot serialized the conversation after seq 3; the journal replays 2 and 3.
    copy = State()
    copy.add_conversation(Conversation.from_seed(KEY, state.conversations[KEY].to_seed(), None))
    copy.apply(2, ModeChanged(KEY, PAUSE))
    assert copy.conversations[KEY].mode == resumed


def test_a_mode_change_for_an_erased_conversation_is_ignored() -> None:
    state = State()
    state.apply(1, user(KEY, 1))
    state.apply(2, ConversationDeleted(KEY, 1))
    state.apply(3, ModeChanged(KEY, PAUSE))
    assert KEY not in state.conversations


def test_an_erasure_takes_the_mode_with_the_conversation() -> None:
    state = State()
    state.apply(1, user(KEY, 1))
    state.apply(2, ModeChanged(KEY, PAUSE))
    state.apply(3, ConversationDeleted(KEY, 1))
    state.apply(4, user(KEY, 2))
    assert state.conversations[KEY].mode is None


def test_linking_a_user_id_keeps_the_newest_mode_of_the_person() -> None:
    state = State()
    state.apply(1, user("US.1", 1))
    opted = ConversationMode(OPTED_OUT, NOW + 10, "user", "opted out by keyword")
    state.apply(2, ModeChanged("US.1", opted))
    state.apply(3, user(KEY, 2))
    state.apply(4, ModeChanged(KEY, PAUSE))  # older than the opt-out
    state.apply(5, IdentityLinked("US.1", KEY))
    assert state.conversations[KEY].mode == opted
