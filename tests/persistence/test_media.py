"""Media work lives in the journal: its updates replay, and its queue is rebuilt from the
messages after a crash, a snapshot, a link of identities, an erasure."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.conversations import Message
from bridge.records import (
    ConversationDeleted,
    IdentityLinked,
    MediaUpdated,
    MessageAdded,
    Record,
    record_from_dict,
)
from bridge.state import State
from bridge.store.durable import load_state
from tests.persistence.support import NOW, Opened, crash

ANA = "34600000001"
NAME = "ab" * 16


def voice(key: str, wamid: str, **media: Any) -> MessageAdded:
    extra = {"media": {"id": "m1", "mime_type": "audio/ogg", "voice": True, **media}}
    return MessageAdded(key, Message("user", "[voice]", NOW, id=wamid, type="audio", extra=extra))


def stored(wamid: str, key: str = ANA) -> MediaUpdated:
    media = {"id": "m1", "voice": True, "state": "stored", "file": NAME, "size": 5}
    return MediaUpdated(key, wamid, media, "[voice 0:05]")


def transcribed(wamid: str, key: str = ANA) -> MediaUpdated:
    media = {"id": "m1", "voice": True, "state": "stored", "file": NAME, "size": 5}
    return MediaUpdated(key, wamid, {**media, "transcript": "hola"}, "[voice 0:05] hola")


def test_pending_stored_and_transcribed_are_told_from_the_entry() -> None:
    state = State()
    state.apply(1, voice(ANA, "w1"))
    assert state.media_jobs == {"w1": ANA} and not state.media_files
    state.apply(2, stored("w1"))
    assert state.media_jobs == {"w1": ANA}  # an audio: its transcript is still to do
    assert state.media_files == {NAME: (ANA, "w1")}
    state.apply(3, transcribed("w1"))
    assert not state.media_jobs and state.media_files == {NAME: (ANA, "w1")}
    found = state.find_message(ANA, "w1")
    assert found is not None and found.content == "[voice 0:05] hola"
    state.apply(4, ConversationDeleted(ANA))
    assert not state.media_jobs and not state.media_files


def test_an_update_replayed_over_a_snapshot_that_holds_a_later_one_changes_nothing() -> None:
    state = State()
    records: list[Record] = [voice(ANA, "w1"), stored("w1"), transcribed("w1")]
    for seq, record in enumerate(records, 1):
        state.apply(seq, record)
    state.apply(2, stored("w1"))  # replay of an older record: skipped by the seq guard
    found = state.find_message(ANA, "w1")
    assert found is not None and found.content == "[voice 0:05] hola"


def test_an_update_follows_a_user_id_linked_to_a_phone() -> None:
    state = State()
    state.apply(1, voice("user.1", "w1"))
    state.apply(2, IdentityLinked("user.1", ANA))
    assert state.resolve(state.media_jobs["w1"]) == ANA
    state.apply(3, stored("w1", ANA))
    assert state.media_files == {NAME: (ANA, "w1")}


@pytest.mark.parametrize("media", [{"id": "m1"}, {"id": "m1", "state": "failed"}])
def test_a_record_round_trips(media: dict[str, Any]) -> None:
    from bridge.records import record_to_dict

    for content in (None, "[voice]"):
        record = MediaUpdated(ANA, "w1", media, content)
        assert record_from_dict(record_to_dict(record)) == record


def test_a_malformed_update_is_refused() -> None:
    with pytest.raises(ValueError, match="malformed"):
        record_from_dict({"t": "a", "k": ANA, "i": "w1", "x": ["not", "a", "dict"]})


async def test_the_queue_and_the_files_survive_a_crash_and_a_snapshot(opened: Opened) -> None:
    store = await opened()
    await store.commit([voice(ANA, "w1"), voice(ANA, "w2"), stored("w1")])
    await crash(store)
    replayed = load_state(store.profile)
    assert set(replayed.media_jobs) == {"w1", "w2"}
    assert replayed.media_files == {NAME: (ANA, "w1")}
    again = await opened(store.profile)
    await again.commit([transcribed("w1")])
    await again.snapshot()
    await crash(again)
    loaded = load_state(store.profile)
    assert loaded.media_jobs == {"w2": ANA}
    assert loaded.media_files == {NAME: (ANA, "w1")}
    found = loaded.find_message(ANA, "w1")
    assert found is not None and found.content == "[voice 0:05] hola"
