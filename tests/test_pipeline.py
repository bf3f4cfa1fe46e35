"""The whole path over real HTTP: delivery in, assistant reply, send, status webhooks, routing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpServer

from bridge import simulate
from bridge.config import AssistantConfig
from bridge.runtime import durable_store
from bridge.store.durable import DurableStore, load_state
from bridge.whatsapp.graph import GraphClient
from tests.conftest import APP_SECRET, Bridge, StartBridge, eventually, make_profile
from tests.fakes.graph import TOKEN, FakeGraph
from tests.fakes.llm import FakeLLM


async def llm_server(aiohttp_server: AiohttpServer) -> tuple[FakeLLM, str]:
    fake = FakeLLM()
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("")).rstrip("/")


def openai_profile(tmp_path: Path, url: str, **assistant: Any) -> Any:
    return make_profile(
        tmp_path, assistant=AssistantConfig(kind="openai", url=url, timeout=5, **assistant)
    )


async def test_slow_assistant_does_not_delay_the_200(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    fake, url = await llm_server(aiohttp_server)
    fake.gate.clear()  # the model "thinks" until the test lets it answer
    bridge = await start_bridge([openai_profile(tmp_path, url)])
    resp = await bridge.post_text("Are you open today?")
    assert resp.status == 200  # answered while the assistant is still blocked
    await eventually(lambda: len(fake.requests) == 1, what="the assistant to be asked")
    conv = bridge.state().get("34600000001")
    assert conv is not None and [m.role for m in conv.messages] == ["user"]
    fake.gate.set()
    await bridge.settle()
    conv = bridge.state().get("34600000001")
    assert conv is not None
    assert [(m.role, m.content) for m in conv.messages] == [
        ("user", "Are you open today?"),
        ("assistant", "Reply to: Are you open today?"),
    ]


async def test_assistant_gets_history_as_context(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    fake, url = await llm_server(aiohttp_server)
    bridge = await start_bridge([openai_profile(tmp_path, url, system_prompt="Be brief.")])
    await bridge.post_text("first")
    await bridge.settle()
    await bridge.post_text("second")
    await bridge.settle()
    assert fake.requests[-1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "Reply to: first"},
        {"role": "user", "content": "second"},
    ]


async def test_failing_assistant_sends_the_fallback_reply(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    fake, url = await llm_server(aiohttp_server)
    fake.fail_status = 503
    bridge = await start_bridge([openai_profile(tmp_path, url, fallback_reply="Back soon!")])
    await bridge.post_text("hello?")
    await bridge.settle()
    conv = bridge.state().get("34600000001")
    assert conv is not None
    assert [(m.role, m.content) for m in conv.messages][-1] == ("assistant", "Back soon!")


async def test_failing_assistant_without_fallback_sends_nothing(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    fake, url = await llm_server(aiohttp_server)
    fake.fail_status = 500
    bridge = await start_bridge([openai_profile(tmp_path, url)])
    await bridge.post_text("hello?")
    await eventually(lambda: len(fake.requests) == 1)
    await bridge.settle()
    conv = bridge.state().get("34600000001")
    assert conv is not None and [m.role for m in conv.messages] == ["user"]


async def test_replies_to_one_user_come_in_order(start_bridge: StartBridge) -> None:
    bridge = await start_bridge()
    body = simulate.delivery(
        simulate.change_value([simulate.text_message(f"n{i}", "34611111111") for i in range(5)])
    )
    await bridge.post(body)
    await bridge.settle()
    conv = bridge.state().get("34611111111")
    assert conv is not None
    replies = [m.content for m in conv.messages if m.role == "assistant"]
    assert replies == [f"Echo: n{i}" for i in range(5)]


@pytest.fixture
async def graph_bridge(start_bridge: StartBridge, aiohttp_server: AiohttpServer) -> Bridge:
    """A bridge sending through a fake Graph API, which assigns wamids as Meta does."""
    server = await aiohttp_server(FakeGraph().app())
    client = GraphClient(str(server.make_url("")), "v21.0", "1", TOKEN, timeout=2)
    return await start_bridge(senders={"default": client})


async def test_reply_is_marked_sent_then_status_webhooks_move_it_forward(
    graph_bridge: Bridge,
) -> None:
    bridge = graph_bridge
    await bridge.post_text("track me")
    await bridge.settle()
    conv = bridge.state().get("34600000001")
    assert conv is not None
    reply = conv.messages[-1]
    assert (reply.role, reply.status) == ("assistant", "sent")
    (wamid,) = reply.wamids
    for state in ("delivered", "read", "delivered"):  # a late "delivered" must not undo "read"
        status = simulate.status(wamid, state, "34600000001")
        resp = await bridge.post(simulate.delivery(simulate.change_value(statuses=[status])))
        assert resp.status == 200
    conv = bridge.state().get("34600000001")
    assert conv is not None and conv.messages[-1].status == "read"


async def test_failed_status_records_the_error(graph_bridge: Bridge) -> None:
    bridge = graph_bridge
    await bridge.post_text("will fail")
    await bridge.settle()
    conv = bridge.state().get("34600000001")
    assert conv is not None
    wamid = conv.messages[-1].wamids[0]
    status = simulate.status(wamid, "failed", "34600000001", error_code=131047)
    await bridge.post(simulate.delivery(simulate.change_value(statuses=[status])))
    conv = bridge.state().get("34600000001")
    assert conv is not None
    assert (conv.messages[-1].status, conv.messages[-1].error) == ("failed", "131047: error")


async def test_only_statuses_that_move_a_reply_are_journaled(
    aiohttp_server: AiohttpServer, start_bridge: StartBridge, tmp_path: Path
) -> None:
    server = await aiohttp_server(FakeGraph().app())
    client = GraphClient(str(server.make_url("")), "v21.0", "1", TOKEN, timeout=2)
    profile = make_profile(tmp_path)
    bridge = await start_bridge([profile], store_factory=durable_store, senders={"default": client})
    await bridge.post_text("track me")
    await bridge.settle()
    store = bridge.runtimes["default"].store
    assert isinstance(store, DurableStore)
    conv = bridge.state().get("34600000001")
    assert conv is not None
    (wamid,) = conv.messages[-1].wamids

    async def post_status(message_id: str, state: str) -> None:
        status = simulate.status(message_id, state, "34600000001")
        resp = await bridge.post(simulate.delivery(simulate.change_value(statuses=[status])))
        assert resp.status == 200

    await eventually(lambda: store.journal.idle, what="the journal to be idle")
    fsyncs = store.journal.fsyncs
    await post_status(wamid, "read")
    assert store.journal.fsyncs == fsyncs + 1  # moved the reply: durable before the 200
    for message_id, state in ((wamid, "read"), (wamid, "delivered"), ("wamid.other", "read")):
        await post_status(message_id, state)  # redelivered, late, not ours: nothing to record
    assert store.journal.fsyncs == fsyncs + 1
    reloaded = load_state(profile).get("34600000001")
    assert reloaded is not None and reloaded.messages[-1].status == "read"


@pytest.fixture
async def shop_and_clinic(start_bridge: StartBridge, tmp_path: Path) -> Bridge:
    """Two profiles of one Meta app (one app secret), numbers 111 and 222."""
    shop = make_profile(tmp_path, "shop", phone_number_id="111")
    clinic = make_profile(tmp_path, "clinic", phone_number_id="222")
    return await start_bridge([shop, clinic])


async def test_deliveries_are_routed_by_phone_number_id(shop_and_clinic: Bridge) -> None:
    bridge = shop_and_clinic
    body = simulate.delivery(
        simulate.change_value(
            [simulate.text_message("for shop", "34600000001")], phone_number_id="111"
        ),
        simulate.change_value(
            [simulate.text_message("for clinic", "34600000002")], phone_number_id="222"
        ),
    )
    resp = await bridge.post(body)
    assert await resp.json() == {"recorded": 2, "duplicates": 0}
    assert list(bridge.state("shop").conversations) == ["34600000001"]
    assert list(bridge.state("clinic").conversations) == ["34600000002"]


async def test_profile_path_routes_explicitly(start_bridge: StartBridge, tmp_path: Path) -> None:
    shop = make_profile(tmp_path, "shop", phone_number_id="111")
    clinic = make_profile(tmp_path, "clinic", phone_number_id="222", app_secret="clinic-secret")
    bridge = await start_bridge([shop, clinic])
    raw = simulate.encode(
        simulate.delivery(simulate.change_value([simulate.text_message("hi", "34600000003")]))
    )
    ok = await bridge.client.post(
        "/webhook/clinic", data=raw, headers=simulate.signed_headers(raw, "clinic-secret")
    )
    assert ok.status == 200
    assert list(bridge.state("clinic").conversations) == ["34600000003"]
    # The shop's secret does not sign for the clinic, and unknown profiles are 404.
    wrong = await bridge.client.post(
        "/webhook/clinic", data=raw, headers=simulate.signed_headers(raw, APP_SECRET)
    )
    assert wrong.status == 403
    missing = await bridge.client.post(
        "/webhook/nope", data=raw, headers=simulate.signed_headers(raw, APP_SECRET)
    )
    assert missing.status == 404


async def test_unroutable_change_is_acknowledged_not_recorded(shop_and_clinic: Bridge) -> None:
    bridge = shop_and_clinic
    body = simulate.delivery(
        simulate.change_value(
            [simulate.text_message("lost?", "34600000004")], phone_number_id="999"
        )
    )
    resp = await bridge.post(body)
    assert resp.status == 200
    assert not bridge.state("shop").conversations and not bridge.state("clinic").conversations
