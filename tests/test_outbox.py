"""The outbox draining a real store through the Graph client to a local fake Graph API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from pytest_aiohttp import AiohttpServer

from bridge.conversations import Message
from bridge.outbox import Outbox
from bridge.records import MessageAdded, OutboxItem, OutboxQueued
from bridge.state import State
from bridge.store.memory import MemoryStore
from bridge.whatsapp.graph import GraphClient
from tests.conftest import eventually
from tests.fakes.graph import TOKEN, FakeGraph


@dataclass
class Rig:
    fake: FakeGraph
    store: MemoryStore
    outbox: Outbox

    async def queue(self, key: str, n: int, text: str | None = None) -> str:
        rid = f"out.{key}.{n}"
        body = text or f"reply {n}"
        await self.store.commit(
            [
                MessageAdded(
                    key, Message("assistant", body, 1_700_000_000_000 + n, id=rid, status="pending")
                ),
                OutboxQueued(OutboxItem(rid, key, key, body, n)),
            ]
        )
        self.outbox.notify()
        return rid

    def status(self, key: str) -> list[tuple[str | None, str | None]]:
        view = self.store.state.get(key)
        assert view is not None
        return [(m.status, m.error) for m in view.messages]


MakeRig = Callable[[], Awaitable[Rig]]


@pytest.fixture
async def rig(aiohttp_server: AiohttpServer) -> AsyncIterator[Rig]:
    fake = FakeGraph()
    server = await aiohttp_server(fake.app())
    client = GraphClient(str(server.make_url("")), "v21.0", "1", TOKEN, timeout=2)
    store = MemoryStore(State())
    outbox = Outbox(store, client, profile="test", base_delay=0.01, max_delay=0.05)
    rig = Rig(fake, store, outbox)
    yield rig
    await outbox.stop()
    await client.close()


async def test_sent_reply_is_marked_sent_with_its_wamid(rig: Rig) -> None:
    rig.outbox.start()
    await rig.queue("346", 1)
    assert await rig.outbox.drain(5)
    view = rig.store.state.get("346")
    assert view is not None
    assert (view.messages[-1].status, view.messages[-1].wamids) == ("sent", ("wamid.FAKE000001",))
    assert rig.fake.sent[0]["to"] == "346"


async def test_server_error_is_retried_and_sent_once(rig: Rig) -> None:
    rig.fake.fail_next(500, times=2)
    rig.outbox.start()
    await rig.queue("346", 1)
    assert await rig.outbox.drain(5)
    assert len(rig.fake.requests) == 3 and len(rig.fake.sent) == 1
    assert rig.status("346") == [("sent", None)]


async def test_rate_limit_130429_is_retried(rig: Rig) -> None:
    rig.fake.fail_next(400, 130429)
    rig.outbox.start()
    await rig.queue("346", 1)
    assert await rig.outbox.drain(5)
    assert rig.status("346") == [("sent", None)]


async def test_closed_window_131047_fails_without_retry(rig: Rig) -> None:
    rig.fake.fail_next(400, 131047)
    rig.outbox.start()
    await rig.queue("346", 1)
    assert await rig.outbox.drain(5)
    assert len(rig.fake.requests) == 1
    ((status, error),) = rig.status("346")
    assert status == "failed" and error is not None and error.startswith("131047")


async def test_expired_token_keeps_the_reply_queued(rig: Rig) -> None:
    rig.fake.token = "rotated"  # our token is no longer valid
    rig.outbox.start()
    await rig.queue("346", 1)
    await eventually(lambda: len(rig.fake.requests) >= 2, what="a retry after 190")
    assert list(rig.store.state.outbox) == ["out.346.1"]
    rig.fake.token = TOKEN  # operator fixed the token
    assert await rig.outbox.drain(5)
    assert rig.status("346") == [("sent", None)]


async def test_replies_to_one_user_stay_in_order_across_a_retry(rig: Rig) -> None:
    rig.fake.fail_next(500)
    rig.outbox.start()
    for n in range(3):
        await rig.queue("346", n)
    assert await rig.outbox.drain(5)
    assert [m["text"]["body"] for m in rig.fake.sent] == ["reply 0", "reply 1", "reply 2"]


async def test_items_left_by_a_previous_run_are_sent_on_start(rig: Rig) -> None:
    await rig.queue("346", 1)
    await rig.queue("347", 2)
    assert rig.fake.requests == []
    rig.outbox.start()
    assert await rig.outbox.drain(5)
    assert sorted(m["to"] for m in rig.fake.sent) == ["346", "347"]


async def test_partial_failure_does_not_resend_sent_parts(rig: Rig) -> None:
    rig.fake.succeed_next()
    rig.fake.fail_next(500)
    rig.outbox.start()
    await rig.queue("346", 1, text="a" * 4096 + "b" * 5)
    assert await rig.outbox.drain(5)
    assert [m["text"]["body"] for m in rig.fake.sent] == ["a" * 4096, "b" * 5]
    view = rig.store.state.get("346")
    assert view is not None and view.messages[-1].wamids == ("wamid.FAKE000001", "wamid.FAKE000002")
