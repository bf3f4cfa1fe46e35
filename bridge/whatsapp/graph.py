"""The WhatsApp Cloud API (Graph API) client: send text replies, check the number is reachable.

`POST {graph}/{version}/{phone_number_id}/messages` with a bearer token; Meta answers
`{"messaging_product", "contacts": [...], "messages": [{"id": "wamid..."}]}` or
`{"error": {"message", "type", "code", "error_subcode", "error_data": {"details"},
"fbtrace_id"}}`. Error codes, from Meta's Cloud API "Error codes" reference:
- 130429 throughput limit reached, 131056 (business, consumer) pair rate limit,
  80007 WABA rate limit, 4 / 17 / 32 / 613 app, user, page and call-rate limits: retry later.
- 2 API service temporarily down or overloaded, 131000 something went wrong, 131016 service
  unavailable: temporary on Meta's side, retry later. (Code 1, "API unknown", may also mean a
  malformed request, so it is retried only when the HTTP status is 5xx.)
- 190 access token expired or invalid (also any HTTP 401): retrying with the same token will
  not help until the operator replaces it, but the reply must not be lost: keep it queued.
- 131047 re-engagement message: more than 24 h since the user last wrote, free-form text is
  refused until they write again; retrying cannot help, record the failure.
- Any other 4xx (e.g. 100 invalid parameter, 131026 undeliverable) is permanent.

Partial failure of a split reply: parts go out one POST at a time, in order. When part k fails
after parts 0..k-1 went out, `PartialSendError.sent_ids` holds their wamids and the caller
retries with `skip_parts=len(sent_ids)`: the client is stateless about progress, the caller
(the outbox, which owns the durable queue) owns it and can persist it.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from bridge.config import ProfileConfig
from bridge.http.client import ConnectionLost, KeepAliveClient, Unreachable
from bridge.templates import Template
from bridge.whatsapp.pacing import PairPacer
from bridge.whatsapp.sender import (
    OUTBOUND_MEDIA_TYPES,
    OutboundMedia,
    Sender,
    SendError,
    part_tag,
    split_text,
)
from bridge.whatsapp.template import template_to_graph
from bridge.whatsapp.upload import Fetched, MediaFetcher

RETRYABLE_CODES = frozenset({2, 4, 17, 32, 613, 80007, 130429, 131000, 131016, 131056})
AUTH_CODES = frozenset({190})
WINDOW_CLOSED = 131047
PAIR_RATE_LIMIT = 131056
# Long enough for Meta's slowest normal answers, short enough that a stuck connection is retried.
DEFAULT_TIMEOUT = 15.0


class PartialSendError(SendError):
    """Some parts of a split reply were sent before a part failed.

    `sent_ids` are the wamids of the parts that went out in this call, in order; a retry passes
    `skip_parts=<earlier skip> + len(sent_ids)` so the user never receives a part twice.
    """

    def __init__(self, cause: SendError, sent_ids: list[str]) -> None:
        super().__init__(
            str(cause), cause.code, cause.retryable, cause.auth, uncertain=cause.uncertain
        )
        self.sent_ids = sent_ids


_JSON = {"Content-Type": "application/json"}


class GraphClient(Sender):
    """Sends through one phone number of the Cloud API.

    Messages, read receipts and checks (small JSON requests, one per reply part) go through
    our own keep-alive client (bridge/http/client.py), a fraction of aiohttp's CPU per request;
    media uploads (multipart, rare) through an aiohttp session made on first use.
    """

    confirms_by_status = True  # Meta echoes biz_opaque_callback_data in status webhooks

    def __init__(
        self,
        base_url: str,
        version: str,
        phone_number_id: str,
        access_token: str,
        timeout: float = DEFAULT_TIMEOUT,
        pacer: PairPacer | None = None,
        *,
        upload_media: MediaFetcher | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._url = f"{base_url.rstrip('/')}/{version}/{phone_number_id}"
        self._path = urlsplit(self._url).path
        self._token = access_token
        self.timeout = timeout
        self._pacer = pacer or PairPacer()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http = KeepAliveClient(
            self._url,
            timeout=timeout,
            headers={"Authorization": f"Bearer {access_token}", "User-Agent": "whatsapp-bridge"},
            ssl_context=ssl_context,
        )
        self._ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # `upload_media`: files are fetched by the bridge and uploaded, then sent by id
        # (bridge/whatsapp/upload.py); None: sent by link, Meta fetches them.
        self._fetcher = upload_media

    @classmethod
    def from_profile(cls, profile: ProfileConfig, timeout: float = DEFAULT_TIMEOUT) -> GraphClient:
        if not profile.access_token or not profile.phone_number_id:
            raise ValueError("GraphClient needs an access token and a phone_number_id")
        return cls(
            profile.graph_url,
            profile.graph_version,
            profile.phone_number_id,
            profile.access_token,
            timeout,
            upload_media=MediaFetcher(profile.media.limit) if profile.upload_media else None,
        )

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop, which the session binds to.
        if self._closed:
            # A send racing shutdown: keep the reply queued rather than open a session that
            # nobody would close.
            raise SendError("Graph client is closed", retryable=True)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"Authorization": f"Bearer {self._token}"},
                connector=aiohttp.TCPConnector(ssl=self._ssl_context or True),
            )
        return self._session

    async def send_text(
        self, to: str, text: str, skip_parts: int = 0, tag: str | None = None
    ) -> list[str]:
        """Send the parts of `text` from `skip_parts` on, in order; the wamid of each one sent.

        Raises SendError when the first of them fails, PartialSendError when a later one does.
        """
        sent: list[str] = []
        for index, part in enumerate(split_text(text)[skip_parts:], skip_parts):
            body: dict[str, Any] = {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": to,
                "type": "text",
                # No link previews: a reply quoting a URL should not fetch it on the user's phone.
                "text": {"body": part, "preview_url": False},
            }
            if tag is not None:
                body["biz_opaque_callback_data"] = part_tag(tag, index)
            await self._pacer.wait(to)
            try:
                sent.append(await self._post_message(body))
            except SendError as exc:
                if exc.code == PAIR_RATE_LIMIT:
                    self._pacer.exhaust(to)
                if sent:
                    raise PartialSendError(exc, sent) from None
                raise
        return sent

    async def send_media(
        self, to: str, media: OutboundMedia, index: int, tag: str | None = None
    ) -> list[str]:
        """One media message by link: `{"type": "image", "image": {"link", "caption"}}`
        (caption for image, video and document; filename for documents); with
        `upload_media`, fetched and uploaded first, then sent as `{"id": media_id, ...}`."""
        if self._fetcher is None:
            part: dict[str, str] = {"link": media.url}
        else:
            part = {"id": await self._upload(await self._fetcher.fetch(media.url, media.type))}
        if media.caption and OUTBOUND_MEDIA_TYPES.get(media.type):
            part["caption"] = media.caption[:1024]  # WhatsApp's caption limit
        if media.filename and media.type == "document":
            part["filename"] = media.filename
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": media.type,
            media.type: part,
        }
        return await self._send_one(to, body, index, tag)

    async def _send_one(
        self, to: str, body: dict[str, Any], index: int, tag: str | None
    ) -> list[str]:
        """One message that is a whole part of a reply (a file, a template), paced like text."""
        if tag is not None:
            body["biz_opaque_callback_data"] = part_tag(tag, index)
        await self._pacer.wait(to)  # a message to the user like any other
        try:
            return [await self._post_message(body)]
        except SendError as exc:
            if exc.code == PAIR_RATE_LIMIT:
                self._pacer.exhaust(to)
            raise

    async def send_template(
        self, to: str, template: Template, index: int = 0, tag: str | None = None
    ) -> list[str]:
        """One template message (bridge/whatsapp/template.py): allowed outside the 24-hour
        window, where free-form messages get 131047."""
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "template",
            "template": template_to_graph(template),
        }
        return await self._send_one(to, body, index, tag)

    async def _upload(self, fetched: Fetched) -> str:
        """`POST /{phone_number_id}/media` (multipart: messaging_product, type, file); the
        media id. Its failures are never uncertain: nothing reached the user."""
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", fetched.mime_type)
        form.add_field(
            "file", fetched.data, filename=fetched.filename, content_type=fetched.mime_type
        )
        # A large file needs longer than a message; at least 1 s per 256 KiB.
        timeout = aiohttp.ClientTimeout(total=max(self.timeout, len(fetched.data) / 262_144))
        try:
            data = await self._upload_form(form, timeout)
        except SendError as exc:
            raise SendError(
                f"media upload: {exc}", exc.code, exc.retryable, exc.auth, uncertain=False
            ) from None
        media_id = data.get("id")
        if not isinstance(media_id, str | int) or isinstance(media_id, bool) or not media_id:
            raise SendError("media upload: Graph API answered without a media id", retryable=True)
        return str(media_id)

    async def mark_read(self, message_id: str) -> None:
        """`{"status": "read", "message_id", "typing_indicator": {"type": "text"}}`: the
        user sees blue ticks and "typing..." until the reply arrives (or 25 s pass)."""
        await self._request(
            "POST",
            f"{self._path}/messages",
            {
                "messaging_product": "whatsapp",
                "status": "read",
                "message_id": message_id,
                "typing_indicator": {"type": "text"},
            },
        )

    async def _post_message(self, body: dict[str, Any]) -> str:
        data = await self._request("POST", f"{self._path}/messages", body)
        try:
            return str(data["messages"][0]["id"])
        except (KeyError, IndexError, TypeError):
            # Meta took the request but named no message: retrying could deliver it twice.
            raise SendError("Graph API answered without a message id", retryable=False) from None

    async def check(self) -> None:
        """A cheap authenticated read of the phone number (no message sent): the token is valid
        and the number reachable. Raises SendError like a send would."""
        await self._request("GET", f"{self._path}?fields=id", None)

    async def _request(self, method: str, target: str, body: dict[str, Any] | None) -> Any:
        """A JSON request (`target`: path and query) through the keep-alive client; Meta's
        answer as a dict, or the SendError it maps to. orjson both ways."""
        if self._closed:
            # A send racing shutdown: keep the reply queued.
            raise SendError("Graph client is closed", retryable=True)
        try:
            if body is None:
                status, raw = await self._http.request(method, target)
            else:
                status, raw = await self._http.request(method, target, orjson.dumps(body), _JSON)
        except TimeoutError:
            raise _timed_out() from None
        except Unreachable as exc:
            raise self._unreachable(exc) from None
        except ConnectionLost as exc:
            raise self._lost(exc) from None
        return self._answer(status, raw)

    def _answer(self, status: int, raw: bytes) -> Any:
        try:
            data = orjson.loads(raw)
        except ValueError:
            data = None  # an HTML error page from a proxy: judged by status alone
        if status < 300 and isinstance(data, dict):
            return data
        raise self._scrubbed(_error(status, data))

    async def _upload_form(self, form: aiohttp.FormData, timeout: aiohttp.ClientTimeout) -> Any:
        """A multipart POST to `/media` through aiohttp, which encodes the form."""
        try:
            async with self._client().post(
                f"{self._url}/media", data=form, timeout=timeout
            ) as resp:
                return self._answer(resp.status, await resp.read())  # scrubbed there
        except TimeoutError:
            raise _timed_out() from None
        except aiohttp.ClientConnectorError as exc:
            raise self._unreachable(exc) from None
        except aiohttp.ClientError as exc:
            raise self._lost(exc) from None

    def _unreachable(self, exc: Exception) -> SendError:
        """No connection was made, so nothing was sent."""
        return self._scrubbed(SendError(f"Graph API unreachable: {exc}", retryable=True))

    def _lost(self, exc: Exception) -> SendError:
        """Connected and written, then lost: the request may have been taken."""
        return self._scrubbed(
            SendError(f"Graph API connection lost: {exc}", retryable=True, uncertain=True)
        )

    def _scrubbed(self, exc: SendError) -> SendError:
        """Error text ends up in logs and in the stored message: never let the token in."""
        if self._token in str(exc):
            return SendError(
                str(exc).replace(self._token, "[token]"),
                exc.code,
                exc.retryable,
                exc.auth,
                uncertain=exc.uncertain,
            )
        return exc

    async def close(self) -> None:
        self._closed = True
        await self._http.close()
        if self._fetcher is not None:
            await self._fetcher.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
            # Let the connector's transports close before the loop goes (aiohttp's advice).
            await asyncio.sleep(0)


def _timed_out() -> SendError:
    """The request may have reached Meta: the outbox waits for a status webhook about it
    before it sends again (at-least-once out, with that window made small)."""
    return SendError("Graph API timed out", retryable=True, uncertain=True)


def _error(status: int, data: Any) -> SendError:
    """Map an HTTP status and Meta's error object to what the outbox should do about it."""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        text = f"Graph API HTTP {status}"
        if status == 401:
            return SendError(text, retryable=True, auth=True)
        return SendError(text, retryable=status >= 500 or status == 429)
    code = error.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    message = str(error.get("message") or "error")[:300]
    error_data = error.get("error_data")
    details = error_data.get("details") if isinstance(error_data, dict) else None
    text = f"{code if code is not None else f'HTTP {status}'}: {message}"
    if details:
        text += f" ({str(details)[:300]})"
    if code in AUTH_CODES or status == 401:
        return SendError(text, code, retryable=True, auth=True)
    retryable = status >= 500 or status == 429 or code in RETRYABLE_CODES
    return SendError(text, code, retryable=retryable)
