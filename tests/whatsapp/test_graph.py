"""The Graph API client against a local fake speaking Meta's documented protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from bridge.whatsapp.graph import GraphClient, PartialSendError
from bridge.whatsapp.sender import SendError, split_text
from tests.fakes.graph import TOKEN, FakeGraph

PHONE_NUMBER_ID = "1234"


@pytest.fixture
async def fake() -> FakeGraph:
    return FakeGraph()


@pytest.fixture
async def client(fake: FakeGraph, aiohttp_server: AiohttpServer) -> AsyncIterator[GraphClient]:
    server = await aiohttp_server(fake.app())
    client = GraphClient(str(server.make_url("")), "v21.0", PHONE_NUMBER_ID, TOKEN, timeout=2)
    yield client
    await client.close()


async def serve(
    aiohttp_server: AiohttpServer, handler: Callable[[web.Request], Awaitable[web.Response]]
) -> str:
    """A one-route server answering every message POST with `handler`; its base URL."""
    app = web.Application()
    app.router.add_post(f"/v21.0/{PHONE_NUMBER_ID}/messages", handler)
    return str((await aiohttp_server(app)).make_url(""))


async def test_send_posts_meta_body_and_returns_wamid(fake: FakeGraph, client: GraphClient) -> None:
    assert await client.send_text("34600000001", "Hola") == ["wamid.FAKE000001"]
    assert fake.sent == [
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "34600000001",
            "type": "text",
            "text": {"body": "Hola", "preview_url": False},
        }
    ]


async def test_send_uses_the_documented_path_and_bearer_token(
    fake: FakeGraph, client: GraphClient
) -> None:
    await client.send_text("34600000001", "Hola")
    (request,) = fake.received
    assert (request.method, request.path) == ("POST", f"/v21.0/{PHONE_NUMBER_ID}/messages")
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"].startswith("application/json")


async def test_long_reply_is_split_into_one_post_per_4096_char_part(
    fake: FakeGraph, client: GraphClient
) -> None:
    text = ("word " * 2000).strip()  # 9999 chars
    ids = await client.send_text("1", text)
    assert fake.bodies() == split_text(text)
    assert ids == ["wamid.FAKE000001", "wamid.FAKE000002", "wamid.FAKE000003"]
    assert all(len(b) <= 4096 for b in fake.bodies())
    assert " ".join(fake.bodies()) == text


def test_split_prefers_paragraph_breaks() -> None:
    text = "a" * 3000 + "\n\n" + "b" * 3000
    assert split_text(text) == ["a" * 3000, "b" * 3000]


@pytest.mark.parametrize(
    ("status", "code", "retryable", "auth"),
    [
        (500, None, True, False),  # Meta (or its load balancer) failing
        (503, 131016, True, False),  # service unavailable
        (500, 131000, True, False),  # something went wrong
        (400, 130429, True, False),  # throughput limit
        (400, 131056, True, False),  # pair rate limit
        (400, 80007, True, False),  # WABA rate limit
        (400, 4, True, False),  # app call-rate limit
        (400, 131047, False, False),  # 24-hour window closed
        (400, 100, False, False),  # invalid parameter
        (401, 190, True, True),  # token expired
    ],
)
async def test_errors_map_to_retry_decisions(
    fake: FakeGraph,
    client: GraphClient,
    status: int,
    code: int | None,
    retryable: bool,
    auth: bool,
) -> None:
    fake.fail_next(status, code)
    with pytest.raises(SendError) as caught:
        await client.send_text("1", "x")
    assert (caught.value.code, caught.value.retryable, caught.value.auth) == (code, retryable, auth)
    assert TOKEN not in str(caught.value)


async def test_error_text_carries_the_code_and_metas_message(
    fake: FakeGraph, client: GraphClient
) -> None:
    fake.fail_next(400, 131047)
    with pytest.raises(SendError) as caught:
        await client.send_text("1", "x")
    text = str(caught.value)
    assert text.startswith("131047: Re-engagement message")
    assert "more than 24 hours have passed" in text


async def test_wrong_token_is_an_auth_error_without_the_token(
    fake: FakeGraph, client: GraphClient
) -> None:
    fake.token = "the-new-token"  # ours was revoked
    with pytest.raises(SendError) as caught:
        await client.send_text("1", "x")
    assert caught.value.auth and caught.value.retryable and caught.value.code == 190
    assert TOKEN not in str(caught.value)


async def test_http_401_without_an_error_body_is_an_auth_error(
    aiohttp_server: AiohttpServer,
) -> None:
    async def unauthorized(request: web.Request) -> web.Response:
        return web.Response(status=401, text="Unauthorized")

    client = GraphClient(await serve(aiohttp_server, unauthorized), "v21.0", PHONE_NUMBER_ID, TOKEN)
    with pytest.raises(SendError) as caught:
        await client.send_text("1", "x")
    await client.close()
    assert caught.value.auth and caught.value.retryable


async def test_success_without_a_message_id_is_not_retried(aiohttp_server: AiohttpServer) -> None:
    async def odd(request: web.Request) -> web.Response:
        return web.json_response({"messaging_product": "whatsapp", "messages": []})

    client = GraphClient(await serve(aiohttp_server, odd), "v21.0", PHONE_NUMBER_ID, TOKEN)
    with pytest.raises(SendError) as caught:
        await client.send_text("1", "x")
    await client.close()
    assert not caught.value.retryable


async def test_connection_refused_is_retryable() -> None:
    client = GraphClient("http://127.0.0.1:9", "v21.0", PHONE_NUMBER_ID, TOKEN, timeout=2)
    with pytest.raises(SendError) as caught:
        await client.send_text("1", "x")
    await client.close()
    assert caught.value.retryable and "unreachable" in str(caught.value)


async def test_timeout_is_retryable(fake: FakeGraph, aiohttp_server: AiohttpServer) -> None:
    fake.delay = 1.0
    server = await aiohttp_server(fake.app())
    client = GraphClient(str(server.make_url("")), "v21.0", PHONE_NUMBER_ID, TOKEN, timeout=0.1)
    with pytest.raises(SendError, match="timed out") as caught:
        await client.send_text("1", "x")
    await client.close()
    assert caught.value.retryable


async def test_partial_failure_reports_sent_parts_and_resumes_after_them(
    fake: FakeGraph, client: GraphClient
) -> None:
    text = "c" * 4096 + "d" * 10
    fake.succeed_next()
    fake.fail_next(500)
    with pytest.raises(PartialSendError) as caught:
        await client.send_text("1", text)
    assert caught.value.sent_ids == ["wamid.FAKE000001"] and caught.value.retryable
    resumed = await client.send_text("1", text, skip_parts=1)
    assert resumed == ["wamid.FAKE000002"]
    assert fake.bodies() == ["c" * 4096, "d" * 10]


async def test_check_reads_the_phone_number_with_the_token(
    fake: FakeGraph, client: GraphClient
) -> None:
    await client.check()
    (request,) = fake.received
    assert (request.method, request.path) == ("GET", f"/v21.0/{PHONE_NUMBER_ID}")
    assert request.query == {"fields": "id"}
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert fake.sent == []


async def test_check_fails_with_an_auth_error_on_a_revoked_token(
    fake: FakeGraph, client: GraphClient
) -> None:
    fake.token = "the-new-token"
    with pytest.raises(SendError) as caught:
        await client.check()
    assert caught.value.auth and caught.value.code == 190


async def test_check_fails_when_graph_is_unreachable() -> None:
    client = GraphClient("http://127.0.0.1:9", "v21.0", PHONE_NUMBER_ID, TOKEN, timeout=2)
    with pytest.raises(SendError):
        await client.check()
    await client.close()


async def test_closed_client_keeps_a_late_send_retryable(client: GraphClient) -> None:
    await client.close()
    with pytest.raises(SendError) as caught:
        await client.send_text("1", "x")
    assert caught.value.retryable
