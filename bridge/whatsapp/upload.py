"""`upload_media`: the bridge fetches an outbound file itself and uploads it to Meta, for URLs
Meta cannot reach (a shop's internal catalogue, a server behind a firewall).

Meta's Cloud API "Media" reference: `POST /{version}/{phone_number_id}/media`, multipart form
with `messaging_product=whatsapp`, `type` (the file's MIME type) and `file`, answers
`{"id": "<media id>"}`; a message then names the file by `{"id": ...}` instead of `{"link":
...}`. Meta keeps an uploaded file for 30 days.

The fetch is checked before anything goes to Meta: the type's size limit (the profile's
`media` limits, Meta's own by default: image 5 MB, audio and video 16 MB, document 100 MB),
refused from the Content-Length or cut off while reading; a MIME type WhatsApp takes for that
kind of message (the server's Content-Type, or the URL's extension when the server says only
`application/octet-stream`); a total and a stall timeout. The file is held in memory between
fetch and upload (at most the limit), never written to disk.

Failures are the outbox's SendErrors (bridge/outbox.py retries and records them like any
send): a server that is down, slow or answers 5xx/429 is retried with backoff; a 4xx, a file
too large or of the wrong type will not get better and fails the part for good. Neither a
fetch nor an upload is a message to the user: none is ever `uncertain`, so an upload whose
answer was lost is simply done again (an orphan upload on Meta's side expires by itself).
The message that names the upload is sent like a link one, so the outbox's guarantee holds:
once Meta accepted the message, the part is never sent again.
"""

from __future__ import annotations

import mimetypes
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiohttp

from bridge.config import DEFAULT_MEDIA_MAX_BYTES
from bridge.whatsapp.sender import SendError

# What WhatsApp takes per message type (Cloud API "Supported media types").
SUPPORTED_MIME: dict[str, frozenset[str]] = {
    "image": frozenset({"image/jpeg", "image/png"}),
    "audio": frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}),
    "video": frozenset({"video/mp4", "video/3gpp"}),
    "document": frozenset(
        {
            "text/plain",
            "application/pdf",
            "application/msword",
            "application/vnd.ms-excel",
            "application/vnd.ms-powerpoint",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        }
    ),
}
FETCH_TIMEOUT = 60.0  # seconds for the whole file
STALL_TIMEOUT = 15.0  # seconds without a byte (connect, or between reads)
CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Fetched:
    data: bytes
    mime_type: str
    filename: str


def _limit_default(kind: str) -> int:
    return DEFAULT_MEDIA_MAX_BYTES.get(kind, DEFAULT_MEDIA_MAX_BYTES["document"])


class MediaFetcher:
    """Fetches outbound files from their URLs: its own HTTP session, without the Graph
    token (a file's server is nobody we authenticate to)."""

    def __init__(
        self,
        limit: Callable[[str], int] = _limit_default,
        timeout: float = FETCH_TIMEOUT,
        stall: float = STALL_TIMEOUT,
    ) -> None:
        self._limit = limit
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=stall, sock_read=stall)
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self, url: str, kind: str) -> Fetched:
        """The file at `url` for a `kind` message (image, audio, video, document)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        limit = self._limit(kind)
        shown = _shown(url)
        try:
            async with self._session.get(url) as resp:
                if resp.status >= 300:
                    transient = resp.status >= 500 or resp.status in (408, 429)
                    raise SendError(
                        f"media fetch: {shown} answered HTTP {resp.status}", retryable=transient
                    )
                mime = _mime_type(resp.headers.get("Content-Type"), url)
                if mime not in SUPPORTED_MIME.get(kind, frozenset()):
                    raise SendError(
                        f"media fetch: {shown} is {mime or 'of no type'}, which WhatsApp does "
                        f"not take for {kind} messages",
                        retryable=False,
                    )
                if resp.content_length is not None and resp.content_length > limit:
                    raise SendError(_too_large(shown, kind, limit), retryable=False)
                data = bytearray()
                async for chunk in resp.content.iter_chunked(CHUNK):
                    data += chunk
                    if len(data) > limit:
                        raise SendError(_too_large(shown, kind, limit), retryable=False)
        except SendError:
            raise
        except TimeoutError:
            raise SendError(f"media fetch: {shown} timed out", retryable=True) from None
        except (aiohttp.ClientError, ValueError) as exc:
            # Unreachable, reset, a bad redirect: the server's trouble, maybe passing.
            raise SendError(f"media fetch: {shown} failed: {exc}", retryable=True) from None
        if not data:
            raise SendError(f"media fetch: {shown} is empty", retryable=False)
        return Fetched(bytes(data), mime, _filename(url, mime))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _mime_type(header: str | None, url: str) -> str:
    """The server's Content-Type without parameters; the URL's extension's when the server
    gave none or only the generic `application/octet-stream`."""
    mime = (header or "").split(";", 1)[0].strip().lower()
    if mime in ("", "application/octet-stream", "binary/octet-stream"):
        guessed, _ = mimetypes.guess_type(urlsplit(url).path, strict=False)
        mime = guessed or mime
    return mime


def _filename(url: str, mime: str) -> str:
    """The name the upload carries: the URL's last path segment, else `file.<ext>`."""
    name = posixpath.basename(unquote(urlsplit(url).path)).strip()
    if name and name.isprintable() and len(name) <= 200:
        return name
    return "file" + (mimetypes.guess_extension(mime) or "")


def _shown(url: str) -> str:
    """A URL as errors and logs show it: without its query (signed URLs carry secrets) and
    without the credentials it may carry before its host (`user:password@`)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"[:200]


def _too_large(shown: str, kind: str, limit: int) -> str:
    return f"media fetch: {shown} is larger than the {kind} limit of {limit} bytes"
