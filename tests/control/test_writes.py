"""The operator's writes decide on the settled state: what that prevents on a live store."""

from __future__ import annotations

import asyncio

import pytest

from bridge.control import OPERATIONS, ControlContext
from bridge.control.protocol import ControlError
from bridge.control.writes import import_arguments
from bridge.conversations import Message
from bridge.records import OutboxDone
from tests.persistence.support import NOW, Opened, reply, user

ANA = "34600000001"


async def test_an_import_never_puts_back_a_reply_a_send_just_took_off_the_outbox(
    opened: Opened,
) -> None:
    """An import merges by erasing and re-adding the conversation, and queues its waiting
    replies again. A send finishing at that moment must not be queued again (sent twice)."""
    store = await opened()
    await store.commit([user(ANA, 1), *reply(ANA, 2)])
    sent = asyncio.ensure_future(store.commit([OutboxDone(f"out.{ANA}.2")]))
    await asyncio.sleep(0)  # the send's record is on its way to the disk
    args = import_arguments([(ANA, [Message("user", "from the old system", NOW - 1000)])])
    result = await OPERATIONS.run("import", ControlContext(store), args)
    await sent
    assert result["messages"] == 1
    assert store.state.outbox == {}
    conv = store.state.conversations[ANA]
    assert [m.content for m in conv.messages] == ["from the old system", "hello 1", "reply 2"]


async def test_an_import_stops_between_conversations_when_its_requester_hangs_up(
    opened: Opened,
) -> None:
    store = await opened()
    calls = 0

    def gone() -> bool:
        nonlocal calls
        calls += 1
        return calls > 2

    args = import_arguments([(f"3460000000{n}", [Message("user", "x", NOW)]) for n in range(5)])
    with pytest.raises(ControlError, match="import stopped after 2 of 5 conversations"):
        await OPERATIONS.run("import", ControlContext(store, client_gone=gone), args)
    assert len(store.state.conversations) == 2  # each one whole, the rest not started
