"""A generic HTTP assistant, and the JSON-over-HTTP transport every network backend shares.

The transport (`JsonEndpoint`) owns one `aiohttp.ClientSession` per backend and turns every
way a call can fail (timeout, refused connection, non-2xx status, oversized body) into an
`AssistantError` whose message is safe to log: it never carries the API key, message text or
the conversation key.

The HTTP protocol, for a backend of your own:
    POST <url>   Authorization: Bearer <api key>   (only when a key is configured)
    {"conversation": "<key>", "messages": [{"role": "user", "content": "..."}, ...]}
Each stored message also carries, when set: `id` (Meta's wamid), `type` (WhatsApp's message
type), `timestamp` (ms) and `extra` (structured fields: reply ids and payloads, referral,
context, media ids, ...; see bridge/whatsapp/content.py), so a bot can branch on a button's id
while a language model reads `content`. With `send_media = true`, a message whose file is
stored (the most recent `media_max_items` of them, each at most `media_max_mb`) also carries
`media`: `[{"type", "mime_type", "caption"?, "filename"?, "data": base64}]`.

The request is answered with JSON `{"reply": "..."}` (`"text"` or `"content"` are accepted
too) or with a `text/plain` body that is the reply. An empty reply, `null` or 204 No Content
means "no reply". A JSON answer may add files to send, each by link after the text:
`"media": [{"type": "image"|"document"|"audio"|"video", "url": "https://...", "caption"?,
"filename"?}]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from bridge.assistants.base import Assistant, Reply, TurnLike
from bridge.assistants.media import attachments
from bridge.bearer import BearerClient
from bridge.config import MEDIA_TYPES, AssistantConfig
from bridge.conversations import Message
from bridge.errors import AssistantError, ConfigError
from bridge.whatsapp.sender import OutboundMedia

# A chat reply is a few KiB; the cap stops a misbehaving backend from filling our memory.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# Enough of a provider's error message to diagnose it in one log line.
ERROR_EXCERPT_CHARS = 200
# Keys the HTTP protocol accepts for the reply, in order of preference.
REPLY_FIELDS = ("reply", "text", "content")


@dataclass(frozen=True, slots=True)
class Response:
    """A successful (2xx) answer, read in full: the backend decides how to parse it."""

    status: int
    content_type: str
    charset: str | None
    body: bytes

    @property
    def is_json(self) -> bool:
        # `application/json` and the structured-syntax suffix `+json` (RFC 6839).
        return self.content_type == "application/json" or self.content_type.endswith("+json")

    def json(self, what: str) -> Any:
        """The decoded body; JSON is UTF-8 by definition (RFC 8259), whatever the charset says."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise AssistantError(f"{what} returned invalid JSON") from None

    def text(self) -> str:
        try:
            return self.body.decode(self.charset or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know
            return self.body.decode("utf-8", errors="replace")


def parse_url(raw: str | None, what: str) -> URL:
    """Validate a configured backend URL once, at construction, so a typo fails at start-up."""
    if not raw:
        raise ConfigError(f"{what} needs a URL")
    url = URL(raw.strip())
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{what}: URL must be http:// or https:// with a host, got {raw!r}")
    return url


def recent(history: Sequence[TurnLike], limit: int) -> Sequence[TurnLike]:
    """The last `limit` turns: context costs tokens and latency, and old turns matter least."""
    return history[-limit:] if limit > 0 else history


def as_messages(history: Sequence[TurnLike]) -> list[dict[str, str]]:
    """Turns as the `{"role", "content"}` objects both HTTP protocols use."""
    return [{"role": turn.role, "content": turn.content} for turn in history]


def as_rich_messages(history: Sequence[TurnLike]) -> list[dict[str, Any]]:
    """Turns for the bridge's own HTTP protocol: role and content, plus a stored message's
    id, type, timestamp and structured `extra` when it has them. (The OpenAI protocol gets
    `as_messages`: its servers may refuse unknown fields.)"""
    out: list[dict[str, Any]] = []
    for turn in history:
        item: dict[str, Any] = {"role": turn.role, "content": turn.content}
        if isinstance(turn, Message):
            if turn.id is not None:
                item["id"] = turn.id
            if turn.type is not None:
                item["type"] = turn.type
            item["timestamp"] = turn.timestamp
            if turn.extra:
                item["extra"] = turn.extra
        out.append(item)
    return out


class JsonEndpoint:
    """POSTs JSON to one URL through one reused session (bridge/bearer.py)."""

    def __init__(self, url: URL, *, api_key: str | None, timeout: float, what: str) -> None:
        self.url = url
        self._timeout = timeout
        self._what = what
        self._client = BearerClient(api_key, timeout, lambda: AssistantError(f"{what} is closed"))

    async def post(self, payload: object) -> Response:
        """Send `payload` as JSON; return a 2xx response or raise `AssistantError`."""
        headers = self._client.headers(
            Content_Type="application/json", Accept="application/json, text/plain"
        )
        session = self._client.session()
        try:
            async with session.post(self.url, data=orjson.dumps(payload), headers=headers) as resp:
                body = await self._read(resp)
                status, content_type, charset = resp.status, resp.content_type, resp.charset
        except TimeoutError:
            # aiohttp's own timeout errors subclass TimeoutError (asyncio.TimeoutError in 3.11).
            raise AssistantError(f"{self._what} timed out after {self._timeout:g}s") from None
        except aiohttp.ClientError as exc:
            detail = self._client.redact(str(exc) or type(exc).__name__)
            raise AssistantError(f"{self._what} request failed: {detail}") from None
        if not 200 <= status < 300:
            excerpt = self._error_excerpt(content_type, body)
            suffix = f": {excerpt}" if excerpt else ""
            raise AssistantError(f"{self._what} returned HTTP {status}{suffix}")
        return Response(status=status, content_type=content_type, charset=charset, body=body)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        if resp.content_length is not None and resp.content_length > MAX_RESPONSE_BYTES:
            raise AssistantError(f"{self._what} response too large ({resp.content_length} bytes)")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise AssistantError(
                    f"{self._what} response larger than {MAX_RESPONSE_BYTES} bytes"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _error_excerpt(self, content_type: str, body: bytes) -> str:
        """The provider's own error message, short and on one line.

        OpenAI-compatible servers answer `{"error": {"message": ...}}`; others use `{"error":
        "..."}`, `{"message": ...}` or FastAPI's `{"detail": ...}`; a plain-text body is used
        as is. HTML error pages (proxies) are skipped: their markup diagnoses nothing.
        """
        message = ""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            if content_type.startswith("text/") and content_type != "text/html":
                message = body.decode("utf-8", errors="replace")
        else:
            if isinstance(data, dict):
                error = data.get("error")
                if isinstance(error, dict):
                    error = error.get("message")
                for candidate in (error, data.get("message"), data.get("detail")):
                    if isinstance(candidate, str) and candidate:
                        message = candidate
                        break
        message = self._client.redact(" ".join(message.split()))
        if len(message) > ERROR_EXCERPT_CHARS:
            message = message[: ERROR_EXCERPT_CHARS - 1] + "…"
        return message

    async def close(self) -> None:
        await self._client.close()


class HttpAssistant(Assistant):
    """Any service that speaks the small HTTP protocol in this module's docstring."""

    kind = "http"

    def __init__(self, config: AssistantConfig) -> None:
        self._history_limit = config.history_limit
        self._send_media = config.send_media
        self._media_max_items = config.media_max_items
        self._media_max_bytes = config.media_max_bytes
        self._endpoint = JsonEndpoint(
            parse_url(config.url, "http assistant"),
            api_key=config.api_key,
            timeout=config.timeout,
            what="http assistant",
        )

    def health_url(self) -> str | None:
        return str(self.url)

    @property
    def url(self) -> URL:
        return self._endpoint.url

    async def reply(self, key: str, history: Sequence[TurnLike]) -> str | Reply:
        turns = recent(history, self._history_limit)
        messages = as_rich_messages(turns)
        if self._send_media:
            found = await attachments(
                turns,
                self.media,
                types=MEDIA_TYPES,
                max_items=self._media_max_items,
                max_bytes=self._media_max_bytes,
            )
            for index, attachment in found.items():
                messages[index]["media"] = [attachment.as_json()]
        payload = {"conversation": key, "messages": messages}
        response = await self._endpoint.post(payload)
        return parse_reply(response)

    async def close(self) -> None:
        await self._endpoint.close()


def parse_reply(response: Response) -> str | Reply:
    """The reply from a 2xx answer of the HTTP protocol: its text, with its media if any."""
    if response.status == 204 or not response.body.strip():
        return ""
    if response.is_json:
        data = response.json("http assistant")
        if isinstance(data, dict):
            media = _media(data.get("media"))
            for name in REPLY_FIELDS:
                if name in data:
                    value = data[name]
                    if value is None:
                        value = ""
                    if isinstance(value, str):
                        return Reply(value.strip(), media) if media else value.strip()
                    raise AssistantError(
                        f"http assistant: {name!r} must be a string, got {type(value).__name__}"
                    )
            if media:
                return Reply("", media)
        raise AssistantError(
            "http assistant: JSON response has none of " + ", ".join(map(repr, REPLY_FIELDS))
        )
    if response.content_type == "text/plain":
        return response.text().strip()
    raise AssistantError(f"http assistant: unexpected content type {response.content_type!r}")


def _media(value: Any) -> tuple[OutboundMedia, ...]:
    """The answer's `media` list; one item WhatsApp could not send fails the answer (a
    backend's bug: better said in the log than half sent)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise AssistantError("http assistant: 'media' must be a list")
    out = []
    for index, item in enumerate(value):
        media = OutboundMedia.from_dict(item) if isinstance(item, dict) else None
        if media is None:
            raise AssistantError(
                f"http assistant: media[{index}] needs a type (image, document, audio, video) "
                "and an http(s) url"
            )
        out.append(media)
    return tuple(out)
