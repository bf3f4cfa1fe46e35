"""OpenAIAssistant against a real fake chat-completions server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from yarl import URL

from bridge.assistants.base import Turn
from bridge.assistants.openai import DEFAULT_MODEL, OpenAIAssistant, chat_completions_url
from bridge.config import AssistantConfig
from bridge.errors import AssistantError, ConfigError

API_KEY = "sk-test-secret-key-1234567890"
HISTORY = (
    Turn("user", "hi"),
    Turn("assistant", "hello, how can I help?"),
    Turn("user", "what time is it?"),
)


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the fake server received it."""

    path: str
    query: str
    authorization: str | None
    body: Any


@dataclass
class FakeLLM:
    """Speaks OpenAI chat completions; answers `content`, or `status` + `raw` when set."""

    base: str = ""
    seen: list[Seen] = field(default_factory=list)
    content: Any = "It is noon."
    status: int = 200
    raw: bytes | None = None
    content_type: str = "application/json"
    delay: float = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(
            Seen(
                path=request.path,
                query=request.query_string,
                authorization=request.headers.get("Authorization"),
                body=orjson.loads(body),
            )
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.raw is not None:
            return web.Response(status=self.status, body=self.raw, content_type=self.content_type)
        completion = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.content},
                    "finish_reason": "stop",
                }
            ],
        }
        return web.json_response(completion, status=self.status)


@pytest.fixture
async def llm(aiohttp_server: AiohttpServer) -> FakeLLM:
    fake = FakeLLM()
    app = web.Application()
    app.router.add_post("/{tail:.*}", fake.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    fake.base = str(server.make_url("")).rstrip("/")
    return fake


Make = Callable[..., OpenAIAssistant]


@pytest.fixture
async def make(llm: FakeLLM) -> AsyncIterator[Make]:
    """Builds assistants pointed at the fake server and closes every one at teardown."""
    made: list[OpenAIAssistant] = []

    def build(**overrides: Any) -> OpenAIAssistant:
        config = replace(AssistantConfig(kind="openai", url=llm.base), **overrides)
        assistant = OpenAIAssistant(config)
        made.append(assistant)
        return assistant

    yield build
    for assistant in made:
        await assistant.close()


async def test_reply_is_the_first_choice_message_content(llm: FakeLLM, make: Make) -> None:
    llm.content = "  It is noon.\n"
    assert await make().reply("34600000001", HISTORY) == "It is noon."


async def test_request_names_the_configured_model(llm: FakeLLM, make: Make) -> None:
    await make(model="llama3.2").reply("k", HISTORY)
    assert llm.seen[0].body["model"] == "llama3.2"


async def test_model_defaults_to_gpt_4o_mini(llm: FakeLLM, make: Make) -> None:
    await make().reply("k", HISTORY)
    assert llm.seen[0].body["model"] == DEFAULT_MODEL == "gpt-4o-mini"


async def test_system_prompt_comes_first_then_history_in_order(llm: FakeLLM, make: Make) -> None:
    await make(system_prompt="Be brief.").reply("k", HISTORY)
    assert llm.seen[0].body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello, how can I help?"},
        {"role": "user", "content": "what time is it?"},
    ]


async def test_no_system_message_without_a_system_prompt(llm: FakeLLM, make: Make) -> None:
    await make().reply("k", HISTORY)
    assert [m["role"] for m in llm.seen[0].body["messages"]] == ["user", "assistant", "user"]


async def test_only_the_last_history_limit_turns_are_sent(llm: FakeLLM, make: Make) -> None:
    await make(history_limit=2, system_prompt="S").reply("k", HISTORY)
    assert [m["content"] for m in llm.seen[0].body["messages"]] == [
        "S",
        "hello, how can I help?",
        "what time is it?",
    ]


async def test_conversation_key_is_not_sent_to_the_provider(llm: FakeLLM, make: Make) -> None:
    await make().reply("34600000001", HISTORY)
    assert set(llm.seen[0].body) == {"model", "messages"}


async def test_bearer_header_is_sent_when_an_api_key_is_set(llm: FakeLLM, make: Make) -> None:
    await make(api_key=API_KEY).reply("k", HISTORY)
    assert llm.seen[0].authorization == f"Bearer {API_KEY}"


async def test_no_authorization_header_without_an_api_key(llm: FakeLLM, make: Make) -> None:
    await make().reply("k", HISTORY)
    assert llm.seen[0].authorization is None


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/", "/v1/chat/completions"])
async def test_base_url_variants_all_post_to_v1_chat_completions(
    llm: FakeLLM, make: Make, suffix: str
) -> None:
    await make(url=llm.base + suffix).reply("k", HISTORY)
    assert llm.seen[0].path == "/v1/chat/completions"


async def test_path_prefix_before_v1_is_kept(llm: FakeLLM, make: Make) -> None:
    await make(url=llm.base + "/api/v1").reply("k", HISTORY)
    assert llm.seen[0].path == "/api/v1/chat/completions"


async def test_query_string_of_the_url_is_kept(llm: FakeLLM, make: Make) -> None:
    await make(url=llm.base + "/openai/v1?api-version=2024-06-01").reply("k", HISTORY)
    assert (llm.seen[0].path, llm.seen[0].query) == (
        "/openai/v1/chat/completions",
        "api-version=2024-06-01",
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://h:11434", "http://h:11434/v1/chat/completions"),
        ("http://h:11434/v1", "http://h:11434/v1/chat/completions"),
        ("https://h/v1beta/", "https://h/v1beta/chat/completions"),
        ("https://h/x/chat/completions/", "https://h/x/chat/completions"),
        ("https://h/proxy", "https://h/proxy/v1/chat/completions"),
    ],
)
def test_chat_completions_url_normalises_the_base(given: str, expected: str) -> None:
    assert str(chat_completions_url(URL(given))) == expected


async def test_content_parts_are_joined_into_one_reply(llm: FakeLLM, make: Make) -> None:
    llm.content = [{"type": "text", "text": "It is "}, {"type": "text", "text": "noon."}]
    assert await make().reply("k", HISTORY) == "It is noon."


async def test_non_2xx_raises_with_status_and_provider_message(llm: FakeLLM, make: Make) -> None:
    llm.status = 404
    llm.raw = orjson.dumps({"error": {"message": "model 'nope' not found", "type": "x"}})
    with pytest.raises(AssistantError) as info:
        await make(model="nope").reply("k", HISTORY)
    assert "HTTP 404" in str(info.value)
    assert "model 'nope' not found" in str(info.value)


async def test_error_never_contains_the_api_key(llm: FakeLLM, make: Make) -> None:
    llm.status = 401
    llm.raw = orjson.dumps({"error": {"message": f"Incorrect API key provided: {API_KEY}"}})
    with pytest.raises(AssistantError) as info:
        await make(api_key=API_KEY).reply("k", HISTORY)
    assert "HTTP 401" in str(info.value)
    assert API_KEY not in str(info.value)


async def test_long_provider_error_is_cut_to_a_short_excerpt(llm: FakeLLM, make: Make) -> None:
    llm.status = 500
    llm.raw = orjson.dumps({"error": {"message": "boom " * 1000}})
    with pytest.raises(AssistantError) as info:
        await make().reply("k", HISTORY)
    assert "HTTP 500: boom boom" in str(info.value)
    assert len(str(info.value)) < 300


async def test_malformed_json_response_raises(llm: FakeLLM, make: Make) -> None:
    llm.raw = b'{"choices": [ not json'
    with pytest.raises(AssistantError, match="invalid JSON"):
        await make().reply("k", HISTORY)


async def test_response_without_choices_raises(llm: FakeLLM, make: Make) -> None:
    llm.raw = orjson.dumps({"object": "chat.completion", "choices": []})
    with pytest.raises(AssistantError, match=r"no choices\[0\]\.message"):
        await make().reply("k", HISTORY)


async def test_null_content_without_refusal_raises(llm: FakeLLM, make: Make) -> None:
    llm.content = None
    with pytest.raises(AssistantError, match="no text content"):
        await make().reply("k", HISTORY)


async def test_slow_server_times_out_quickly(llm: FakeLLM, make: Make) -> None:
    llm.delay = 10.0
    started = time.monotonic()
    with pytest.raises(AssistantError, match=r"timed out after 0\.2s"):
        await make(timeout=0.2).reply("k", HISTORY)
    assert time.monotonic() - started < 2.0


async def test_unreachable_server_raises(make: Make, unused_tcp_port: int) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}"
    with pytest.raises(AssistantError, match="request failed"):
        await make(url=url).reply("k", HISTORY)


async def test_one_session_serves_concurrent_replies(llm: FakeLLM, make: Make) -> None:
    assistant = make()
    replies = await asyncio.gather(*(assistant.reply("k", HISTORY) for _ in range(5)))
    assert replies == ["It is noon."] * 5
    assert len(llm.seen) == 5


async def test_reply_after_close_raises(make: Make) -> None:
    assistant = make()
    await assistant.close()
    with pytest.raises(AssistantError, match="closed"):
        await assistant.reply("k", HISTORY)


@pytest.mark.parametrize("url", ["ftp://h/v1", "localhost:11434", "http://"])
def test_url_that_is_not_http_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        OpenAIAssistant(AssistantConfig(kind="openai", url=url))
