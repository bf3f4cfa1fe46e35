"""Which history the replier hands the assistant: up to the message answered, newest last."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from bridge import replies
from bridge.assistants.base import Assistant, TurnLike
from bridge.config import AssistantConfig
from bridge.conversations import Conversation, Message
from bridge.records import MessageAdded
from bridge.replies import Replier
from bridge.runtime import ProfileRuntime
from bridge.state import State
from bridge.store.durable import DurableStore
from bridge.store.memory import MemoryStore
from tests.conftest import StartBridge, eventually, make_profile


class Recording(Assistant):
    kind = "recording"

    def __init__(self) -> None:
        self.histories: list[list[tuple[str, str]]] = []

    async def reply(self, key: str, history: Sequence[TurnLike]) -> str:
        self.histories.append([(t.role, t.content) for t in history])
        return ""  # no reply: keeps the conversation as it is


async def replier_over(limit: int) -> tuple[Replier, Recording]:
    store = MemoryStore(State())
    turns = [("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2")]
    turns.append(("user", "u3"))
    await store.commit(
        [
            MessageAdded("k", Message(role, text, 1_700_000_000_000 + n, id=text))
            for n, (role, text) in enumerate(turns)
        ]
    )
    assistant = Recording()
    config = AssistantConfig(history_limit=limit)
    return Replier(store, assistant, config, profile="t", on_queued=lambda key: None), assistant


async def test_history_ends_at_the_message_being_answered() -> None:
    replier, assistant = await replier_over(limit=50)
    replier.enqueue("k", "u2", "k")
    await eventually(lambda: bool(assistant.histories))
    assert assistant.histories == [[("user", "u1"), ("assistant", "a1"), ("user", "u2")]]


async def test_history_is_the_last_limit_messages() -> None:
    replier, assistant = await replier_over(limit=2)
    replier.enqueue("k", "u3", "k")
    replier.enqueue("k", "u2", "k")
    await eventually(lambda: len(assistant.histories) == 2)
    assert assistant.histories == [
        [("assistant", "a2"), ("user", "u3")],
        [("assistant", "a1"), ("user", "u2")],
    ]


async def test_a_message_no_longer_held_gets_the_latest_history() -> None:
    replier, assistant = await replier_over(limit=2)
    replier.enqueue("k", "gone", "k")
    await eventually(lambda: bool(assistant.histories))
    assert assistant.histories == [[("assistant", "a2"), ("user", "u3")]]


class Gated(Assistant):
    """Answers only once the test opens the gate: the disk can fill while it 'thinks'."""

    kind = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.asked = asyncio.Event()

    async def reply(self, key: str, history: Sequence[TurnLike]) -> str:
        self.asked.set()
        await self.gate.wait()
        return f"answer to {history[-1].content}"


async def test_a_reply_whose_commit_fails_is_recorded_once_the_disk_recovers(
    start_bridge: StartBridge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's message is acknowledged; the disk fills while the assistant thinks; the
    reply must not be dropped: it is committed and sent once space returns."""
    monkeypatch.setattr(replies, "RECORD_RETRY_BASE", 0.02)
    monkeypatch.setattr(replies, "RECORD_RETRY_MAX", 0.05)
    assistant = Gated()
    bridge = await start_bridge(store_factory=DurableStore, assistants={"default": assistant})
    assert (await bridge.post_text("hola")).status == 200
    await assistant.asked.wait()
    real_fsync = os.fsync
    failures = 0

    def disk_full(fd: int) -> None:
        nonlocal failures
        failures += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    assistant.gate.set()
    await eventually(lambda: failures >= 3, what="the reply's commit to be retried")
    monkeypatch.setattr(os, "fsync", real_fsync)
    await bridge.settle()
    conv = bridge.state().get("34600000001")
    assert conv is not None
    assert [(m.role, m.content) for m in conv.messages] == [
        ("user", "hola"),
        ("assistant", "answer to hola"),
    ]
    assert conv.messages[-1].status == "logged"  # no access token: the log-only sender


async def test_restart_answers_a_user_left_without_a_reply(tmp_path: Path) -> None:
    """What a stop during a long disk outage leaves: the user's message, no reply. The next
    start asks the assistant again."""
    profile = make_profile(tmp_path)
    store = DurableStore(profile)
    await store.open()
    await store.commit(
        [
            MessageAdded(
                "34600000001",
                Message("user", "¿abrís hoy?", 1000, id="wamid.A", type="text"),
                received_ms=int(time.time() * 1000),
            )
        ]
    )
    await store.close()
    runtime = ProfileRuntime.build(profile, store_factory=DurableStore)
    await runtime.start()
    try:
        await eventually(lambda: not runtime.store.state.outbox and runtime.replier.busy == 0)
        conv = runtime.store.state.get("34600000001")
        assert conv is not None and [m.role for m in conv.messages] == ["user", "assistant"]
    finally:
        await runtime.stop(1.0)


def conversation(*entries: tuple[str, str, str | None]) -> Conversation:
    conv = Conversation("k", 250, 0)
    for n, (role, ident, reply_to) in enumerate(entries):
        conv.append(Message(role, ident, n, id=ident, reply_to=reply_to))
    return conv


def test_unanswered_finds_a_user_message_overtaken_by_an_earlier_reply() -> None:
    """m1 and m2 arrive, the reply to m1 is recorded after m2, then a crash: m2 is owed."""
    conv = conversation(("user", "m1", None), ("user", "m2", None), ("assistant", "r1", "m1"))
    unanswered = conv.unanswered()
    assert unanswered is not None and unanswered.id == "m2"


def test_unanswered_is_none_when_every_user_message_is_answered() -> None:
    conv = conversation(
        ("user", "m1", None),
        ("user", "m2", None),
        ("assistant", "r1", "m1"),
        ("assistant", "r2", "m2"),
    )
    assert conv.unanswered() is None


def test_unanswered_answers_a_trailing_run_once_with_its_newest_message() -> None:
    conv = conversation(("user", "m1", None), ("assistant", "r1", "m1"), ("user", "m2", None))
    conv.append(Message("user", "m3", 9, id="m3"))
    unanswered = conv.unanswered()
    assert unanswered is not None and unanswered.id == "m3"


def test_unanswered_trusts_replies_of_older_versions_for_what_precedes_them() -> None:
    assert conversation(("user", "m1", None), ("assistant", "r", None)).unanswered() is None
    old = conversation(("user", "m1", None), ("assistant", "r", None), ("user", "m2", None))
    unanswered = old.unanswered()
    assert unanswered is not None and unanswered.id == "m2"


async def test_a_reply_recorded_after_later_messages_is_placed_after_what_it_answers() -> None:
    """uno, dos, tres arrive; the reply to dos is stored after tres: answering tres, the
    assistant sees the conversation in the order the user lived it."""
    store = MemoryStore(State())
    entries = [
        Message("user", "uno", 1, id="uno"),
        Message("user", "dos", 2, id="dos"),
        Message("user", "tres", 3, id="tres"),
        Message("assistant", "r-dos", 4, id="out.1", reply_to="dos"),
    ]
    await store.commit([MessageAdded("k", m) for m in entries])
    assistant = Recording()
    replier = Replier(store, assistant, AssistantConfig(), profile="t", on_queued=lambda k: None)
    replier.enqueue("k", "tres", "k")
    await eventually(lambda: bool(assistant.histories))
    assert assistant.histories == [
        [("user", "uno"), ("user", "dos"), ("assistant", "r-dos"), ("user", "tres")]
    ]


async def test_a_reply_stored_after_a_later_message_goes_right_after_its_own() -> None:
    """Replicas: one replica's reply to u1 was stored after u2, which another replica
    recorded and died before answering; the answer to u3 must see u2 as unanswered."""
    store = MemoryStore(State())
    turns = [("user", "u1", None), ("user", "u2", None), ("assistant", "a1", "u1")]
    turns.append(("user", "u3", None))
    await store.commit(
        [
            MessageAdded("k", Message(role, text, 1_700_000_000_000 + n, id=text, reply_to=to))
            for n, (role, text, to) in enumerate(turns)
        ]
    )
    assistant = Recording()
    replier = Replier(store, assistant, AssistantConfig(), profile="t", on_queued=lambda key: None)
    replier.enqueue("k", "u3", "k")
    await eventually(lambda: bool(assistant.histories))
    assert assistant.histories == [
        [("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("user", "u3")]
    ]
