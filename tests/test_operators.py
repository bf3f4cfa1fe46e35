"""Humans in the loop inside one bridge: the mode gates of the replier and the outbox,
operators' messages, keywords and their notifications (a real app, a local fake Graph API)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from bridge import simulate
from bridge.config import ProfileConfig
from bridge.conversations import ASSISTANT, OPTED_OUT, PAUSED, Message
from bridge.operators import ModeConflict, NoSuchConversation, Operators, WindowClosed
from bridge.records import MessageAdded, ModeChanged, Record
from bridge.state import State
from bridge.store.memory import MemoryStore
from bridge.whatsapp.graph import GraphClient
from tests.conftest import PHONE_NUMBER_ID, Bridge, StartBridge, eventually, make_profile
from tests.fakes.graph import TOKEN, FakeGraph
from tests.test_bursts import CountingEcho, replies

ANA = "34600000001"
Rig = Callable[..., Awaitable[tuple[Bridge, FakeGraph]]]


@pytest.fixture
def rig(start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path) -> Rig:
    """A bridge whose replies go to a fake Graph API; profile settings as keyword arguments."""

    async def build(
        assistant: CountingEcho | None = None, **profile: Any
    ) -> tuple[Bridge, FakeGraph]:
        graph = FakeGraph()
        server = await aiohttp_server(graph.app())
        config = replace(make_profile(tmp_path), **profile)
        sender = GraphClient(str(server.make_url("")), "v21.0", PHONE_NUMBER_ID, TOKEN, timeout=2)
        bridge = await start_bridge(
            profiles=[config],
            senders={"default": sender},
            assistants={"default": assistant} if assistant else None,
        )
        return bridge, graph

    return build


def ops(bridge: Bridge) -> Operators:
    return bridge.runtimes["default"].operators


def mode(bridge: Bridge, key: str = ANA) -> str:
    view = bridge.state().get(key)
    assert view is not None
    return view.mode.current(int(time.time() * 1000)) if view.mode else ASSISTANT


async def test_a_paused_conversation_is_recorded_and_not_answered(rig: Rig) -> None:
    bridge, graph = await rig()
    await bridge.post_text("hola")
    await bridge.settle()
    await ops(bridge).pause(ANA, who="ana", why="big order")
    await bridge.post_text("¿me atiende alguien?")
    await bridge.post_text("hola?", sender="34600000002")  # another user: answered
    await bridge.settle()
    view = bridge.state().get(ANA)
    assert view is not None and [m.content for m in view.messages] == [
        "hola",
        "Echo: hola",
        "¿me atiende alguien?",
    ]
    assert graph.bodies() == ["Echo: hola", "Echo: hola?"]
    assert view.mode is not None and (view.mode.by, view.mode.reason) == ("ana", "big order")
    await ops(bridge).resume(ANA, who="ana")
    await bridge.post_text("gracias")
    await bridge.settle()
    # Answered again; the echo repeats every user message since the last reply (context).
    assert graph.bodies()[2:] == ["Echo: ¿me atiende alguien? / gracias"]


async def test_a_burst_waiting_when_a_person_takes_over_gets_no_reply(rig: Rig) -> None:
    echo = CountingEcho()
    bridge, graph = await rig(echo, reply_debounce_seconds=0.3)
    await bridge.post_text("hola")
    await bridge.post_text("quiero devolver un pedido")
    await ops(bridge).pause(ANA, who="ana")  # while the debounce waits
    await bridge.settle()
    assert echo.calls == 0
    assert replies(bridge.state()) == []


async def test_a_reply_the_assistant_was_thinking_about_is_dropped_on_a_pause(rig: Rig) -> None:
    echo = CountingEcho()
    echo.gate = asyncio.Event()
    bridge, graph = await rig(echo)
    await bridge.post_text("hola")
    await asyncio.wait_for(echo.asked.wait(), 5)
    await ops(bridge).pause(ANA, who="ana")
    echo.gate.set()
    await bridge.settle()
    assert echo.calls == 1
    assert replies(bridge.state()) == [] and graph.sent == []


async def test_a_queued_assistant_reply_is_not_sent_after_the_user_opts_out(rig: Rig) -> None:
    bridge, graph = await rig(opt_out_reply="No te escribiremos más.")
    graph.fail_all = (500, 2)  # Graph is down: the reply waits in the outbox
    await bridge.post_text("hola")
    await eventually(lambda: len(graph.requests) >= 1, what="a send attempt")
    await bridge.post_text("STOP")
    graph.fail_all = None
    bridge.runtimes["default"].outbox.kick()
    await bridge.settle()
    assert graph.bodies() == ["No te escribiremos más."]
    view = bridge.state().get(ANA)
    assert view is not None
    assert [(m.content, m.status, m.error) for m in view.messages if m.role == "assistant"] == [
        ("Echo: hola", "cancelled", "not sent: conversation opted_out"),
        ("No te escribiremos más.", "sent", None),
    ]


async def test_an_operator_message_is_sent_recorded_and_pauses_for_handoff_minutes(
    rig: Rig,
) -> None:
    bridge, graph = await rig(handoff_minutes=30)
    await bridge.post_text("quiero hablar con alguien")
    await bridge.settle()
    before = int(time.time() * 1000)
    outcome = await ops(bridge).send(ANA, "Hola, soy Ana. ¿En qué te ayudo?", operator="ana")
    await bridge.settle()
    assert graph.bodies() == ["Echo: quiero hablar con alguien", "Hola, soy Ana. ¿En qué te ayudo?"]
    view = bridge.state().get(ANA)
    assert view is not None
    sent = view.messages[-1]
    assert (sent.role, sent.id, sent.status, sent.extra) == (
        "assistant",
        outcome.id,
        "sent",
        {"operator": "ana"},
    )
    assert view.mode is not None and view.mode.mode == PAUSED
    assert view.mode.until_ms is not None
    assert before + 30 * 60_000 <= view.mode.until_ms <= int(time.time() * 1000) + 30 * 60_000
    await bridge.post_text("vale")
    await bridge.settle()
    assert graph.bodies()[-1] == "Hola, soy Ana. ¿En qué te ayudo?"  # the assistant kept quiet


async def test_handoff_minutes_zero_sends_without_pausing(rig: Rig) -> None:
    bridge, graph = await rig(handoff_minutes=0)
    await bridge.post_text("hola")
    await bridge.settle()
    await ops(bridge).send(ANA, "Soy Ana", operator="ana")
    await bridge.post_text("gracias")
    await bridge.settle()
    assert graph.bodies() == ["Echo: hola", "Soy Ana", "Echo: gracias"]


async def test_an_operator_message_to_an_opted_out_user_is_sent_and_keeps_the_opt_out(
    rig: Rig,
) -> None:
    bridge, graph = await rig()
    await bridge.post_text("baja")
    await bridge.settle()
    assert mode(bridge) == OPTED_OUT and graph.sent == []
    await ops(bridge).send(ANA, "Confirmamos tu baja.", operator="ana")
    await bridge.settle()
    assert graph.bodies() == ["Confirmamos tu baja."]
    assert mode(bridge) == OPTED_OUT
    with pytest.raises(ModeConflict, match="opted out"):
        await ops(bridge).pause(ANA, who="ana")


async def test_a_closed_window_refuses_an_operator_message_and_writes_nothing(
    rig: Rig,
) -> None:
    bridge, graph = await rig()
    old = int(time.time() * 1000) - 25 * 3600 * 1000
    await bridge.runtimes["default"].store.commit(
        [MessageAdded(ANA, Message("user", "hola", old, id="wamid.old"), received_ms=old)]
    )
    with pytest.raises(WindowClosed, match="24-hour window .* is closed"):
        await ops(bridge).send(ANA, "¿sigues ahí?", operator="ana")
    view = bridge.state().get(ANA)
    assert view is not None and len(view.messages) == 1 and view.mode is None
    assert not bridge.state().outbox
    with pytest.raises(NoSuchConversation):
        await ops(bridge).send("34699999999", "hola", operator="ana")


async def test_keywords_ignore_case_and_accents_and_act_with_their_message(rig: Rig) -> None:
    bridge, graph = await rig(
        handoff_keywords=("humano", "agente"),
        handoff_reply="Te paso con una persona del equipo.",
        opt_in_reply="¡Bienvenido de nuevo!",
    )
    await bridge.post_text("  ¡HÚMANO! ")
    await bridge.settle()
    assert mode(bridge) == PAUSED
    assert graph.bodies() == ["Te paso con una persona del equipo."]
    view = bridge.state().get(ANA)
    assert view is not None and view.mode is not None
    assert (view.mode.by, view.mode.until_ms) == ("user", None)
    assert view.messages[-1].reply_to == view.messages[0].id  # the keyword is answered
    await bridge.post_text("Stop")
    await bridge.settle()
    assert mode(bridge) == OPTED_OUT
    await bridge.post_text("¿hola?")
    await bridge.post_text("ALTA")
    await bridge.settle()
    assert mode(bridge) == ASSISTANT
    await bridge.post_text("¿tenéis pan?")
    await bridge.settle()
    assert graph.bodies() == [
        "Te paso con una persona del equipo.",
        "¡Bienvenido de nuevo!",
        "Echo: ¿tenéis pan?",
    ]
    metrics = (await (await bridge.client.get("/metrics")).read()).decode()
    assert 'whatsapp_bridge_handoff_requests_total{profile="default"} 1.0' in metrics
    assert 'whatsapp_bridge_keywords_total{kind="opt_out",profile="default"} 1.0' in metrics


class RecordingStore(MemoryStore):
    """A memory store that keeps every committed batch."""

    def __init__(self, profile: ProfileConfig) -> None:
        super().__init__(State(profile.store_settings))
        self.batches: list[list[Record]] = []

    async def commit(self, records: Sequence[Record]) -> None:
        self.batches.append(list(records))
        await super().commit(records)


async def test_a_keyword_is_acted_on_in_the_same_commit_as_its_message(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    stores: list[RecordingStore] = []

    def factory(profile: ProfileConfig) -> RecordingStore:
        stores.append(RecordingStore(profile))
        return stores[-1]

    profile = replace(make_profile(tmp_path), opt_out_reply="Hecho.")
    bridge = await start_bridge(profiles=[profile], store_factory=factory)
    await bridge.post_text("Baja")
    await bridge.settle()
    (batch,) = [b for b in stores[0].batches if any(isinstance(r, ModeChanged) for r in b)]
    # A crash can never keep the "Baja" without its effect (the assistant would answer it).
    assert [type(r).__name__ for r in batch] == [
        "MessageAdded",
        "ModeChanged",
        "MessageAdded",
        "OutboxQueued",
    ]
    first, change, reply, _queued = batch
    assert isinstance(first, MessageAdded) and first.message.content == "Baja"
    assert isinstance(change, ModeChanged) and change.mode.mode == OPTED_OUT
    assert isinstance(reply, MessageAdded) and reply.message.reply_to == first.message.id


async def test_opt_out_and_back_in_one_delivery_ends_in_assistant_mode(rig: Rig) -> None:
    bridge, graph = await rig()
    messages = [simulate.text_message(t, ANA) for t in ("STOP", "START", "hola")]
    await bridge.post(simulate.delivery(simulate.change_value(messages)))
    await bridge.settle()
    assert mode(bridge) == ASSISTANT
    # One reply, to the message after the keywords (which the assistant sees as context).
    assert graph.bodies() == ["Echo: STOP / START / hola"]


async def test_a_handoff_is_posted_signed_to_notify_url(
    rig: Rig, aiohttp_server: AiohttpServer
) -> None:
    received: list[tuple[bytes, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers.get("X-Bridge-Signature-256", "")))
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    bridge, graph = await rig(
        handoff_keywords=("humano",),
        notify_url=str(server.make_url("/hook")),
        notify_secret="team-secret",
    )
    post = simulate.text_message("Humano", ANA)
    await bridge.post(simulate.delivery(simulate.change_value([post], names={ANA: "Ana"})))
    await eventually(lambda: bool(received), what="the notification")
    body, signature = received[0]
    expected = hmac.new(b"team-secret", body, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    data = orjson.loads(body)
    assert {k: data[k] for k in ("event", "profile", "key", "name", "message")} == {
        "event": "handoff_requested",
        "profile": "default",
        "key": ANA,
        "name": "Ana",
        "message": "Humano",
    }
    assert "346*****001" in data["text"]


async def test_delete_erases_what_the_operator_saw(rig: Rig) -> None:
    bridge, graph = await rig()
    await bridge.post_text("hola")
    await bridge.settle()
    await ops(bridge).pause(ANA, who="ana")
    outcome = await ops(bridge).delete("+34 600 000 001", who="ana")
    assert (outcome.key, outcome.messages) == (ANA, 2)
    assert bridge.state().get(ANA) is None


def test_profile_defaults_opt_out_and_in_but_no_handoff_words() -> None:
    profile = ProfileConfig(slug="x", state_dir=Path("/nonexistent"))
    assert profile.handoff_keywords == ()
    assert profile.opt_out_keywords == ("STOP", "BAJA")
    assert profile.opt_in_keywords == ("START", "ALTA")
    assert profile.handoff_minutes == 60
