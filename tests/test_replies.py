"""Which history the replier hands the assistant: up to the message answered, newest last."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.assistants.base import Assistant, TurnLike
from bridge.config import AssistantConfig
from bridge.conversations import Message
from bridge.records import MessageAdded
from bridge.replies import Replier
from bridge.state import State
from bridge.store.memory import MemoryStore
from tests.conftest import eventually


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
