"""The Graph API client against a local fake speaking Meta's documented protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from bridge.whatsapp.graph import GraphClient, PartialSendError
from bridge.whatsapp.sender import SendError, split_text
from tests.fakes.graph import TOKEN, FakeGraph


@pytest.fixture
async def graph(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[FakeGraph, GraphClient]]:
    fake = FakeGraph()
    server = await aiohttp_server(fake.app())
    client = GraphClient(str(server.make_url("")), "v21.0", "1234", TOKEN, timeout=2)
    yield fake, client
    await client.close()


async def test_send_posts_meta_body_and_returns_wamid(graph: tuple[FakeGraph, GraphClient]) -> None:
    fake, client = graph
    assert await client.send_text("34600000001", "Hola") == ["wamid.FAKE000001"]
    assert fake.sent == [
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "34600000001",
            "type": "text",
            "text": {"preview_url": False, "body": "Hola"},
        }
    ]


async def test_long_reply_is_split_into_4096_char_parts(
    graph: tuple[FakeGraph, GraphClient],
) -> None:
    fake, client = graph
    text = ("word " * 2000).strip()  # 9999 chars
    ids = await client.send_text("1", text)
    bodies = [m["text"]["body"] for m in fake.sent]
    assert len(ids) == len(bodies) == 3
    assert all(len(b) <= 4096 for b in bodies)
    assert " ".join(bodies) == text


def test_split_prefers_paragraph_breaks() -> None:
    text = "a" * 3000 + "\n\n" + "b" * 3000
    assert split_text(text) == ["a" * 3000, "b" * 3000]


@pytest.mark.parametrize(
    ("status", "code", "retryable", "auth"),
    [
        (500, None, True, False),
        (400, 130429, True, False),
        (400, 131056, True, False),
        (400, 131047, False, False),
        (400, 100, False, False),
        (401, 190, True, True),
    ],
)
async def test_errors_map_to_retry_decisions(
    graph: tuple[FakeGraph, GraphClient], status: int, code: int | None, retryable: bool, auth: bool
) -> None:
    fake, client = graph
    fake.fail_next(status, code)
    with pytest.raises(SendError) as caught:
        await client.send_text("1", "x")
    assert (caught.value.code, caught.value.retryable, caught.value.auth) == (code, retryable, auth)
    assert TOKEN not in str(caught.value)


async def test_wrong_token_is_an_auth_error(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(FakeGraph().app())
    client = GraphClient(str(server.make_url("")), "v21.0", "1", "expired-token")
    with pytest.raises(SendError) as caught:
        await client.send_text("1", "x")
    await client.close()
    assert caught.value.auth and caught.value.code == 190
    assert "expired-token" not in str(caught.value)


async def test_unreachable_graph_is_retryable() -> None:
    client = GraphClient("http://127.0.0.1:9", "v21.0", "1", TOKEN, timeout=2)
    with pytest.raises(SendError) as caught:
        await client.send_text("1", "x")
    await client.close()
    assert caught.value.retryable and "unreachable" in str(caught.value)


async def test_timeout_is_retryable(aiohttp_server: AiohttpServer) -> None:
    import asyncio

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v21.0/1/messages", slow)
    server = await aiohttp_server(app)
    client = GraphClient(str(server.make_url("")), "v21.0", "1", TOKEN, timeout=0.2)
    with pytest.raises(SendError, match="timed out") as caught:
        await client.send_text("1", "x")
    await client.close()
    assert caught.value.retryable


async def test_partial_failure_reports_sent_parts_and_resumes_after_them(
    graph: tuple[FakeGraph, GraphClient],
) -> None:
    fake, client = graph
    text = "c" * 4096 + "d" * 10
    fake.succeed_next()
    fake.fail_next(500)
    with pytest.raises(PartialSendError) as caught:
        await client.send_text("1", text)
    assert caught.value.sent_ids == ["wamid.FAKE000001"] and caught.value.retryable
    resumed = await client.send_text("1", text, skip_parts=1)
    assert resumed == ["wamid.FAKE000002"]
    assert [m["text"]["body"] for m in fake.sent] == ["c" * 4096, "d" * 10]


async def test_check_reads_the_phone_number(graph: tuple[FakeGraph, GraphClient]) -> None:
    _fake, client = graph
    await client.check()
