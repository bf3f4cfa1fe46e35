"""HttpAssistant against a real fake backend on 127.0.0.1 speaking the bridge's HTTP protocol."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from bridge.assistants.base import Turn
from bridge.assistants.http import HttpAssistant
from bridge.config import AssistantConfig
from bridge.conversations import Message
from bridge.errors import AssistantError
from tests.conftest import StartBridge, make_profile

API_KEY = "backend-secret-token-abcdef"
HISTORY = (
    Turn("user", "hi"),
    Turn("assistant", "hello"),
    Turn("user", "order status?"),
)


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the fake backend received it."""

    path: str
    authorization: str | None
    body: Any


@dataclass
class FakeBackend:
    """Answers every POST with `status`, `body` and `content_type`."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    status: int = 200
    body: bytes = b'{"reply": "shipped"}'
    content_type: str = "application/json"
    delay: float = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            Seen(
                path=request.path,
                authorization=request.headers.get("Authorization"),
                body=orjson.loads(await request.read()),
            )
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        # A raw header, so a test can send any Content-Type, charset included.
        return web.Response(
            status=self.status, body=self.body, headers={"Content-Type": self.content_type}
        )

    def answer(
        self, body: bytes, content_type: str = "application/json", status: int = 200
    ) -> None:
        self.body, self.content_type, self.status = body, content_type, status


@pytest.fixture
async def backend(aiohttp_server: AiohttpServer) -> FakeBackend:
    fake = FakeBackend()
    app = web.Application()
    app.router.add_post("/{tail:.*}", fake.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    fake.url = str(server.make_url("/bot/reply"))
    return fake


Make = Callable[..., HttpAssistant]


@pytest.fixture
async def make(backend: FakeBackend) -> AsyncIterator[Make]:
    """Builds assistants pointed at the fake backend and closes every one at teardown."""
    made: list[HttpAssistant] = []

    def build(**overrides: Any) -> HttpAssistant:
        assistant = HttpAssistant(
            replace(AssistantConfig(kind="http", url=backend.url), **overrides)
        )
        made.append(assistant)
        return assistant

    yield build
    for assistant in made:
        await assistant.close()


async def test_posts_conversation_key_and_messages_in_order(
    backend: FakeBackend, make: Make
) -> None:
    await make().reply("34600000001", HISTORY)
    assert backend.seen[0].path == "/bot/reply"
    assert backend.seen[0].body == {
        "conversation": "34600000001",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "order status?"},
        ],
    }


async def test_stored_messages_carry_id_type_timestamp_and_extra(
    backend: FakeBackend, make: Make
) -> None:
    reply = {"reply": {"kind": "button_reply", "id": "confirm_yes", "title": "Yes"}}
    history = (
        Message("assistant", "Confirm?", 1_700_000_000_000, id="out.1", status="sent"),
        Message("user", "Yes", 1_700_000_001_000, id="wamid.B1", type="interactive", extra=reply),
    )
    await make().reply("34600000001", history)
    assert backend.seen[0].body["messages"] == [
        {"role": "assistant", "content": "Confirm?", "id": "out.1", "timestamp": 1_700_000_000_000},
        {
            "role": "user",
            "content": "Yes",
            "id": "wamid.B1",
            "type": "interactive",
            "timestamp": 1_700_000_001_000,
            "extra": reply,
        },
    ]


async def test_a_button_reply_reaches_the_backend_with_its_id(
    backend: FakeBackend, start_bridge: StartBridge, tmp_path: Path
) -> None:
    """The whole path: Meta's delivery of a tapped button, posted to the bridge, and the
    bot behind the http backend can branch on the button's id."""
    corpus = Path(__file__).parent.parent / "whatsapp" / "corpus"
    delivery = orjson.loads((corpus / "interactive_button_reply.json").read_bytes())["delivery"]
    profile = make_profile(tmp_path, assistant=AssistantConfig(kind="http", url=backend.url))
    bridge = await start_bridge([profile])
    assert (await bridge.post(delivery)).status == 200
    await bridge.settle()
    (last,) = [m for m in backend.seen[0].body["messages"] if m["role"] == "user"]
    assert last["content"] == "Yes, confirm"
    assert last["extra"]["reply"] == {
        "kind": "button_reply",
        "id": "confirm_yes",
        "title": "Yes, confirm",
    }


async def test_only_the_last_history_limit_turns_are_sent(backend: FakeBackend, make: Make) -> None:
    await make(history_limit=1).reply("k", HISTORY)
    assert backend.seen[0].body["messages"] == [{"role": "user", "content": "order status?"}]


async def test_bearer_header_is_sent_when_an_api_key_is_set(
    backend: FakeBackend, make: Make
) -> None:
    await make(api_key=API_KEY).reply("k", HISTORY)
    assert backend.seen[0].authorization == f"Bearer {API_KEY}"


async def test_no_authorization_header_without_an_api_key(backend: FakeBackend, make: Make) -> None:
    await make().reply("k", HISTORY)
    assert backend.seen[0].authorization is None


@pytest.mark.parametrize("name", ["reply", "text", "content"])
async def test_json_reply_field_is_the_reply(backend: FakeBackend, make: Make, name: str) -> None:
    backend.answer(orjson.dumps({name: " shipped today "}))
    assert await make().reply("k", HISTORY) == "shipped today"


async def test_plain_text_body_is_the_reply(backend: FakeBackend, make: Make) -> None:
    backend.answer("¡enviado!".encode(), content_type="text/plain")
    assert await make().reply("k", HISTORY) == "¡enviado!"


async def test_plain_text_body_honours_its_charset(backend: FakeBackend, make: Make) -> None:
    backend.answer("¡enviado!".encode("latin-1"), content_type="text/plain; charset=latin-1")
    assert await make().reply("k", HISTORY) == "¡enviado!"


@pytest.mark.parametrize("body", [b'{"reply": null}', b'{"reply": ""}', b""])
async def test_empty_or_null_reply_means_no_reply(
    backend: FakeBackend, make: Make, body: bytes
) -> None:
    backend.answer(body)
    assert await make().reply("k", HISTORY) == ""


async def test_json_without_a_reply_field_raises(backend: FakeBackend, make: Make) -> None:
    backend.answer(b'{"answer": "shipped"}')
    with pytest.raises(AssistantError, match="none of 'reply', 'text', 'content'"):
        await make().reply("k", HISTORY)


async def test_non_string_reply_raises(backend: FakeBackend, make: Make) -> None:
    backend.answer(b'{"reply": 42}')
    with pytest.raises(AssistantError, match="must be a string, got int"):
        await make().reply("k", HISTORY)


async def test_malformed_json_response_raises(backend: FakeBackend, make: Make) -> None:
    backend.answer(b'{"reply": "unterminated')
    with pytest.raises(AssistantError, match="invalid JSON"):
        await make().reply("k", HISTORY)


async def test_html_body_raises_unexpected_content_type(backend: FakeBackend, make: Make) -> None:
    backend.answer(b"<html>hello</html>", content_type="text/html")
    with pytest.raises(AssistantError, match="unexpected content type 'text/html'"):
        await make().reply("k", HISTORY)


async def test_non_2xx_raises_with_status_and_message(backend: FakeBackend, make: Make) -> None:
    backend.answer(b'{"detail": "conversation quota exceeded"}', status=429)
    with pytest.raises(AssistantError) as info:
        await make().reply("k", HISTORY)
    assert str(info.value) == "http assistant returned HTTP 429: conversation quota exceeded"


async def test_non_2xx_plain_text_error_is_excerpted_without_the_key(
    backend: FakeBackend, make: Make
) -> None:
    backend.answer(f"bad token {API_KEY}\n".encode(), content_type="text/plain", status=403)
    with pytest.raises(AssistantError) as info:
        await make(api_key=API_KEY).reply("k", HISTORY)
    assert str(info.value) == "http assistant returned HTTP 403: bad token ***"


async def test_non_2xx_html_page_is_not_quoted(backend: FakeBackend, make: Make) -> None:
    backend.answer(b"<html><body>502 Bad Gateway</body></html>", "text/html", status=502)
    with pytest.raises(AssistantError) as info:
        await make().reply("k", HISTORY)
    assert str(info.value) == "http assistant returned HTTP 502"


async def test_slow_backend_times_out_quickly(backend: FakeBackend, make: Make) -> None:
    backend.delay = 10.0
    started = time.monotonic()
    with pytest.raises(AssistantError, match=r"timed out after 0\.2s"):
        await make(timeout=0.2).reply("k", HISTORY)
    assert time.monotonic() - started < 2.0


async def test_close_is_idempotent(make: Make) -> None:
    assistant = make()
    await assistant.reply("k", HISTORY)
    await assistant.close()
    await assistant.close()
    with pytest.raises(AssistantError, match="closed"):
        await assistant.reply("k", HISTORY)
