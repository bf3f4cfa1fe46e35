"""Replies that send media by link, each file its own durable outbox part; read receipts
with the typing indicator when a reply is being made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from structlog.testing import capture_logs

from bridge.assistants.base import Reply
from bridge.assistants.openai import split_images
from bridge.config import AssistantConfig
from bridge.whatsapp.graph import GraphClient
from bridge.whatsapp.sender import OutboundMedia
from tests.assistants.test_http import FakeBackend
from tests.conftest import APP_SECRET, Bridge, StartBridge, make_profile
from tests.fakes.graph import TOKEN, FakeGraph
from tests.fakes.llm import FakeLLM

PHONE = "34600000001"
SALADO = "https://shop.example/fotos/salado.jpg"


async def serve_backend(aiohttp_server: AiohttpServer, answer: dict[str, Any]) -> str:
    backend = FakeBackend()
    backend.answer(orjson.dumps(answer))
    app = web.Application()
    app.router.add_post("/{tail:.*}", backend.handle)
    return str((await aiohttp_server(app)).make_url("/bot"))


async def graph_bridge(
    start_bridge: StartBridge,
    aiohttp_server: AiohttpServer,
    tmp_path: Path,
    assistant: AssistantConfig,
    graph: FakeGraph | None = None,
    **profile: Any,
) -> tuple[Bridge, FakeGraph]:
    graph = graph or FakeGraph()
    url = str((await aiohttp_server(graph.app())).make_url("")).rstrip("/")
    config = make_profile(
        tmp_path, access_token=TOKEN, graph_url=url, assistant=assistant, **profile
    )
    sender = GraphClient(url, "v21.0", "1", TOKEN, timeout=2)
    return await start_bridge([config], senders={"default": sender}), graph


async def test_the_http_backends_media_go_by_link_after_the_text(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    url = await serve_backend(
        aiohttp_server,
        {
            "reply": "Aquí tienes",
            "media": [
                {"type": "image", "url": SALADO, "caption": "Salado"},
                {
                    "type": "document",
                    "url": "https://shop.example/lista.pdf",
                    "filename": "lista.pdf",
                },
            ],
        },
    )
    bridge, graph = await graph_bridge(
        start_bridge, aiohttp_server, tmp_path, AssistantConfig(kind="http", url=url)
    )
    await bridge.post_text("¿fotos de salado?")
    await bridge.settle()
    assert graph.bodies() == ["Aquí tienes"]
    assert graph.media_sent() == [
        {"type": "image", "link": SALADO, "caption": "Salado"},
        {"type": "document", "link": "https://shop.example/lista.pdf", "filename": "lista.pdf"},
    ]
    reply = bridge.state().conversations[PHONE].messages[-1]
    assert reply.content == "Aquí tienes\n[image] Salado\n[document] lista.pdf"
    assert reply.status == "sent" and len(reply.wamids) == 3
    tags = [m["biz_opaque_callback_data"] for m in graph.sent]
    assert tags == [f"{reply.id}:0", f"{reply.id}:1", f"{reply.id}:2"]


async def test_a_failed_media_part_is_retried_without_sending_the_text_again(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    url = await serve_backend(
        aiohttp_server,
        {"reply": "Mira", "media": [{"type": "image", "url": SALADO, "caption": "Salado"}]},
    )
    graph = FakeGraph()
    graph.succeed_next()
    graph.fail_next(500, 131000)  # the image: Meta's trouble, retried
    bridge, graph = await graph_bridge(
        start_bridge, aiohttp_server, tmp_path, AssistantConfig(kind="http", url=url), graph
    )
    await bridge.post_text("¿fotos?")
    await bridge.settle(timeout=10)
    assert graph.bodies() == ["Mira"]
    assert graph.media_sent() == [{"type": "image", "link": SALADO, "caption": "Salado"}]
    reply = bridge.state().conversations[PHONE].messages[-1]
    assert reply.status == "sent" and len(reply.wamids) == 2


async def test_markdown_images_from_a_model_become_image_messages(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    llm = FakeLLM()
    llm.answer = f"Claro:\n\n![Salado]({SALADO})\n\n¿Algo más?"
    url = str((await aiohttp_server(llm.app())).make_url("")).rstrip("/")
    bridge, graph = await graph_bridge(
        start_bridge, aiohttp_server, tmp_path, AssistantConfig(kind="openai", url=url)
    )
    await bridge.post_text("fotos")
    await bridge.settle()
    assert graph.bodies() == ["Claro:\n\n¿Algo más?"]
    assert graph.media_sent() == [{"type": "image", "link": SALADO, "caption": "Salado"}]


def test_markdown_split_keeps_text_only_replies_as_they_are() -> None:
    assert split_images("no images here [link](https://x.example)") == (
        "no images here [link](https://x.example)"
    )
    assert split_images("![](https://x.example/a.png)") == Reply(
        "", (OutboundMedia("image", "https://x.example/a.png"),)
    )
    assert split_images("![x](javascript:alert(1))") == "![x](javascript:alert(1))"


@pytest.mark.parametrize(
    "media",
    [
        [{"type": "sticker", "url": SALADO}],
        [{"type": "image", "url": "file:///etc/passwd"}],
        [{"type": "image"}],
        "not a list",
    ],
)
async def test_media_whatsapp_cannot_send_fail_the_answer(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path, media: Any
) -> None:
    url = await serve_backend(aiohttp_server, {"reply": "x", "media": media})
    bridge, graph = await graph_bridge(
        start_bridge,
        aiohttp_server,
        tmp_path,
        AssistantConfig(kind="http", url=url, fallback_reply="Perdona, un momento"),
    )
    with capture_logs() as logs:
        await bridge.post_text("fotos")
        await bridge.settle()
    assert graph.bodies() == ["Perdona, un momento"] and graph.media_sent() == []
    assert [e for e in logs if e["event"] == "assistant_failed"]


async def test_a_reply_marks_the_message_read_with_the_typing_indicator(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    bridge, graph = await graph_bridge(
        start_bridge, aiohttp_server, tmp_path, AssistantConfig(kind="echo")
    )
    resp = await bridge.post_text("hola", wamid="wamid.READ1")
    assert resp.status == 200
    await bridge.settle()
    assert graph.read_receipts == [
        {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": "wamid.READ1",
            "typing_indicator": {"type": "text"},
        }
    ]
    assert graph.bodies() == ["Echo: hola"]


async def test_a_failing_read_receipt_never_blocks_the_reply(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    graph = FakeGraph()
    graph.receipts_fail = True
    bridge, graph = await graph_bridge(
        start_bridge, aiohttp_server, tmp_path, AssistantConfig(kind="echo"), graph
    )
    with capture_logs() as logs:
        await bridge.post_text("hola")
        await bridge.settle()
    assert graph.bodies() == ["Echo: hola"]
    assert [e["event"] for e in logs].count("read_receipt_failed") == 1


async def test_read_receipts_can_be_switched_off(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    bridge, graph = await graph_bridge(
        start_bridge,
        aiohttp_server,
        tmp_path,
        AssistantConfig(kind="echo"),
        read_receipts=False,
    )
    await bridge.post_text("hola")
    await bridge.settle()
    assert graph.read_receipts == [] and graph.bodies() == ["Echo: hola"]


async def test_a_media_part_whose_answer_was_lost_is_confirmed_not_sent_again(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    url = await serve_backend(
        aiohttp_server, {"reply": "", "media": [{"type": "image", "url": SALADO}]}
    )
    graph = FakeGraph()
    graph.lose_answers = 1  # Meta takes the image; its answer never reaches the bridge
    bridge, graph = await graph_bridge(
        start_bridge,
        aiohttp_server,
        tmp_path,
        AssistantConfig(kind="http", url=url),
        graph,
        send_reconcile_seconds=10.0,
    )
    graph.report_to(str(bridge.client.make_url("/webhook")), APP_SECRET)
    await bridge.post_text("una foto")
    await bridge.settle(timeout=15)
    assert graph.media_sent() == [{"type": "image", "link": SALADO}]  # once
    reply = bridge.state().conversations[PHONE].messages[-1]
    assert (reply.content, reply.status) == ("[image]", "sent")
    assert reply.wamids == ("wamid.FAKE000001",)
