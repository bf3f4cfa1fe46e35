"""Stored media reach the assistant: `openai` with `vision` gets image content parts,
`http` with `send_media` a `media` list; only the newest few, each size-capped."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from aiohttp import web
from pytest_aiohttp import AiohttpServer

from bridge.config import AssistantConfig
from tests.assistants.test_http import FakeBackend
from tests.conftest import StartBridge
from tests.fakes.audio import ogg_opus
from tests.fakes.llm import FakeLLM
from tests.media.support import MediaRig, media_message, start_media_bridge, voice_note


def jpeg(n: int, size: int = 20_000) -> bytes:
    return b"\xff\xd8\xff\xe0" + bytes([n]) * 16 + os.urandom(size)


def data_url(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


async def llm_rig(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path, **assistant: Any
) -> tuple[MediaRig, FakeLLM]:
    llm = FakeLLM()
    llm.answer = "Sí, lo tenemos"  # not an echo of the request: that holds the images' base64
    url = str((await aiohttp_server(llm.app())).make_url("")).rstrip("/")
    config = AssistantConfig(kind="openai", url=url, timeout=5, **assistant)
    rig = await start_media_bridge(start_bridge, aiohttp_server, tmp_path, assistant=config)
    return rig, llm


async def test_vision_sends_the_image_as_a_content_part(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    rig, llm = await llm_rig(start_bridge, aiohttp_server, tmp_path, vision=True)
    photo = jpeg(1)
    rig.graph.add_media("media-1", photo)
    await rig.post(media_message("image", "media-1", photo, "image/jpeg", caption="¿tenéis?"))
    await rig.settle()
    (request,) = llm.requests
    assert request["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "[image] ¿tenéis?"},
                {"type": "image_url", "image_url": {"url": data_url(photo)}},
            ],
        }
    ]


async def test_vision_sends_only_the_newest_images_under_the_size_cap(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    rig, llm = await llm_rig(
        start_bridge,
        aiohttp_server,
        tmp_path,
        vision=True,
        media_max_items=2,
        media_max_bytes=100_000,
    )
    photos = [jpeg(1), jpeg(2), jpeg(3, size=200_000), jpeg(4)]
    for n, photo in enumerate(photos):
        rig.graph.add_media(f"media-{n}", photo)
        await rig.post(media_message("image", f"media-{n}", photo, "image/jpeg"))
        await rig.settle()
    last = llm.requests[-1]["messages"]
    users = [m for m in last if m["role"] == "user"]
    with_image = [
        m["content"][1]["image_url"]["url"] for m in users if isinstance(m["content"], list)
    ]
    # The newest two under the cap: the third photo is too large, so the second is sent.
    assert with_image == [data_url(photos[1]), data_url(photos[3])]
    assert users[0]["content"] == "[image]"


async def test_without_vision_the_model_reads_text_only(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    rig, llm = await llm_rig(start_bridge, aiohttp_server, tmp_path)
    photo = jpeg(1)
    rig.graph.add_media("media-1", photo)
    await rig.post(media_message("image", "media-1", photo, "image/jpeg", caption="hola"))
    await rig.settle()
    assert llm.requests[0]["messages"] == [{"role": "user", "content": "[image] hola"}]


async def test_the_http_backend_gets_the_media_of_each_message(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    backend = FakeBackend()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", backend.handle)
    url = str((await aiohttp_server(app)).make_url("/bot"))
    config = AssistantConfig(kind="http", url=url, send_media=True)
    rig = await start_media_bridge(start_bridge, aiohttp_server, tmp_path, assistant=config)
    pdf = b"%PDF-1.7\n" + os.urandom(5000)
    audio = ogg_opus(3)
    rig.graph.add_media("media-doc", pdf, "application/pdf")
    rig.graph.add_media("media-v", audio, "audio/ogg; codecs=opus")
    document = media_message(
        "document", "media-doc", pdf, "application/pdf", filename="lista.pdf", caption="precios"
    )
    await rig.post(document)
    await rig.settle()
    await rig.post(voice_note("media-v", audio))
    await rig.settle()
    messages = backend.seen[-1].body["messages"]
    assert [m["content"] for m in messages] == [
        "[document] lista.pdf precios",
        "shipped",
        "[voice 0:03] quiero fotos de salado",
    ]
    assert messages[0]["media"] == [
        {
            "type": "document",
            "mime_type": "application/pdf",
            "caption": "precios",
            "filename": "lista.pdf",
            "data": base64.b64encode(pdf).decode(),
        }
    ]
    assert messages[2]["media"] == [
        {
            "type": "audio",
            "mime_type": "audio/ogg; codecs=opus",
            "data": base64.b64encode(audio).decode(),
        }
    ]
    assert "media" not in messages[1]
