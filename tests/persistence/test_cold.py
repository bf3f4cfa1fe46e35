"""Cold conversations: loaded from a snapshot as packed bytes, decoded only when touched.

What a restart gives back must not depend on whether a conversation was decoded: the same
messages, the same indexes (replies by id and wamid, media work and files), the same answers
to `unanswered`; and a snapshot of untouched conversations stores their bytes as they were.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bridge.config import StoreSettings
from bridge.conversations import Conversation, ConversationMode, Message
from bridge.persistence import layout, snapshot
from bridge.persistence.snapshot import SnapshotInfo, read_snapshot
from bridge.records import (
    ConversationDeleted,
    MessageAdded,
    ModeChanged,
    SettingsChanged,
    StatusChanged,
)
from bridge.state import State
from bridge.store.durable import load_state
from tests.chattext import conversations
from tests.conftest import make_profile
from tests.persistence.support import NOW, Opened, crash, snapshot_of, user

OLD_V2 = Path(__file__).parent / "data" / "release-d12c4b7"
OLD_KEY = "ZmFrZS1rZXktZm9yLWEtdGVzdC1maXh0dXJlLTMyYiE="


def varied() -> list[Conversation]:
    """Chats plus what the packed index must carry: media still to fetch, a stored file, a
    voice note to transcribe, a mode, a bounded erasure's count, a multi-part reply."""
    convs = conversations(30, 40, NOW)
    media = convs[0]
    media.append(
        Message(
            "user", "[image]", NOW, id="wamid.img.1", type="image", extra={"media": {"id": "m1"}}
        )
    )
    media.append(
        Message(
            "user",
            "[audio]",
            NOW + 1,
            id="wamid.voice.2",
            type="audio",
            extra={"media": {"id": "m2", "state": "stored", "file": "f2.wam"}},
        )
    )
    media.append(
        Message(
            "user",
            "[document] offer.pdf",
            NOW + 2,
            id="wamid.doc.3",
            type="document",
            extra={"media": {"id": "m3", "state": "stored", "file": "f3.wam"}},
        )
    )
    convs[1].mode = ConversationMode("paused", NOW, "ana", "handoff", NOW + 3600_000)
    convs[2].append(
        Message("assistant", "two parts", NOW, id="r-multi", status="sent", wamids=("w1", "w2"))
    )
    convs[3].appended += 17  # as after a cap dropped some
    for n, conv in enumerate(convs):
        conv.seq = n + 1
    return convs


def eager_state(convs: list[Conversation]) -> State:
    """The state as format v2 loaded it: every conversation decoded from its seed object."""
    state = State(StoreSettings(max_messages=250, retention_days=365))
    for conv in convs:
        state.add_conversation(Conversation.from_seed(conv.key, conv.to_seed(), 250))
    return state


def indexes(state: State) -> dict[str, object]:
    return {
        "replies": sorted(state.replies),
        "media_jobs": dict(state.media_jobs),
        "media_files": dict(state.media_files),
        "seq": state.seq,
        "messages": state.message_count(),
    }


async def test_a_cold_conversation_decodes_exactly_as_the_eager_path(opened: Opened) -> None:
    convs = varied()
    store = await opened()
    for conv in convs:
        store.state.add_conversation(Conversation.from_seed(conv.key, conv.to_seed(), 250))
    await store.snapshot()
    path = layout.snapshot_path(store.profile.state_dir)

    cold, info = State(), SnapshotInfo()
    read_snapshot(path, store.keyring, store.profile.slug, cold, info)
    eager = eager_state(convs)
    assert info.version == 3 and info.cold == len(convs)
    assert all(c.cold is not None for c in cold.conversations.values())
    # The indexes come from the packed index alone: nothing was decoded for them.
    assert indexes(cold) == indexes(eager)
    assert "wamid.img.1" in cold.media_jobs and "f3.wam" in cold.media_files
    assert all(c.cold is not None for c in cold.conversations.values())
    # A status finds the same reply either way (decoding the cold conversation it names).
    assert {i: cold.reply_ref(i) for i in cold.replies} == dict(eager.replies)
    for key, conv in eager.conversations.items():
        thawed = cold.conversations[key]
        assert (thawed.count, thawed.appended, thawed.mode) == (
            conv.count,
            conv.appended,
            conv.mode,
        )
        assert thawed.unanswered() == conv.unanswered()
        assert thawed.to_seed() == conv.to_seed()
        assert list(thawed.messages) == list(conv.messages)
        assert thawed.cold is None and thawed.messages.maxlen == 250


async def test_untouched_conversations_are_written_again_byte_for_byte(opened: Opened) -> None:
    store = await opened()
    for conv in varied():
        store.state.add_conversation(conv)
    await store.snapshot()
    await crash(store)

    loaded = await opened()
    before = {k: c.cold for k, c in loaded.state.conversations.items()}
    assert all(before.values())
    content = snapshot_of(load_state(loaded.profile))
    touched, moded = list(before)[0], list(before)[5]
    await loaded.commit([user(touched, 900)])  # one conversation touched
    await loaded.commit([ModeChanged(moded, ConversationMode("opted_out", NOW, "user"))])
    await loaded.snapshot()
    await crash(loaded)

    again = await opened()
    after = {k: c.cold for k, c in again.state.conversations.items()}
    assert after[touched] is not None and after[touched] != before[touched]
    # A mode change does not touch the messages: their bytes are the same, the mode new.
    assert {k: v for k, v in after.items() if k != touched} == {
        k: v for k, v in before.items() if k != touched
    }
    assert again.state.conversations[moded].mode == ConversationMode("opted_out", NOW, "user")
    state = snapshot_of(again.state)
    assert state["conversations"][touched]["messages"][-1]["content"] == "hello 900"
    del state["conversations"][touched], content["conversations"][touched]
    state["conversations"][moded].pop("mode")
    state["conversations"][moded].pop("seq")
    content["conversations"][moded].pop("seq")
    assert {k: v for k, v in state["conversations"].items()} == content["conversations"]


async def test_changes_to_a_cold_conversation_find_it_through_its_packed_index(
    opened: Opened,
) -> None:
    store = await opened()
    for conv in varied():
        store.state.add_conversation(conv)
    await store.snapshot()
    await crash(store)
    loaded = await opened()
    key = varied()[2].key
    assert loaded.state.conversations[key].cold is not None

    await loaded.commit([StatusChanged("w2", "read", None, ())])  # a wamid of its second part
    assert loaded.state.find_message(key, "r-multi").status == "read"  # type: ignore[union-attr]
    await loaded.commit([ConversationDeleted(varied()[0].key)])  # erases the cold media entries
    assert loaded.state.media_files == {} and loaded.state.media_jobs == {}


async def test_a_lower_cap_decodes_only_the_conversations_over_it(opened: Opened) -> None:
    store = await opened()
    for conv in varied():
        store.state.add_conversation(conv)
    store.state.add_conversation(Conversation("small", 250, NOW))
    await store.snapshot()
    await crash(store)
    loaded = await opened()
    await loaded.commit([SettingsChanged(StoreSettings(max_messages=39, retention_days=365))])
    convs = loaded.state.conversations
    assert convs["small"].cold is not None and convs["small"].cap == 39
    over = varied()[0].key  # 40 messages (a chat of 40, capped at 40)
    assert convs[over].cold is None and convs[over].count == 39
    assert max(c.count for c in convs.values()) == 39
    assert "wamid.img.1" in loaded.state.media_jobs  # the newest kept


async def test_a_settled_cold_conversation_is_not_decoded_to_find_what_it_owes(
    opened: Opened,
) -> None:
    store = await opened()
    await store.commit([user("answered", 1), user("owed", 2)])
    await store.commit(
        [
            MessageAdded(
                "answered", Message("assistant", "hi", NOW, id="r1", reply_to="wamid.answered.1")
            )
        ]
    )
    await store.snapshot()
    await crash(store)
    loaded = await opened()
    answered, owed = loaded.state.conversations["answered"], loaded.state.conversations["owed"]
    assert answered.unanswered() is None and answered.cold is not None
    assert owed.unanswered() is not None and owed.cold is None


def test_a_snapshot_of_the_previous_release_loads(tmp_path: Path) -> None:
    """Format v2 (zstd frames of JSON, no packed conversations), written by d12c4b7."""
    shutil.copytree(OLD_V2, tmp_path / "old")
    state_dir = tmp_path / "old" / "profiles" / "legacy"
    profile = make_profile(tmp_path / "old", slug="legacy", key=OLD_KEY, state_dir=state_dir)
    assert layout.snapshot_path(state_dir).read_bytes().startswith(snapshot.MAGIC_V2)
    info = SnapshotInfo()
    state = load_state(profile, info=info)
    assert info.version == 2 and "format v2" in info.describe()
    lucia = state.conversations["34600000001"]
    assert [m.content for m in lucia.messages] == [
        "Hola, ¿tenéis la talla M?",
        "Sí, en azul y en negro.",
        "Genial, gracias",
    ]
    assert lucia.contact_name == "Lucía" and lucia.messages[1].wamids == ("wamid.OUT.1",)
    assert state.replies["wamid.OUT.1"] == ("34600000001", "r-1")
    assert state.has_seen("wamid.ERASED.3") and "wamid.ERASED.3" not in state.seen
    assert "34600000003" not in state.conversations
    assert state.message_count() == 5 and len(state.seen) == 3


async def test_a_previous_release_store_moves_to_the_packed_format(
    tmp_path: Path, opened: Opened
) -> None:
    shutil.copytree(OLD_V2, tmp_path / "old")
    state_dir = tmp_path / "old" / "profiles" / "legacy"
    profile = make_profile(tmp_path / "old", slug="legacy", key=OLD_KEY, state_dir=state_dir)
    before = snapshot_of(load_state(profile))
    store = await opened(profile)
    await store.close()
    assert layout.snapshot_path(state_dir).read_bytes().startswith(snapshot.MAGIC)
    reloaded = load_state(profile)
    assert all(c.cold is not None for c in reloaded.conversations.values())
    assert snapshot_of(reloaded) == before
