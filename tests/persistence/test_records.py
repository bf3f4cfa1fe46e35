"""Stored records are parsed strictly: a wrong type is corruption, never state."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.conversations import Message
from bridge.errors import CorruptStateError
from bridge.records import MessageAdded, record_from_dict
from bridge.store.durable import load_state
from tests.persistence.support import NOW, Opened, crash


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("id", 12345, "id must be a non-empty string, got 12345"),
        ("id", ["a"], 'id must be a non-empty string, got ["a"]'),
        ("timestamp", 1e20, "timestamp must be whole milliseconds, got 1e+20"),
        ("timestamp", 10**20, "timestamp must be whole milliseconds, got 100000000000000000000"),
        ("role", "robot", "role must be 'user' or 'assistant', got 'robot'"),
        ("wamids", ["w", 1], 'wamids must be a list of strings, got ["w",1]'),
    ],
)
def test_a_message_of_the_wrong_type_is_refused(field: str, value: object, problem: str) -> None:
    data = {"role": "user", "content": "x", "timestamp": NOW, field: value}
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("+", r"\+")):
        record_from_dict({"t": "m", "k": "34600000001", "m": data})


async def test_a_journaled_int_id_is_reported_as_corruption_not_loaded(
    opened: Opened, tmp_path: Path
) -> None:
    store = await opened()
    bad = Message("user", "x", NOW, id=12345)  # type: ignore[arg-type]
    await store.commit([MessageAdded("34600000001", bad)])
    await crash(store)  # in memory it would break every snapshot; on disk it is refused
    with pytest.raises(CorruptStateError, match="malformed record"):
        load_state(store.profile)
