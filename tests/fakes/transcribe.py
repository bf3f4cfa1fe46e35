"""A fake OpenAI-compatible `POST /v1/audio/transcriptions` server.

It parses the multipart body as OpenAI's endpoint does (`file`, `model`, optional
`language`, `response_format`), refuses a request without a file or for another model
(400, OpenAI's error shape), refuses a file that is not audio (400 "Invalid file format",
as OpenAI answers a JPEG named .ogg), and answers `{"text": ...}`: the transcript registered
for the file's SHA-256, else `text`. Failures and a slow answer can be scripted.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

# How audio containers start: Ogg, MP3 (ID3 tag or frame sync), RIFF/WAVE, FLAC, MP4, AMR.
AUDIO_MAGIC = (b"OggS", b"ID3", b"\xff\xfb", b"RIFF", b"fLaC", b"#!AMR")


@dataclass
class TranscriptionRequest:
    model: str | None
    language: str | None
    response_format: str | None
    filename: str | None
    content_type: str | None
    sha256: str
    size: int
    authorization: str | None


@dataclass
class FakeTranscriber:
    model: str = "whisper-1"
    text: str = "quiero fotos de salado"
    transcripts: dict[str, str] = field(default_factory=dict)  # sha256 hex -> text
    requests: list[TranscriptionRequest] = field(default_factory=list)
    failures: deque[int] = field(default_factory=deque)  # HTTP statuses of the next answers
    delay: float = 0.0

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response(
            {"error": {"message": message, "type": "invalid_request_error", "code": None}},
            status=status,
        )

    async def transcriptions(self, request: web.Request) -> web.Response:
        fields: dict[str, Any] = {}
        data = b""
        filename = content_type = None
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue  # a nested multipart: not part of this protocol
            if part.name == "file":
                filename = part.filename
                content_type = part.headers.get("Content-Type")
                data = await part.read()
            elif part.name:
                fields[part.name] = await part.text()
        digest = hashlib.sha256(data).hexdigest()
        self.requests.append(
            TranscriptionRequest(
                fields.get("model"),
                fields.get("language"),
                fields.get("response_format"),
                filename,
                content_type,
                digest,
                len(data),
                request.headers.get("Authorization"),
            )
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failures:
            return self._error(self.failures.popleft(), "scripted failure")
        if not data or not filename:
            return self._error(400, "'file' is a required property")
        if fields.get("model") != self.model:
            return self._error(400, f"model '{fields.get('model')}' not found")
        if not data.startswith(AUDIO_MAGIC):
            return self._error(
                400,
                "Invalid file format. Supported formats: ['flac', 'm4a', 'mp3', 'mp4', 'mpeg', "
                "'mpga', 'oga', 'ogg', 'wav', 'webm']",
            )
        return web.json_response({"text": self.transcripts.get(digest, self.text)})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/audio/transcriptions", self.transcriptions)
        return app
