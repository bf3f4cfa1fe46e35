"""An assistant backed by any OpenAI-compatible chat completions API.

OpenAI itself, and the many servers that copy its protocol (Ollama, vLLM, llama.cpp,
LiteLLM, OpenRouter, Groq...). Protocol: https://platform.openai.com/docs/api-reference/chat
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from yarl import URL

from bridge.assistants.base import Assistant, Reply, TurnLike
from bridge.assistants.http import JsonEndpoint, as_messages, parse_url, recent
from bridge.assistants.media import attachments
from bridge.config import AssistantConfig
from bridge.errors import AssistantError
from bridge.whatsapp.sender import OutboundMedia

DEFAULT_MODEL = "gpt-4o-mini"
WHAT = "openai assistant"
# A last path segment that names an API version: `v1`, `v1beta`, `v2`...
_VERSION_SEGMENT = re.compile(r"v\d+[a-z0-9]*")
# A markdown image: `![alt](https://... "optional title")`.
_MARKDOWN_IMAGE = re.compile(r"!\[([^\]\n]*)\]\((https?://[^\s)]+)(?:\s+\"[^\"\n]*\")?\)")


def openai_endpoint(base: URL, endpoint: str) -> URL:
    """Where to POST `endpoint` (e.g. `chat/completions`), from the URL an operator is likely
    to paste.

    Providers document their base URL both with and without the version
    (`http://localhost:11434` vs `http://localhost:11434/v1`), and some give the full endpoint;
    all three work. Any other layout can be given as the full endpoint URL.
    The query string is kept (Azure-style gateways put `api-version` there).
    """
    path = base.path.rstrip("/")
    if path.endswith(f"/{endpoint}"):
        new_path = path
    elif _VERSION_SEGMENT.fullmatch(path.rpartition("/")[2]):
        new_path = f"{path}/{endpoint}"
    else:
        new_path = f"{path}/v1/{endpoint}"
    return base.with_path(new_path).with_query(base.query)


def chat_completions_url(base: URL) -> URL:
    return openai_endpoint(base, "chat/completions")


class OpenAIAssistant(Assistant):
    """Replies with the model's answer to the system prompt plus the recent history."""

    kind = "openai"

    def __init__(self, config: AssistantConfig) -> None:
        self.model = config.model or DEFAULT_MODEL
        self._system_prompt = config.system_prompt
        self._history_limit = config.history_limit
        # Vision: the newest images of the history go as `image_url` content parts.
        self._vision = config.vision
        self._media_max_items = config.media_max_items
        self._media_max_bytes = config.media_max_bytes
        self._endpoint = JsonEndpoint(
            chat_completions_url(parse_url(config.url, WHAT)),
            api_key=config.api_key,
            timeout=config.timeout,
            what=WHAT,
        )

    def health_url(self) -> str | None:
        return str(self.url)

    @property
    def url(self) -> URL:
        return self._endpoint.url

    async def reply(self, key: str, history: Sequence[TurnLike]) -> str | Reply:
        # `key` stays here: the conversation key is a phone number, not something to send a
        # third-party provider.
        turns = recent(history, self._history_limit)
        messages: list[dict[str, Any]] = list(as_messages(turns))
        if self._vision:
            images = await attachments(
                turns,
                self.media,
                types=("image",),
                max_items=self._media_max_items,
                max_bytes=self._media_max_bytes,
                images_only=True,
            )
            for index, image in images.items():
                # Chat Completions' content parts: the turn's text, then the image.
                messages[index]["content"] = [
                    {"type": "text", "text": turns[index].content},
                    {"type": "image_url", "image_url": {"url": image.data_url()}},
                ]
        if self._system_prompt:
            messages.insert(0, {"role": "system", "content": self._system_prompt})
        response = await self._endpoint.post({"model": self.model, "messages": messages})
        return split_images(parse_completion(response.json(WHAT)))

    async def close(self) -> None:
        await self._endpoint.close()


def split_images(text: str) -> str | Reply:
    """Markdown images in a model's answer become image messages (WhatsApp shows no
    markdown): `![Salado](https://.../salado.jpg)` is sent as that image with the caption
    `Salado`, after the rest of the text."""
    images = [
        OutboundMedia("image", m.group(2), m.group(1).strip() or None)
        for m in _MARKDOWN_IMAGE.finditer(text)
    ]
    if not images:
        return text
    rest = _MARKDOWN_IMAGE.sub("", text)
    rest = re.sub(r"[ \t]+\n", "\n", rest)
    rest = re.sub(r"\n{3,}", "\n\n", rest).strip()
    return Reply(rest, tuple(images))


def parse_completion(data: Any) -> str:
    """`choices[0].message.content` of a chat completion, as text.

    `content` is usually a string; some servers send a list of content parts
    (`[{"type": "text", "text": ...}]`), whose text parts are joined. A `null` content with
    a `refusal` string is the model declining: the refusal is the reply.
    """
    try:
        message = data["choices"][0]["message"]
        content = message.get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise AssistantError(f"{WHAT}: response has no choices[0].message") from None
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        parts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "".join(parts).strip()
    refusal = message.get("refusal")
    if content is None and isinstance(refusal, str):
        return refusal.strip()
    finish = data["choices"][0].get("finish_reason")
    raise AssistantError(f"{WHAT}: response has no text content (finish_reason={finish!r})")
