"""`upload_media = true` through the whole bridge: an assistant's reply names a file on a
server Meta cannot reach (a real local aiohttp server); the bridge fetches it, uploads it to
the fake Graph API and sends it by id, as one durable outbox part: a failed fetch or upload
is retried with backoff, a file that cannot be sent fails like any send, and nothing is sent
twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from bridge.config import AssistantConfig, load_settings
from bridge.errors import ConfigError
from bridge.whatsapp.graph import GraphClient
from tests.conftest import APP_SECRET, Bridge, StartBridge, make_profile
from tests.fakes.graph import TOKEN, FakeGraph
from tests.test_outbound_media import PHONE, serve_backend
from tests.whatsapp.test_upload import JPEG, FileServer


@pytest.fixture
async def files(aiohttp_server: AiohttpServer) -> FileServer:
    server = FileServer()
    app = web.Application()
    app.router.add_get("/files/{name}", server.handle)
    server.base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    return server


async def uploading_bridge(
    start_bridge: StartBridge,
    aiohttp_server: AiohttpServer,
    tmp_path: Path,
    reply: dict[str, Any],
    graph: FakeGraph,
    **profile: Any,
) -> Bridge:
    """A bridge whose http backend answers `reply`, sending through a Graph client made from
    its profile (`upload_media = true`), as `bridge serve` makes it."""
    backend = await serve_backend(aiohttp_server, reply)
    url = str((await aiohttp_server(graph.app())).make_url("")).rstrip("/")
    config = make_profile(
        tmp_path,
        access_token=TOKEN,
        graph_url=url,
        assistant=AssistantConfig(kind="http", url=backend),
        upload_media=True,
        **profile,
    )
    sender = GraphClient.from_profile(config, timeout=3)
    return await start_bridge([config], senders={"default": sender})


async def test_a_file_meta_cannot_reach_is_uploaded_and_sent_by_id_after_the_text(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path, files: FileServer
) -> None:
    graph = FakeGraph()
    reply = {
        "reply": "Aquí tienes",
        "media": [{"type": "image", "url": files.url("salado.jpg"), "caption": "Salado"}],
    }
    bridge = await uploading_bridge(start_bridge, aiohttp_server, tmp_path, reply, graph)
    await bridge.post_text("¿fotos de salado?")
    await bridge.settle()
    ((media_id, upload),) = graph.uploads.items()
    assert upload.data == JPEG
    assert graph.bodies() == ["Aquí tienes"]
    assert graph.media_sent() == [{"type": "image", "id": media_id, "caption": "Salado"}]
    message = bridge.state().conversations[PHONE].messages[-1]
    assert message.content == "Aquí tienes\n[image] Salado"
    assert message.status == "sent" and len(message.wamids) == 2


async def test_a_failing_fetch_and_upload_are_retried_and_nothing_is_sent_twice(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path, files: FileServer
) -> None:
    graph = FakeGraph()
    graph.upload_failures.append(503)  # then Meta's upload fails once
    files.flaky = 2  # the shop's server is busy twice
    reply = {"reply": "Mira", "media": [{"type": "image", "url": files.url("salado.jpg")}]}
    bridge = await uploading_bridge(start_bridge, aiohttp_server, tmp_path, reply, graph)
    await bridge.post_text("¿fotos?")
    await bridge.settle(timeout=20)
    assert len(files.headers) == 4  # two 503s, the fetch before the failed upload, the last
    assert len(graph.uploads) == 1
    assert graph.bodies() == ["Mira"]  # the text once, although the image was retried
    assert [m["type"] for m in graph.media_sent()] == ["image"]
    message = bridge.state().conversations[PHONE].messages[-1]
    assert message.status == "sent" and len(message.wamids) == 2


async def test_a_file_that_cannot_be_sent_fails_the_reply_like_any_send(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path, files: FileServer
) -> None:
    graph = FakeGraph()
    reply = {"reply": "Mira", "media": [{"type": "image", "url": files.url("page.jpg")}]}
    bridge = await uploading_bridge(start_bridge, aiohttp_server, tmp_path, reply, graph)
    await bridge.post_text("¿fotos?")
    await bridge.settle(timeout=10)
    assert graph.bodies() == ["Mira"] and graph.uploads == {} and graph.media_sent() == []
    assert len(files.headers) == 1  # not retried: it will not get better
    message = bridge.state().conversations[PHONE].messages[-1]
    assert message.status == "failed"
    assert message.error is not None and "text/html" in message.error
    assert len(message.wamids) == 1  # the text went out, and is known to have


async def test_an_uploaded_part_whose_answer_was_lost_is_confirmed_not_sent_again(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path, files: FileServer
) -> None:
    graph = FakeGraph()
    graph.lose_answers = 1  # Meta takes the image message; its answer never comes back
    reply = {"reply": "", "media": [{"type": "image", "url": files.url("salado.jpg")}]}
    bridge = await uploading_bridge(
        start_bridge, aiohttp_server, tmp_path, reply, graph, send_reconcile_seconds=10.0
    )
    graph.report_to(str(bridge.client.make_url("/webhook")), APP_SECRET)
    await bridge.post_text("una foto")
    await bridge.settle(timeout=15)
    assert len(graph.media_sent()) == 1  # once
    message = bridge.state().conversations[PHONE].messages[-1]
    assert (message.status, message.wamids) == ("sent", ("wamid.FAKE000002",))


def test_upload_media_from_the_environment_and_toml(tmp_path: Path) -> None:
    assert load_settings({"BRIDGE_UPLOAD_MEDIA": "true"}).profiles[0].upload_media is True
    assert load_settings({}).profiles[0].upload_media is False
    with pytest.raises(ConfigError, match="upload_media must be true or false"):
        load_settings({"BRIDGE_UPLOAD_MEDIA": "sometimes"})
    path = tmp_path / "bridge.toml"
    path.write_text('[profiles.shop]\nphone_number_id = "1"\nupload_media = true\n')
    (shop,) = load_settings({}, path).profiles
    assert shop.upload_media is True
