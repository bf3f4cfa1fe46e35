"""Fetch inbound media from the Cloud API, as Meta documents it ("Media" reference).

1. `GET {graph}/{version}/{media_id}?phone_number_id=...` with the bearer token answers
   `{"messaging_product", "url", "mime_type", "sha256", "file_size", "id"}`;
2. `GET url` with the same bearer token answers the bytes. The URL expires after about five
   minutes: a download that fails (or is retried later) looks the URL up again. Newer
   webhooks carry the `url` already, which saves the lookup on the first try.

The digest Meta gives is SHA-256, in base64 in webhooks and hex in some lookup answers:
both are decoded and the digests compared, never the strings. The bearer token goes only to
Meta's own hosts (or the configured Graph URL's, for a proxy or a test double): a URL
anywhere else is refused rather than handed our token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from bridge.errors import BridgeError

# Hosts Meta serves media from (lookaside.fbsbx.com today); the token may go there.
META_HOSTS = ("fbsbx.com", "facebook.com", "whatsapp.net", "fbcdn.net")
# No byte for this long: the download is stuck (Meta's CDN sends steadily).
READ_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
STREAM_CHUNK = 256 * 1024
# A body that keeps dripping (a byte now and then, never READ_TIMEOUT apart) would hold one
# of the profile's few download slots for ever: a download gets this long plus the time its
# type's limit takes at MIN_RATE, then fails as a timeout (retried, then recorded).
DOWNLOAD_GRACE = 60.0
MIN_RATE = 64 * 1024  # bytes per second


class MediaError(BridgeError):
    """A fetch failed. `retryable`: try again later (look the URL up again when `expired`);
    else record the failure for good. `reason` is a short code for logs and metrics."""

    def __init__(self, message: str, reason: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """Where a media's bytes are, and what they must be."""

    url: str
    mime_type: str | None = None
    sha256: bytes | None = None  # the digest itself (32 bytes)
    file_size: int | None = None


def parse_digest(text: Any) -> bytes | None:
    """A SHA-256 digest given as 64 hex digits or as base64 (standard or URL-safe, padded or
    not); None if it is neither."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    padded = text + "=" * (-len(text) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            digest = decode(padded.encode())
        except (binascii.Error, ValueError):
            continue
        if len(digest) == 32:
            return digest
    return None


def _size(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


class MediaClient:
    """Looks media up and streams them down, for one profile's token; one HTTP session."""

    def __init__(
        self,
        base_url: str,
        version: str,
        access_token: str,
        phone_number_id: str | None = None,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self._base = URL(base_url.rstrip("/"))
        self._version = version
        self._token = access_token
        self._phone_number_id = phone_number_id
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise MediaError("media client is closed", "closed", retryable=True)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    def trusted(self, url: str) -> bool:
        """Whether the bearer token may be sent to `url`."""
        try:
            parsed = URL(url)
        except (ValueError, TypeError):
            return False
        host = (parsed.host or "").lower()
        if parsed.scheme == "https" and any(
            host == h or host.endswith("." + h) for h in META_HOSTS
        ):
            return True
        if not parsed.is_absolute():
            return False
        return parsed.origin() == self._base.origin()

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    async def lookup(self, media_id: str) -> MediaInfo:
        """The media's current URL and what Meta says about it."""
        url = self._base / self._version / media_id
        if self._phone_number_id:
            url = url.with_query(phone_number_id=self._phone_number_id)
        try:
            async with self._client().get(url, headers=self._auth) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = None
                status = resp.status
        except TimeoutError:
            raise MediaError("media lookup timed out", "timeout", retryable=True) from None
        except aiohttp.ClientError as exc:
            raise MediaError(
                self._scrub(f"media lookup failed: {exc}"), "unreachable", retryable=True
            ) from None
        if status >= 300 or not isinstance(data, dict):
            raise _lookup_error(status, data)
        url_text = data.get("url")
        if not isinstance(url_text, str) or not url_text:
            raise MediaError("media lookup answered without a url", "bad_answer", retryable=True)
        mime = data.get("mime_type")
        return MediaInfo(
            url=url_text,
            mime_type=mime if isinstance(mime, str) and mime else None,
            sha256=parse_digest(data.get("sha256")),
            file_size=_size(data.get("file_size")),
        )

    async def download(self, url: str, sink: Callable[[bytes], Awaitable[None]], limit: int) -> int:
        """Stream the bytes at `url` into `sink`; returns how many. MediaError when the URL
        is refused (expired: retryable), larger than `limit` (permanent), or the transfer
        fails (retryable)."""
        if not self.trusted(url):
            raise MediaError("media URL is not on a Meta host; not sending the token", "bad_url")
        size = 0
        deadline = DOWNLOAD_GRACE + limit / MIN_RATE
        try:
            async with (
                asyncio.timeout(deadline),
                self._client().get(url, headers=self._auth) as resp,
            ):
                if resp.status in (401, 403, 404, 410):
                    raise MediaError(
                        f"media URL refused (HTTP {resp.status}): expired?",
                        "expired_url",
                        retryable=True,
                    )
                if resp.status != 200:
                    raise MediaError(
                        f"media download HTTP {resp.status}",
                        f"http_{resp.status}",
                        retryable=resp.status >= 500 or resp.status == 429,
                    )
                if resp.content_length is not None and resp.content_length > limit:
                    raise MediaError(
                        f"media is {resp.content_length} bytes, over the limit of {limit}",
                        "too_large",
                    )
                async for data in resp.content.iter_chunked(STREAM_CHUNK):
                    size += len(data)
                    if size > limit:
                        raise MediaError(f"media is over the limit of {limit} bytes", "too_large")
                    await sink(data)
        except TimeoutError:
            raise MediaError(
                "media download stalled or too slow", "timeout", retryable=True
            ) from None
        except aiohttp.ClientError as exc:
            raise MediaError(
                self._scrub(f"media download failed: {exc}"), "unreachable", retryable=True
            ) from None
        return size

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "[token]")

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
            await asyncio.sleep(0)


def _lookup_error(status: int, data: Any) -> MediaError:
    """Graph's answer to a lookup that did not give a URL, as what to do about it."""
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = str(error.get("message") or "error")[:200] if isinstance(error, dict) else ""
    text = f"media lookup HTTP {status}" + (f": {code}: {message}" if error else "")
    if status == 401 or code == 190:
        # The token: every fetch fails until the operator replaces it; keep the work queued.
        return MediaError(text, "token", retryable=True)
    if status == 404 or code == 100:
        return MediaError(text, "not_found")
    if status >= 500 or status == 429 or code in (2, 4, 80007, 130429, 131000, 131016):
        return MediaError(text, "unavailable", retryable=True)
    return MediaError(text, f"http_{status}")
