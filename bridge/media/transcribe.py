"""Speech to text through any OpenAI-compatible `POST /v1/audio/transcriptions`.

OpenAI Whisper, faster-whisper-server (speaches), LocalAI, vLLM and Groq speak it: a
multipart body with `file` (the audio, its name's extension telling the format), `model`,
optional `language` (ISO 639-1, e.g. `es`), `response_format=json`; the answer is
`{"text": "..."}`. Reference: https://platform.openai.com/docs/api-reference/audio
"""

from __future__ import annotations

import time

import aiohttp
import orjson
from yarl import URL

from bridge.assistants.openai import openai_endpoint
from bridge.bearer import BearerClient
from bridge.config import TranscribeConfig
from bridge.errors import BridgeError, ConfigError

# A transcript longer than this is cut: it becomes part of a history entry.
MAX_TRANSCRIPT_CHARS = 8000
MAX_RESPONSE_BYTES = 1024 * 1024
# The file name's extension is how OpenAI's endpoint tells the format.
EXTENSIONS = {
    "audio/ogg": "ogg",
    "audio/opus": "ogg",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/mp4": "m4a",
    "audio/m4a": "m4a",
    "audio/x-m4a": "m4a",
    "audio/aac": "aac",
    "audio/amr": "amr",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/webm": "webm",
    "audio/flac": "flac",
}


class TranscriptionError(BridgeError):
    """The transcription failed; `retryable`: a timeout or the server's temporary trouble."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def transcriptions_url(raw: str) -> URL:
    """The endpoint from a base URL with or without `/v1`, or the full endpoint."""
    url = URL(raw.strip())
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"transcribe URL must be http:// or https:// with a host, got {raw!r}")
    return openai_endpoint(url, "audio/transcriptions")


def file_name(mime_type: str | None) -> str:
    base = (mime_type or "").split(";")[0].strip().lower()
    return f"audio.{EXTENSIONS.get(base, 'ogg')}"


class Transcriber:
    """One transcription endpoint; one HTTP session, made on first use."""

    def __init__(self, config: TranscribeConfig) -> None:
        if not config.url:
            raise ConfigError("transcription needs a URL (BRIDGE_TRANSCRIBE_URL)")
        self.url = transcriptions_url(config.url)
        self.model = config.model
        self._language = config.language
        self._timeout = config.timeout
        self._client = BearerClient(
            config.api_key,
            config.timeout,
            lambda: TranscriptionError("transcriber is closed", retryable=True),
        )

    async def transcribe(self, audio: bytes, mime_type: str | None) -> tuple[str, float]:
        """The words of `audio`, and the seconds the server took."""
        form = aiohttp.FormData()
        form.add_field(
            "file",
            audio,
            filename=file_name(mime_type),
            content_type=(mime_type or "application/octet-stream"),
        )
        form.add_field("model", self.model)
        if self._language:
            form.add_field("language", self._language)
        form.add_field("response_format", "json")
        headers = self._client.headers(Accept="application/json")
        started = time.monotonic()
        try:
            async with self._client.session().post(self.url, data=form, headers=headers) as resp:
                body = await resp.content.read(MAX_RESPONSE_BYTES + 1)
                status, content_type = resp.status, resp.content_type
        except TimeoutError:
            raise TranscriptionError(
                f"transcription timed out after {self._timeout:g}s", retryable=True
            ) from None
        except aiohttp.ClientError as exc:
            raise TranscriptionError(
                self._client.redact(f"transcription request failed: {exc}"), retryable=True
            ) from None
        elapsed = time.monotonic() - started
        if status >= 300:
            excerpt = self._client.redact(" ".join(body[:200].decode(errors="replace").split()))
            raise TranscriptionError(
                f"transcription HTTP {status}: {excerpt}",
                retryable=status >= 500 or status == 429,
            )
        if len(body) > MAX_RESPONSE_BYTES:
            raise TranscriptionError("transcription answer too large")
        return _text(body, content_type)[:MAX_TRANSCRIPT_CHARS], elapsed

    async def close(self) -> None:
        await self._client.close()


def _text(body: bytes, content_type: str) -> str:
    """`{"text": ...}` (response_format=json); a plain-text answer is taken as it is."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        if content_type.startswith("text/"):
            return " ".join(body.decode(errors="replace").split())
        raise TranscriptionError("transcription answer is not JSON") from None
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str):
        raise TranscriptionError('transcription answer has no "text"')
    return " ".join(text.split())
