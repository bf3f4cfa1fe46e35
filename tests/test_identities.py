"""One person, one conversation: a business-scoped user id linked to the phone it came with.

Meta's username rollout sends a user's phone (`from`) and business-scoped user id
(`from_user_id`) together, or the user id alone. The bridge keys conversations by phone when
it has one, links the user id to it durably (an `IdentityLinked` record), moves a user id's
conversation into the phone's one when the phone appears, and replies to the phone when it
knows it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bridge import simulate
from bridge.config import StoreSettings
from bridge.conversations import Conversation, Message
from bridge.identities import normalize_key
from bridge.records import (
    ConversationDeleted,
    IdentityLinked,
    MessageAdded,
    Record,
    StatusChanged,
    decode,
    encode,
)
from bridge.state import State
from bridge.store.memory import MemoryStore
from bridge.whatsapp.graph import GraphClient
from tests.conftest import Bridge, StartBridge, eventually
from tests.fakes.graph import FakeGraph
from tests.fakes.threaded import serve_in_thread
from tests.test_admin import admin, admin_json
from tests.test_cli import graph_env, run, start_serve
from tests.test_durability import stored

PHONE = "34600000001"
USER = "ES.13491208655302741918"


def delivery(text: str, phone: str | None, user_id: str | None, name: str = "Vera") -> Any:
    return simulate.simulated_text(text, phone, user_id, "100000000000001", name)


def user_texts(bridge: Bridge, key: str) -> list[str]:
    conv = bridge.state().get(key)
    assert conv is not None, f"no conversation {key}"
    return [m.content for m in conv.messages if m.role == "user"]


# -- over HTTP, in process -----------------------------------------------------------------


async def test_user_id_alone_lands_in_the_phone_conversation_it_was_seen_with(
    start_bridge: StartBridge, graph: tuple[FakeGraph, GraphClient]
) -> None:
    fake, client = graph
    bridge = await start_bridge(senders={"default": client})
    assert (await bridge.post(delivery("with phone", PHONE, USER))).status == 200
    assert (await bridge.post(delivery("username only", None, USER))).status == 200
    await bridge.settle()
    assert user_texts(bridge, PHONE) == ["with phone", "username only"]
    assert bridge.state().get(USER) is None
    assert bridge.state().aliases == {USER: PHONE}
    # Replies go to the phone, which Meta accepts, also for the user-id-only message.
    assert [m["to"] for m in fake.sent] == [PHONE, PHONE]


async def test_a_user_id_conversation_merges_into_the_phone_when_it_appears(
    start_bridge: StartBridge, graph: tuple[FakeGraph, GraphClient]
) -> None:
    fake, client = graph
    bridge = await start_bridge(senders={"default": client})
    await bridge.post(delivery("first, username only", None, USER, name="@vera"))
    await bridge.settle()
    assert user_texts(bridge, USER) == ["first, username only"]
    assert fake.sent[0]["to"] == USER  # no phone known yet: the user id
    await bridge.post(delivery("now with my phone", PHONE, USER, name="Vera"))
    await bridge.settle()
    conv = bridge.state().get(PHONE)
    assert conv is not None and bridge.state().get(USER) is None
    assert [(m.role, m.content) for m in conv.messages] == [
        ("user", "first, username only"),
        ("assistant", "Echo: first, username only"),
        ("user", "now with my phone"),
        ("assistant", "Echo: now with my phone"),
    ]
    assert conv.contact_name == "Vera"
    assert fake.sent[-1]["to"] == PHONE
    # A status for the reply sent before the merge still finds it.
    (wamid,) = conv.messages[1].wamids
    status = simulate.status(wamid, "read", USER)
    await bridge.post(simulate.delivery(simulate.change_value(statuses=[status])))
    conv = bridge.state().get(PHONE)
    assert conv is not None and conv.messages[1].status == "read"


class SlowCommitStore(MemoryStore):
    """Commits that take a while, so a second delivery is resolved while a link is in flight."""

    async def commit(self, records: Sequence[Record]) -> None:
        await asyncio.sleep(0.05)
        await super().commit(records)


async def test_a_link_in_flight_is_used_by_a_concurrent_delivery(
    start_bridge: StartBridge,
) -> None:
    bridge = await start_bridge(store_factory=lambda p: SlowCommitStore(State(p.store_settings)))
    first = asyncio.ensure_future(bridge.post(delivery("with phone", PHONE, USER)))
    await asyncio.sleep(0.01)  # the first is committing (its link not applied yet)
    second = await bridge.post(delivery("username only", None, USER))
    assert ((await first).status, second.status) == (200, 200)
    await bridge.settle()
    assert sorted(user_texts(bridge, PHONE)) == ["username only", "with phone"]
    assert bridge.state().get(USER) is None


# -- the record, applied and replayed ------------------------------------------------------


def msg(text: str, ts: int, wamid: str | None = None, role: str = "user") -> Message:
    return Message(role, text, ts, id=wamid or f"wamid.{text}")


def apply_all(state: State, records: Sequence[tuple[int, Record]]) -> State:
    for seq, record in records:
        state.apply(seq, decode(encode(seq, record))[1])  # through the journal's encoding
    return state


HISTORY: list[tuple[int, Record]] = [
    (1, MessageAdded(USER, msg("a", 1000), "@vera")),
    (2, MessageAdded(USER, Message("assistant", "Echo: a", 1001, id="out.1", status="sent"))),
    (3, MessageAdded(PHONE, msg("b", 900), "Vera")),
    (4, IdentityLinked(USER, PHONE)),
    (5, MessageAdded(PHONE, msg("c", 2000), "Vera")),
    (6, StatusChanged("out.1", "read")),
]


def final(state: State) -> tuple[list[str], dict[str, str], str | None]:
    conv = state.conversations[PHONE]
    return [m.content for m in conv.messages], dict(state.aliases), conv.messages[2].status


def test_the_link_merges_in_time_order_and_indexes_replies_under_the_phone() -> None:
    state = apply_all(State(), HISTORY)
    assert list(state.conversations) == [PHONE]
    assert final(state) == (["b", "a", "Echo: a", "c"], {USER: PHONE}, "read")
    assert state.conversations[PHONE].first_interaction == 900
    assert state.resolve(USER) == PHONE and state.resolve("other") == "other"


def copy_of(conv: Conversation, cap: int = 250) -> Conversation:
    return Conversation.from_seed(conv.key, conv.to_seed(), cap)


@pytest.mark.parametrize("cut", range(len(HISTORY) + 1))
@pytest.mark.parametrize("target_later", [False, True])
def test_replay_over_any_fuzzy_snapshot_gives_the_same_state(cut: int, target_later: bool) -> None:
    """A snapshot copies conversations one by one while records keep coming: the user id's
    conversation may be copied before the link and the phone's after it, or the reverse.
    Replaying the whole journal over any such copy must give exactly the live state."""
    live = apply_all(State(), HISTORY)
    early = apply_all(State(), HISTORY[:cut])  # the state when the first conversation was copied
    snapshot = State()
    for key in (USER, PHONE):
        source = live if (key == PHONE) == target_later else early
        if key in source.conversations:
            snapshot.add_conversation(copy_of(source.conversations[key]))
    snapshot.aliases.update(early.aliases)
    replayed = apply_all(snapshot, HISTORY)
    assert sorted(replayed.conversations) == [PHONE]
    assert final(replayed) == final(live)


def test_erasing_the_phone_conversation_erases_the_link() -> None:
    state = apply_all(State(), [*HISTORY, (7, ConversationDeleted(PHONE))])
    assert state.conversations == {} and state.aliases == {}
    # Afterwards the user id alone starts a conversation of its own again.
    apply_all(state, [(8, MessageAdded(USER, msg("d", 3000)))])
    assert list(state.conversations) == [USER]


def test_merge_keeps_the_newest_within_the_cap() -> None:
    records: list[tuple[int, Record]] = [
        (i + 1, MessageAdded(USER if i % 2 else PHONE, msg(f"m{i}", 1000 + i))) for i in range(6)
    ]
    state = apply_all(State(StoreSettings(4, 365)), [*records, (7, IdentityLinked(USER, PHONE))])
    assert [m.content for m in state.conversations[PHONE].messages] == ["m2", "m3", "m4", "m5"]


def test_typed_phone_numbers_normalize_and_user_ids_do_not() -> None:
    assert normalize_key("+34 600-000-001") == normalize_key("34600000001") == PHONE
    assert normalize_key("(34) 600.000.001") == PHONE
    assert normalize_key(f"  {USER} ") == USER


# -- a real bridge, across restarts --------------------------------------------------------


def test_identity_linking_holds_across_restarts_of_a_real_bridge(tmp_path: Path) -> None:
    var = tmp_path / "var"
    graph = FakeGraph()
    with serve_in_thread(graph.app()) as graph_url:
        env = graph_env(var, graph_url)

        def say(text: str, *sender: str) -> None:
            before = len(graph.sent)
            result = run(["simulate", text, *sender], env)
            assert result.returncode == 0, result.stderr

            async def replied() -> None:
                await eventually(lambda: len(graph.sent) > before, 10, "the reply")

            asyncio.run(replied())

        # 1. A username-only user: their own conversation, replies to the user id.
        server = start_serve(var, env=env)
        say("hola, soy @vera", "--from", USER)
        assert graph.sent[-1]["to"] == USER
        server.stop(signal.SIGTERM)  # a clean stop: the link state goes through a snapshot

        # 2. After a restart the same user shows a phone: one conversation, under the phone.
        server = start_serve(var, env=env)
        say("mi número", "--from", PHONE, "--user-id", USER, "--name", "Vera")
        assert graph.sent[-1]["to"] == PHONE
        server.proc.kill()  # a crash: the link is replayed from the journal
        server.proc.wait()

        # 3. After the crash, the user id alone still lands in the phone's conversation.
        server = start_serve(var, env=env)
        say("otra vez sin número", "--from", USER)
        assert graph.sent[-1]["to"] == PHONE
        rows = admin_json(["list"], env)
        shown = admin_json(["show", USER], env)  # an operator may name either id
        code, _ = server.stop()
    assert code == 0
    assert [r["key"] for r in rows] == [PHONE]
    assert shown["key"] == PHONE and shown["name"] == "Vera"
    assert [m["content"] for m in shown["messages"] if m["role"] == "user"] == [
        "hola, soy @vera",
        "mi número",
        "otra vez sin número",
    ]
    state = stored(var)
    assert list(state.conversations) == [PHONE] and state.aliases == {USER: PHONE}
    # Erasing the person erases the link too.
    deleted = admin(["delete", USER], env)
    assert deleted.returncode == 0, deleted.stderr
    assert f"deleted conversation {PHONE}" in deleted.stdout
    state = stored(var)
    assert state.conversations == {} and state.aliases == {}
