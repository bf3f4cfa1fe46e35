"""A fake WhatsApp Cloud API (Graph API): `/{version}/{phone_number_id}/messages`, the number,
the app, and the app's webhook subscriptions to business accounts (WABAs).

Speaks Meta's documented shapes: `{"messaging_product", "contacts", "messages": [{"id"}]}` on
success and `{"error": {"message", "type", "code", "error_subcode", "error_data": {"details"},
"fbtrace_id"}}` on failure, with Meta's own wording for the codes the bridge handles. Records
every request (method, path, headers, JSON); failures can be scripted per request, globally or
per recipient; the bearer token is checked like Meta does (190 with HTTP 401 when wrong), and
a body the real API would reject (missing fields, text over 4096 chars) gets error 100.

Like Meta, it can report back: with `report_to(webhook_url, app_secret)`, every accepted
message is followed by a signed `sent` status webhook carrying the message's
`biz_opaque_callback_data`, retried until the bridge answers 200 (Meta retries for days).
Given several webhook URLs (replicas behind a load balancer), the posts, retries included,
go to them round-robin: a status lands on any replica, not on the one that sent.
And it can lose its answer after taking a message (`lose_answers`), as a dropped
connection does.

Besides text it takes media messages sent by link (`{"type": "image", "image": {"link",
"caption"}}`, the same for document, audio, video) and read receipts with the typing
indicator (`{"status": "read", "message_id", "typing_indicator"}`), which it keeps apart
(`read_receipts`: they are not messages, so `requests`, `received` and `sent` leave them out).

Template messages (`{"type": "template", "template": {"name", "language": {"code"},
"components": [{"type": "body", "parameters": [{"type": "text", "text"}]}]}}`) are checked
like Meta checks them: a malformed one (no name, no language code, a component or parameter
of the wrong shape, an empty text parameter) gets error 100 with HTTP 400; with `templates`
set (the approved ones: (name, language) -> number of body parameters), an unknown
template gets 132001 and a wrong number of parameters 132000.

Media, as Meta's "Media" reference documents them: `add_media` registers a file under a
media id; `GET /{version}/{media_id}` answers `{"messaging_product", "url", "mime_type",
"sha256" (hex), "file_size", "id"}` (or error 100 with HTTP 404 for an id it does not know),
and `GET url` with the bearer token answers the bytes until the URL expires (`url_ttl`,
`expire_urls`: then 404, as lookaside does). Lookups and downloads can fail on script, a
download can be held in the middle of its body (`hold_downloads`) or trickle (`trickle`).

Uploads (`upload_media`), as the "Media" reference documents them: `POST /{version}/
{phone_number_id}/media`, a multipart form with `messaging_product=whatsapp`, `type` (a MIME
type WhatsApp takes) and `file` (non-empty, within Meta's size for its kind), answers `{"id"}`
and keeps the file under that id (`uploads`); anything else is error 100 with HTTP 400. A
media message may then name the file by `{"id"}` instead of `{"link"}`: an id never uploaded,
or a file of another kind than the message (a PDF as an image), is error 100 too.

For `bridge doctor`: `GET /{phone_number_id}?fields=display_phone_number,verified_name,
quality_rating` answers the number's fields (any id, unless `numbers` lists the known ones:
then another id gets Meta's error 100, subcode 33, "does not exist"); `GET /app` names the
app the token belongs to; `GET /{waba_id}/subscribed_apps` lists the apps subscribed to a
WABA in `subscriptions` (unknown WABA: error 100/33) and `POST` subscribes the token's app,
answering `{"success": true}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from bridge import simulate

TOKEN = "test-access-token"
MAX_TEXT = 4096
APP_ID = "987654321098765"
NUMBER_FIELDS = {
    "display_phone_number": "+34 600 00 00 00",
    "verified_name": "Tienda de Prueba",
    "quality_rating": "GREEN",
}

# Meta's messages (and details, where it sends some) for the codes the bridge treats specially,
# from the Cloud API "Error codes" reference.
META_ERRORS: dict[int, tuple[str, str | None]] = {
    2: ("Service temporarily unavailable", None),
    100: ("(#100) Invalid parameter", None),
    190: ("Error validating access token: Session has expired.", None),
    130429: ("(#130429) Rate limit hit", "Cloud API message throughput has been reached."),
    131000: ("Something went wrong", "Message failed to send due to an unknown error."),
    131016: ("Service unavailable", "A service is temporarily unavailable."),
    131047: (
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number.",
    ),
    132000: (
        "Number of parameters does not match the expected number of params",
        "body: number of localizable_params does not match the expected number of params",
    ),
    132001: (
        "Template name does not exist in the translation",
        "template name does not exist in the translation",
    ),
    131056: (
        "(Business Account, Consumer Account) pair rate limit hit",
        "Too many messages sent from the sender phone number to the same recipient phone "
        "number in a short period of time.",
    ),
}

# Code 100 with subcode 33: an id that does not exist or that the token may not read.
NOT_FOUND = (
    "Unsupported get request. Object with ID '{id}' does not exist, cannot be loaded due to "
    "missing permissions, or does not support this operation. Please read the Graph API "
    "documentation at https://developers.facebook.com/docs/graph-api"
)

# What an upload may be (Cloud API "Supported media types"), by the message kind it serves,
# and Meta's size limits.
UPLOAD_TYPES: dict[str, frozenset[str]] = {
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
UPLOAD_MAX = {"image": 5 << 20, "audio": 16 << 20, "video": 16 << 20, "document": 100 << 20}

Outcome = tuple[int, int | None] | None  # (HTTP status, Graph code), or None for success


@dataclass(frozen=True)
class Received:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any


@dataclass
class FakeMedia:
    """A file the fake serves; `sha256`/`file_size` override what the lookup announces."""

    data: bytes
    mime_type: str
    sha256: str | None = None
    file_size: int | None = None


@dataclass
class FakeGraph:
    token: str = TOKEN
    received: list[Received] = field(default_factory=list)  # every request, in order
    requests: list[dict[str, Any]] = field(default_factory=list)  # every message POST body
    sent: list[dict[str, Any]] = field(default_factory=list)  # accepted message bodies
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each message POST
    # Outcomes of the next message POSTs, in order; per recipient ones are used first.
    failures: deque[Outcome] = field(default_factory=deque)
    failures_to: dict[str, deque[Outcome]] = field(default_factory=dict)
    fail_all: tuple[int, int | None] | None = None  # every POST fails this way while set
    delay: float = 0.0  # seconds to wait before answering (timeouts, in-flight sends)
    # Seconds to wait after taking a message (and reporting it) before answering: Meta's
    # status webhook arrives while the send is still in flight.
    answer_delay: float = 0.0
    lose_answers: int = 0  # the next N accepted messages: taken, then the connection dropped
    reported: list[str] = field(default_factory=list)  # wamids whose status webhook got a 200
    read_receipts: list[dict[str, Any]] = field(default_factory=list)  # bodies, in order
    receipts_fail: bool = False  # read receipts answer 500 (Meta's trouble) while set
    media: dict[str, FakeMedia] = field(default_factory=dict)  # media id -> file
    url_ttl: float = 300.0  # seconds a download URL works (Meta: about 5 minutes)
    lookup_failures: deque[int] = field(default_factory=deque)  # HTTP statuses, in order
    download_failures: deque[int] = field(default_factory=deque)
    lookups: list[str] = field(default_factory=list)  # media ids looked up
    downloads: list[str] = field(default_factory=list)  # media ids whose bytes were all sent
    # While set, a download sends the first half of its body, then waits until cleared.
    hold_downloads: threading.Event = field(default_factory=threading.Event)
    held: threading.Event = field(default_factory=threading.Event)  # a download is held now
    trickle: float = 0.0  # seconds between 64 KiB pieces of a download
    _urls: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> (id, expiry)
    # The numbers the token can read, with their fields; None: any id, with NUMBER_FIELDS.
    numbers: dict[str, dict[str, str]] | None = None
    app_id: str = APP_ID
    app_name: str = "Bridge test app"
    # WABA id -> ids of the apps subscribed to its webhooks.
    subscriptions: dict[str, list[str]] = field(default_factory=dict)
    uploads: dict[str, FakeMedia] = field(default_factory=dict)  # uploaded media id -> file
    upload_failures: deque[int] = field(default_factory=deque)  # HTTP statuses, in order
    # Approved templates, (name, language code) -> body parameters; None: any well-formed one.
    templates: dict[tuple[str, str], int] | None = None
    _report: tuple[tuple[str, ...], str] | None = None  # (webhook urls, app secret)
    _report_turn: itertools.count[int] = field(default_factory=itertools.count)
    _reporters: set[asyncio.Task[None]] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def report_to(self, webhook_url: str | Sequence[str], app_secret: str) -> None:
        """Send a status webhook for every message accepted from now on, as Meta does; to
        several URLs round-robin, as a load balancer spreads them. Called again (a replica
        restarted on another port), reports still under way use the new URLs."""
        urls = (webhook_url,) if isinstance(webhook_url, str) else tuple(webhook_url)
        if not urls:
            raise ValueError("report_to needs a webhook URL")
        self._report = (urls, app_secret)

    async def _report_sent(self, body: dict[str, Any], wamid: str) -> None:
        assert self._report is not None
        secret = self._report[1]
        status = simulate.status(
            wamid, "sent", body["to"], callback_data=body.get("biz_opaque_callback_data")
        )
        raw = simulate.encode(simulate.delivery(simulate.change_value(statuses=[status])))
        headers = simulate.signed_headers(raw, secret)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        async with aiohttp.ClientSession() as session:
            while loop.time() < deadline:
                urls = self._report[0]
                url = urls[next(self._report_turn) % len(urls)]
                try:
                    async with session.post(url, data=raw, headers=headers) as resp:
                        if resp.status == 200:
                            self.reported.append(wamid)
                            return
                except aiohttp.ClientError:
                    pass  # the bridge is down (restarting): Meta retries later
                await asyncio.sleep(0.1)

    def fail_next(
        self, status: int, code: int | None = None, times: int = 1, to: str | None = None
    ) -> None:
        """The next `times` sends (to `to` only, if given) fail with this status and code."""
        queue = self.failures if to is None else self.failures_to.setdefault(to, deque())
        queue.extend([(status, code)] * times)

    def succeed_next(self, times: int = 1, to: str | None = None) -> None:
        queue = self.failures if to is None else self.failures_to.setdefault(to, deque())
        queue.extend([None] * times)

    def bodies(self, to: str | None = None) -> list[str]:
        """Texts of the accepted text messages (to `to` only, if given), in order."""
        return [
            m["text"]["body"]
            for m in self.sent
            if m["type"] == "text" and (to is None or m["to"] == to)
        ]

    def media_sent(self, to: str | None = None) -> list[dict[str, Any]]:
        """The accepted media messages as `{"type", "link", "caption"?, "filename"?}`."""
        return [
            {"type": m["type"], **m[m["type"]]}
            for m in self.sent
            if m["type"] not in ("text", "template") and (to is None or m["to"] == to)
        ]

    def templates_sent(self, to: str | None = None) -> list[dict[str, Any]]:
        """The `template` objects of the accepted template messages, in order."""
        return [
            m["template"]
            for m in self.sent
            if m["type"] == "template" and (to is None or m["to"] == to)
        ]

    async def _receive(self, request: web.Request) -> Any:
        body = await request.json() if request.body_exists else None
        self.received.append(
            Received(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        return body

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    def _next_outcome(self, to: Any) -> Outcome:
        if self.fail_all is not None:
            return self.fail_all
        own = self.failures_to.get(to) if isinstance(to, str) else None
        if own:
            return own.popleft()
        return self.failures.popleft() if self.failures else None

    async def messages(self, request: web.Request) -> web.Response:
        if request.body_exists:
            peek = await request.json()
            if isinstance(peek, dict) and peek.get("status") == "read":
                return self._read_receipt(request, peek)
        self.arrivals.append(time.monotonic())
        body = await self._receive(request)
        self.requests.append(body)
        if not self._authorized(request):
            return self._error(401, 190)
        if isinstance(body, dict) and body.get("type") == "template":
            refused = self._template_refusal(body)
            if refused is not None:
                return self._error(400, *refused)
        elif not (_valid_text_message(body) or _valid_media_message(body)):
            return self._error(400, 100)
        elif (bad_id := self._unknown_upload(body)) is not None:
            return self._error(400, 100, bad_id)
        outcome = self._next_outcome(body["to"])
        if outcome is not None:
            return self._error(*outcome)
        self.sent.append(body)
        wamid = f"wamid.FAKE{next(self._ids):06d}"
        if self._report is not None:
            task = asyncio.get_running_loop().create_task(self._report_sent(body, wamid))
            self._reporters.add(task)
            task.add_done_callback(self._reporters.discard)
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        if self.lose_answers:
            # Taken and delivered, but the answer never reaches the sender.
            self.lose_answers -= 1
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                "messages": [{"id": wamid}],
            }
        )

    def _unknown_upload(self, body: dict[str, Any]) -> str | None:
        """Why a media message's `id` names no uploaded file of its kind; None if it is fine
        (or the message is not one by id)."""
        if body.get("type") not in UPLOAD_TYPES or "id" not in body[body["type"]]:
            return None
        media_id = body[body["type"]]["id"]
        upload = self.uploads.get(media_id) if isinstance(media_id, str) else None
        if upload is None:
            return f"Invalid media id: {media_id!r} was not uploaded"
        if upload.mime_type not in UPLOAD_TYPES[body["type"]]:
            return f"Media type {upload.mime_type} cannot be sent as {body['type']}"
        return None

    async def upload(self, request: web.Request) -> web.Response:
        """`POST /{version}/{phone_number_id}/media` (multipart), as Meta documents it."""
        if not self._authorized(request):
            return self._error(401, 190)
        try:
            form = await request.post()
        except ValueError:
            return self._error(400, 100, "The request body is not a multipart form")
        self.received.append(
            Received(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                {k: v for k, v in form.items() if isinstance(v, str)},
            )
        )
        if self.upload_failures:
            return self._error(self.upload_failures.popleft(), 131016)
        if form.get("messaging_product") != "whatsapp":
            return self._error(400, 100, "messaging_product is required")
        mime, file = form.get("type"), form.get("file")
        kind = next((k for k, types in UPLOAD_TYPES.items() if mime in types), None)
        if kind is None:
            return self._error(400, 100, f"Param type must be a supported MIME type, got {mime!r}")
        if not isinstance(file, web.FileField):
            return self._error(400, 100, "Param file is required (a file part)")
        data = file.file.read()
        if not data or len(data) > UPLOAD_MAX[kind]:
            return self._error(400, 100, "File is empty or larger than WhatsApp allows")
        media_id = str(10**15 + next(self._ids))
        assert isinstance(mime, str)
        self.uploads[media_id] = FakeMedia(data, mime)
        return web.json_response({"id": media_id})

    def _template_refusal(self, body: dict[str, Any]) -> tuple[int, str] | None:
        """(code, details) Meta would answer a template message with, or None to take it."""
        problem = _template_problem(body)
        if problem is not None:
            return 100, problem
        if self.templates is None:
            return None
        template = body["template"]
        wanted = self.templates.get((template["name"], template["language"]["code"]))
        if wanted is None:
            return 132001, f"template name ({template['name']}) does not exist in the translation"
        given = sum(len(c["parameters"]) for c in template.get("components", ()))
        if given != wanted:
            return 132000, f"body: number of params ({given}) does not match expected ({wanted})"
        return None

    def _read_receipt(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if not self._authorized(request):
            return self._error(401, 190)
        if self.fail_all is not None:
            return self._error(*self.fail_all)
        if self.receipts_fail:
            return self._error(500, 131000)
        if not isinstance(body.get("message_id"), str) or body.get("messaging_product") != (
            "whatsapp"
        ):
            return self._error(400, 100)
        self.read_receipts.append(body)
        return web.json_response({"success": True})

    async def phone_number(self, request: web.Request) -> web.Response:
        await self._receive(request)
        if not self._authorized(request):
            return self._error(401, 190)
        object_id = request.match_info["phone"]
        if object_id in self.media or object_id.startswith("media"):
            return self._lookup(request, object_id)
        phone = object_id
        known = NUMBER_FIELDS if self.numbers is None else self.numbers.get(phone)
        if known is None:
            return self._missing(phone)
        wanted = request.query.get("fields", "id").split(",")
        data = {"id": phone, **known}
        return web.json_response({k: data[k] for k in wanted if k in data} | {"id": phone})

    # -- media ------------------------------------------------------------------------------

    def add_media(
        self,
        media_id: str,
        data: bytes,
        mime_type: str = "image/jpeg",
        *,
        sha256: str | None = None,
        file_size: int | None = None,
    ) -> FakeMedia:
        self.media[media_id] = FakeMedia(data, mime_type, sha256, file_size)
        return self.media[media_id]

    def expire_urls(self) -> None:
        """Every download URL handed out so far stops working, as after Meta's 5 minutes."""
        self._urls = {t: (m, 0.0) for t, (m, _expiry) in self._urls.items()}

    def _lookup(self, request: web.Request, media_id: str) -> web.Response:
        self.lookups.append(media_id)
        if self.lookup_failures:
            return self._error(self.lookup_failures.popleft(), 131016)
        media = self.media.get(media_id)
        if media is None:
            # What Graph answers for an id it does not know.
            return web.json_response(
                {
                    "error": {
                        "message": f"Unsupported get request. Object with ID '{media_id}' "
                        "does not exist",
                        "type": "GraphMethodException",
                        "code": 100,
                        "error_subcode": 33,
                        "fbtrace_id": "AFakeTraceId",
                    }
                },
                status=404,
            )
        token = secrets.token_urlsafe(12)
        self._urls[token] = (media_id, time.monotonic() + self.url_ttl)
        url = (
            request.url.origin()
            .with_path("/whatsapp_business/attachments/")
            .with_query(mid=token, ext=str(int(time.time())))
        )
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "url": str(url),
                "mime_type": media.mime_type,
                "sha256": media.sha256 or hashlib.sha256(media.data).hexdigest(),
                "file_size": str(
                    media.file_size if media.file_size is not None else len(media.data)
                ),
                "id": media_id,
            }
        )

    async def _stream(self, request: web.Request, resp: web.StreamResponse, data: bytes) -> None:
        await resp.prepare(request)
        half = len(data) // 2
        sent = 0
        step = 64 * 1024
        while sent < len(data):
            if self.hold_downloads.is_set() and sent >= half:
                self.held.set()
                while self.hold_downloads.is_set():
                    await asyncio.sleep(0.02)
                self.held.clear()
            end = min(len(data), sent + step)
            if self.hold_downloads.is_set():
                end = min(end, max(half, sent + 1))
            await resp.write(data[sent:end])
            sent = end
            if self.trickle:
                await asyncio.sleep(self.trickle)
        await resp.write_eof()

    async def download(self, request: web.Request) -> web.StreamResponse:
        await self._receive(request)
        if not self._authorized(request):
            return web.Response(status=401, text="Unauthorized")
        found = self._urls.get(request.query.get("mid", ""))
        if found is None or found[1] < time.monotonic():
            return web.Response(status=404, text="URL signature expired")
        if self.download_failures:
            return web.Response(status=self.download_failures.popleft(), text="scripted failure")
        media_id = found[0]
        data = self.media[media_id].data
        resp = web.StreamResponse(headers={"Content-Type": self.media[media_id].mime_type})
        resp.content_length = len(data)
        try:
            await self._stream(request, resp, data)
        except ConnectionResetError:
            return resp  # the client went away (killed, timed out): nothing more to send
        self.downloads.append(media_id)
        return resp

    async def app_info(self, request: web.Request) -> web.Response:
        await self._receive(request)
        if not self._authorized(request):
            return self._error(401, 190)
        return web.json_response({"id": self.app_id, "name": self.app_name})

    async def subscribed_apps(self, request: web.Request) -> web.Response:
        await self._receive(request)
        if not self._authorized(request):
            return self._error(401, 190)
        waba = request.match_info["waba"]
        if waba not in self.subscriptions:
            return self._missing(waba)
        if request.method == "POST":
            if self.app_id not in self.subscriptions[waba]:
                self.subscriptions[waba].append(self.app_id)
            return web.json_response({"success": True})
        apps = [
            {
                "whatsapp_business_api_data": {
                    "id": app,
                    "name": self.app_name if app == self.app_id else f"app {app}",
                    "link": f"https://www.facebook.com/games/?app_id={app}",
                }
            }
            for app in self.subscriptions[waba]
        ]
        return web.json_response({"data": apps})

    @staticmethod
    def _missing(object_id: str) -> web.Response:
        """Meta's answer for an id the token cannot read: error 100, subcode 33."""
        message = NOT_FOUND.format(id=object_id)
        error = {
            "message": message,
            "type": "GraphMethodException",
            "code": 100,
            "error_subcode": 33,
            "fbtrace_id": "AFakeTraceId",
        }
        return web.json_response({"error": error}, status=400)

    @staticmethod
    def _error(status: int, code: int | None, detail: str | None = None) -> web.Response:
        if code is None:  # what a load balancer in front of the Graph API answers
            return web.Response(status=status, text="<html>Server Error</html>")
        message, details = META_ERRORS.get(code, ("scripted failure", None))
        details = detail or details
        error: dict[str, Any] = {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "fbtrace_id": "AFakeTraceId",
        }
        if code == 190:
            error["error_subcode"] = 463  # "session has expired"
        if details is not None:
            error["error_data"] = {"messaging_product": "whatsapp", "details": details}
        return web.json_response({"error": error}, status=status)

    async def _stop_reporting(self, app: web.Application) -> None:
        for task in list(self._reporters):
            task.cancel()
        await asyncio.gather(*self._reporters, return_exceptions=True)

    def app(self) -> web.Application:
        app = web.Application()
        app.on_cleanup.append(self._stop_reporting)
        app.router.add_post("/{version}/{phone}/messages", self.messages)
        app.router.add_post("/{version}/{phone}/media", self.upload)
        app.router.add_get("/{version}/app", self.app_info)
        app.router.add_route("*", "/{version}/{waba}/subscribed_apps", self.subscribed_apps)
        app.router.add_get("/whatsapp_business/attachments/", self.download)
        app.router.add_get("/{version}/{phone}", self.phone_number)
        return app


def _valid_text_message(body: Any) -> bool:
    """What the real endpoint requires of a text message (it answers 100 otherwise)."""
    if not isinstance(body, dict):
        return False
    text = body.get("text")
    return (
        body.get("messaging_product") == "whatsapp"
        and body.get("type") == "text"
        and isinstance(body.get("to"), str)
        and bool(body["to"])
        and isinstance(text, dict)
        and isinstance(text.get("body"), str)
        and 0 < len(text["body"]) <= MAX_TEXT
    )


def _valid_media_message(body: Any) -> bool:
    """A media message by link or by uploaded id (exactly one of them), as the real endpoint
    requires it (caption where allowed)."""
    if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
        return False
    kind = body.get("type")
    part = body.get(kind) if isinstance(kind, str) else None
    if not isinstance(part, dict) or ("link" in part) == ("id" in part):
        return False
    by_link = isinstance(part.get("link"), str) and part["link"].startswith(("https://", "http://"))
    by_id = isinstance(part.get("id"), str) and part["id"].isdigit()
    return (
        kind in ("image", "document", "audio", "video")
        and isinstance(body.get("to"), str)
        and (by_link or by_id)
        and not (kind == "audio" and "caption" in part)
    )


def _template_problem(body: dict[str, Any]) -> str | None:
    """What is wrong with a template message, as Meta's error details say it; None if
    nothing. Meta's shape: `template: {name, language: {code, policy?}, components?:
    [{type: header|body|button, parameters: [{type: text, text}, ...]}]}`."""
    if body.get("messaging_product") != "whatsapp":
        return "messaging_product is required"
    if not isinstance(body.get("to"), str) or not body["to"]:
        return "to is required"
    template = body.get("template")
    if not isinstance(template, dict):
        return "template is required"
    unknown = set(template) - {"name", "language", "components", "namespace"}
    if unknown:
        return f"Unexpected key(s) {sorted(unknown)} in template"
    name = template.get("name")
    if not isinstance(name, str) or not name:
        return "template.name is required"
    language = template.get("language")
    if not isinstance(language, dict) or not isinstance(language.get("code"), str):
        return "template.language.code is required"
    if set(language) - {"code", "policy"} or language.get("policy", "deterministic") != (
        "deterministic"
    ):
        return "template.language: only code and policy (deterministic)"
    components = template.get("components", [])
    if not isinstance(components, list):
        return "template.components must be an array"
    for component in components:
        if not isinstance(component, dict) or component.get("type") not in (
            "header",
            "body",
            "button",
        ):
            return "template.components[].type must be header, body or button"
        parameters = component.get("parameters")
        if not isinstance(parameters, list):
            return "template.components[].parameters must be an array"
        for parameter in parameters:
            if not isinstance(parameter, dict) or parameter.get("type") != "text":
                return "Parameter type is not valid (only text parameters here)"
            text = parameter.get("text")
            if not isinstance(text, str) or not text.strip():
                return "Parameter value is missing or empty"
            if "\n" in text or "\t" in text or "     " in text:
                return "Param text cannot have new-line/tab characters or more than 4 spaces"
    return None
